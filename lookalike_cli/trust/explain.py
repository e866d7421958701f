"""Why is this customer in the audience? Nearest seed exemplars and distinguishing features.

For every member of an audience version:
- its nearest seeds (cosine on the same embeddings the audience was built from), the
  "customers like these" a marketer can look up;
- the raw features that most set the audience apart from the population (standardised mean
  difference, SMD: audience mean minus population mean, in population standard deviations,
  on the z-scored features of `raw_features`), ordered for this member by how strongly the
  member shows them (member z-score times the sign of the audience's difference).

Written to the serving file: `audience_member_explanations` (one row per audience x member)
and `audience_feature_differences` (one row per audience x top feature), replaced for the
audience version on every run, with the same atomic swap as every publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from lookalike_cli.audiences.publish import insert_rows, publish_tables
from lookalike_cli.audiences.raw_features import load_raw_features
from lookalike_cli.errors import LookalikeError
from lookalike_cli.index.search import exact_neighbours
from lookalike_cli.progress import Progress
from lookalike_cli.vectors import ids_and_vectors, normalise
from lookalike_cli.warehouse.connection import connection, registered, require_table, table_exists

AUDIENCE_FEATURES = 20

EXPLANATIONS_DDL = """
create table if not exists audience_member_explanations (
    audience_id bigint not null,
    audience_name varchar not null,
    audience_version integer not null,
    customer_id bigint not null,
    rank integer not null,
    nearest_seed_id bigint,
    nearest_seed_similarity double,
    nearest_seed_ids bigint[],
    nearest_seed_similarities double[],
    top_features varchar[],
    top_feature_z double[],
    explanation varchar
);
"""
DIFFERENCES_DDL = """
create table if not exists audience_feature_differences (
    audience_id bigint not null,
    feature_rank integer not null,
    feature varchar not null,
    audience_mean_z double not null,
    standardised_mean_difference double not null
);
"""


@dataclass
class Explanations:
    audience_id: int
    members: pa.Table        # rows of audience_member_explanations
    differences: pa.Table    # rows of audience_feature_differences


def read_audience(serving_path: Path, name: str, version: int | None) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(audiences row, member ids, member ranks, seed ids) of one version (default latest)."""
    from lookalike_cli.audiences.catalog import open_serving, resolve_version

    con = open_serving(serving_path)
    try:
        audience_id, version = resolve_version(con, name, version)
        cursor = con.execute("select * from audiences where audience_id = ?", [audience_id])
        audience = dict(zip([d[0] for d in cursor.description], cursor.fetchall()[0]))
        members = con.sql("select customer_id, rank from audience_members where audience_id = $id order by rank",
                          params={"id": audience_id}).to_arrow_table()
        seeds = con.sql("select customer_id from audience_seeds where audience_id = $id order by customer_id",
                        params={"id": audience_id}).to_arrow_table() if table_exists(con, "audience_seeds") else None
    finally:
        con.close()
    if seeds is None or seeds.num_rows == 0:
        raise LookalikeError(f"Audience {name!r} v{version} has no stored seeds (published before seeds were saved): "
                             "re-run `lookalike expand` for it, then explain it.")
    return (audience, members.column("customer_id").to_numpy(), members.column("rank").to_numpy(),
            seeds.column("customer_id").to_numpy())


def embeddings_of(con: duckdb.DuckDBPyConnection, ids: np.ndarray, model_version: str) -> tuple[np.ndarray, np.ndarray]:
    with registered(con, "wanted_ids", pa.table({"customer_id": pa.array(ids, pa.int64())})):
        table = con.sql("select customer_id, embedding, model_version from customer_embeddings "
                        "join wanted_ids using (customer_id) order by customer_id").to_arrow_table()
    versions = set(table.column("model_version").to_pylist())
    if versions - {model_version}:
        raise LookalikeError(f"customer_embeddings now holds model {sorted(versions)} but the audience was built with "
                             f"{model_version}: re-run `lookalike expand` so explanations match the audience.")
    found, vectors = ids_and_vectors(table)
    return found, normalise(vectors)


