"""CarVault vehicle package."""
