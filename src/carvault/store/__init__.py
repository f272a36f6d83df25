"""CarVault store package."""
