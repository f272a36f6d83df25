"""Tests of the region transparency log (carvault.ledger)."""
