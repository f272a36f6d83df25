"""CarVault ledger package."""
