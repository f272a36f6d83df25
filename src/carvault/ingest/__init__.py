"""CarVault ingest package."""
