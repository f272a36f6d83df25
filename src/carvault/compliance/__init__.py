"""CarVault compliance package."""
