"""CarVault web package."""