def explain_audience(db_path: Path, serving_path: Path, name: str, version: int | None = None,
                     exemplars: int = 3, features: int = 3, progress: Progress = print) -> Explanations:
    """Explanations for every member of audience `name` (nothing is written)."""
    audience, member_ids, ranks, seed_ids = read_audience(serving_path, name, version)
    with connection(db_path, read_only=True) as con:
        require_table(con, "customer_embeddings", "Build it with `lookalike score`.")
        seed_found, seed_vectors = embeddings_of(con, seed_ids, audience["model_version"])
        member_found, member_vectors = embeddings_of(con, member_ids, audience["model_version"])
        raw = load_raw_features(con)
    if len(seed_found) == 0:
        raise LookalikeError(f"None of the seeds of {name!r} are in customer_embeddings any more.")
    sims, rows = exact_neighbours(seed_vectors, member_vectors, min(exemplars, len(seed_found)))
    nearest = {cid: (seed_found[r], s) for cid, r, s in zip(member_found, rows, sims)}

    in_raw = np.isin(member_ids, raw.ids)
    z = raw.matrix[raw.rows(member_ids[in_raw])].astype(np.float64)
    smd = z.mean(axis=0) - raw.matrix.mean(axis=0, dtype=np.float64)
    top = np.argsort(-np.abs(smd))[:AUDIENCE_FEATURES]
    shown = z[:, top] * np.sign(smd[top])  # how strongly each member shows the audience's traits
    member_features = {}
    for cid, row, signed in zip(member_ids[in_raw], z, shown):
        best = top[np.argsort(-signed)[:features]]
        member_features[cid] = ([raw.names[f] for f in best], [round(float(row[f]), 3) for f in best])

    records = []
    for cid, rank in zip(member_ids, ranks):
        seeds_of, sims_of = nearest.get(cid, (np.empty(0, np.int64), np.empty(0)))
        names, values = member_features.get(cid, ([], []))
        text = "nearest seeds " + ", ".join(f"{s} ({v:.2f})" for s, v in zip(seeds_of, sims_of))
        text += "; stands out on " + ", ".join(f"{n} ({v:+.1f} sd)" for n, v in zip(names, values)) if names else ""
        records.append({
            "audience_id": audience["audience_id"], "audience_name": audience["name"], "audience_version": audience["version"],
            "customer_id": int(cid), "rank": int(rank),
            "nearest_seed_id": int(seeds_of[0]) if len(seeds_of) else None,
            "nearest_seed_similarity": float(sims_of[0]) if len(sims_of) else None,
            "nearest_seed_ids": [int(s) for s in seeds_of], "nearest_seed_similarities": [round(float(v), 4) for v in sims_of],
            "top_features": names, "top_feature_z": values, "explanation": text,
        })
    differences = pa.Table.from_pylist([
        {"audience_id": audience["audience_id"], "feature_rank": i + 1, "feature": raw.names[f],
         "audience_mean_z": float(z[:, f].mean()), "standardised_mean_difference": float(smd[f])}
        for i, f in enumerate(top)
    ])
    progress(f"Explained {len(records):,} members of {name!r} v{audience['version']}: nearest of {len(seed_found):,} seeds; "
             f"top differences: " + ", ".join(f"{raw.names[f]} {smd[f]:+.2f}" for f in top[:3]))
    return Explanations(audience["audience_id"], pa.Table.from_pylist(records), differences)


def publish_explanations(serving_path: Path, explanations: Explanations) -> None:
    """Replace this audience version's explanation rows in the serving file (atomic swap)."""
    def write(con: duckdb.DuckDBPyConnection) -> None:
        for table, ddl, rows in (("audience_member_explanations", EXPLANATIONS_DDL, explanations.members),
                                 ("audience_feature_differences", DIFFERENCES_DDL, explanations.differences)):
            con.execute(ddl)
            con.execute(f"delete from {table} where audience_id = ?", [explanations.audience_id])
            insert_rows(con, table, rows, ddl)

    publish_tables(serving_path, write)
