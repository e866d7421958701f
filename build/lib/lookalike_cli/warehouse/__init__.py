"""The warehouse layer: DuckDB connections, the bundled dbt project and its runner, generated and sample data, summaries.

Everything above it reads the tables dbt builds here; nothing here imports a layer above.
"""
