"""Fleet-wide jobs on existing engines (issue 12): DuckDB embedded, Apache Spark at scale, over the same files."""
