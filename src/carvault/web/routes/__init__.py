"""CarVault web routes package."""
