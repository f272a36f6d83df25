"""Benchmarks and evaluation, kept out of the product modules: ``carvault bench`` (``run``), the PostgreSQL
peer (``peer``), the log benchmark (``ledger``) and a throwaway PostgreSQL cluster for tests and the bench
(``pg_cluster``)."""
