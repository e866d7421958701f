"""Row counts and a short description of what the warehouse holds."""

from __future__ import annotations

from pathlib import Path

from lookalike_cli.warehouse.connection import connection

SUMMARY_TABLES = (
    "raw.customers", "raw.order_lines", "raw.visits", "raw.engagements", "raw.opt_outs",
    "main.categories", "main.training_features", "main.similarity_pairs", "main.customer_features",
    "main.customer_embeddings",
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
    """The three dates of the point-in-time design (inclusive dates, as the dbt vars take them):
    feature_end_date (training features stop before it), label_end_date (the labels' last day) and
    as_of_date (serving features' last day), with the data's first and last order dates."""
    from datetime import timedelta

    with connection(Path(db_path), read_only=True) as con:
        try:
            row = con.execute(
                "select data_start_at, data_end_at, feature_end_at, label_end_at, as_of_at from main.int_time_windows"
            ).fetchone()
        except Exception:
            return None
    if not row:
        return None
    data_start, data_end, feature_end, label_end, as_of = row
    day = timedelta(days=1)
    return {
        "data": (data_start.date(), data_end.date()),
        # Exclusive timestamps in the table; the last day each window includes here.
        "training_features": (data_start.date(), (feature_end - day).date()),
        "labels": (feature_end.date(), (label_end - day).date()),
        "serving_features": (data_start.date(), (as_of - day).date()),
        "feature_end_date": feature_end.date(),
        "label_end_date": (label_end - day).date(),
        "as_of_date": (as_of - day).date(),
    }
