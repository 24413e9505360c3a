"""PostgreSQL: tables, engine and the queries the API and the worker run."""
