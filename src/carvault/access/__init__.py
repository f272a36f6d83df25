"""CarVault access package."""
