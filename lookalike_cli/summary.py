"""Row counts and a short description of what the warehouse holds."""

from __future__ import annotations

from pathlib import Path

from lookalike_cli.warehouse import connection

SUMMARY_TABLES = (
    "raw.customers", "raw.order_lines", "raw.visits", "raw.engagements", "raw.opt_outs",
    "main.categories", "main.customer_features", "main.similarity_pairs", "main.customer_embeddings",
)


def warehouse_summary(db_path: Path) -> list[tuple[str, int]]:
    """(table, rows) for each known table present in the warehouse."""
    with connection(Path(db_path), read_only=True) as con:
        present = {
            f"{schema}.{name}"
            for schema, name in con.execute(
                "select table_schema, table_name from information_schema.tables"
            ).fetchall()
        }
        return [
            (table, con.execute(f"select count(*) from {table}").fetchone()[0])
            for table in SUMMARY_TABLES
            if table in present
        ]


def window_summary(db_path: Path) -> dict | None:
    with connection(Path(db_path), read_only=True) as con:
        try:
            row = con.execute(
                "select data_start_at, feature_end_at, label_end_at from main.int_time_windows"
            ).fetchone()
        except Exception:
            return None
    return {"feature_window": (row[0], row[1]), "label_window": (row[1], row[2])} if row else None
