"""How much do audiences overlap, and making them disjoint by priority.

The overlap matrix compares the latest version of each audience: for every ordered pair
(a, b), the members in both and the Jaccard index |a ∩ b| / |a ∪ b|. It is written to the
serving file as `audience_overlaps` (one row per pair, replaced on every run) for BI.

Disjoint by priority: given names in priority order, every audience loses the customers
already in a higher-priority one and is published as a new version (ranks renumbered,
seeds and seed diagnostics carried over, and a reach curve derived from its parent's:
`reach.derived_curve`), all in one atomic swap.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from lookalike_cli.errors import LookalikeError
from lookalike_cli.audiences.reach import derived_curve, write_reach
from lookalike_cli.audiences.publish import AUDIENCE_COLUMNS, insert_rows, publish_tables, write_members
from lookalike_cli.warehouse.connection import registered, table_exists

OVERLAPS_DDL = """
create table if not exists audience_overlaps (
    audience_a varchar not null,
    audience_b varchar not null,
    audience_id_a bigint not null,
    audience_id_b bigint not null,
    size_a bigint not null,
    size_b bigint not null,
    overlap bigint not null,
    jaccard double not null,
    computed_at timestamp not null
);
"""


def latest_ids(con: duckdb.DuckDBPyConnection, names: list[str] | None) -> dict[str, int]:
    """name -> audience_id of its latest version, in the order given (default: every audience by name)."""
    rows = dict(con.execute("select name, audience_id from latest_audiences order by name").fetchall())
    if not names:
        return rows
    missing = [n for n in names if n not in rows]
    if missing:
        raise LookalikeError(f"No audience named {', '.join(map(repr, missing))}. `lookalike audiences list` shows what exists.")
    if len(set(names)) != len(names):
        raise LookalikeError("Each audience name may be given once.")
    return {n: rows[n] for n in names}


def overlap_rows(con: duckdb.DuckDBPyConnection, ids: dict[str, int]) -> pa.Table:
    chosen = pa.table({"name": list(ids), "audience_id": pa.array(list(ids.values()), pa.int64())})
    with registered(con, "chosen", chosen):
        return con.sql("""
            with members as (
                select c.name, m.audience_id, m.customer_id from audience_members m join chosen c using (audience_id)
            ),
            sizes as (select name, audience_id, count(*) as size from members group by all),
            shared as (
                select a.name as audience_a, b.name as audience_b, count(*) as overlap
                from members a join members b using (customer_id) group by all
            )
            select sa.name as audience_a, sb.name as audience_b, sa.audience_id as audience_id_a, sb.audience_id as audience_id_b,
                   sa.size as size_a, sb.size as size_b, coalesce(s.overlap, 0) as overlap,
                   coalesce(s.overlap, 0) / (sa.size + sb.size - coalesce(s.overlap, 0)) as jaccard
            from sizes sa cross join sizes sb
            left join shared s on s.audience_a = sa.name and s.audience_b = sb.name
            order by sa.name, sb.name
        """).to_arrow_table()


def audience_overlaps(serving_path: Path, names: list[str] | None = None) -> pa.Table:
    """Overlap of the latest versions of `names` (default: all), published as `audience_overlaps`."""
    if not serving_path.exists():
        raise LookalikeError(f"No serving file at {serving_path}: run `lookalike expand` to publish an audience first.")

    def write(con: duckdb.DuckDBPyConnection) -> pa.Table:
        ids = latest_ids(con, names)
        if len(ids) < 2:
            raise LookalikeError("Overlap needs at least two audiences.")
        rows = overlap_rows(con, ids)
        stamped = rows.append_column("computed_at", pa.array([time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())] * rows.num_rows))
        con.execute(OVERLAPS_DDL)
        con.execute("delete from audience_overlaps")
        insert_rows(con, "audience_overlaps", stamped, OVERLAPS_DDL)
        return rows

    return publish_tables(serving_path, write)


def make_disjoint(serving_path: Path, names: list[str]) -> list[dict]:
    """New versions of names[1:] without members of any earlier name; returns [{name, version, size, removed}]."""
    if len(names) < 2:
        raise LookalikeError("Give at least two audiences, highest priority first.")
    if not serving_path.exists():
        raise LookalikeError(f"No serving file at {serving_path}: run `lookalike expand` to publish an audience first.")

    def write(con: duckdb.DuckDBPyConnection) -> list[dict]:
        ids = latest_ids(con, names)
        con.execute("create temp table taken as select customer_id from audience_members where audience_id = ?", [ids[names[0]]])
        has_seeds = table_exists(con, "audience_seeds") and table_exists(con, "seed_diagnostics")
        has_curves = table_exists(con, "audience_reach_curve")
        results = []
        for name in names[1:]:
            old_id = ids[name]
            new_id = con.execute("select max(audience_id) + 1 from audiences").fetchall()[0][0]
            con.execute("""
                create or replace temp table kept as
                select customer_id, row_number() over (order by rank) as rank, score, similarity, nearest_seed_id, ring, is_holdout
                from audience_members where audience_id = ? and customer_id not in (select customer_id from taken)
            """, [old_id])
            size, removed = con.execute(
                "select (select count(*) from kept), (select count(*) from audience_members where audience_id = ?) - (select count(*) from kept)",
                [old_id]).fetchall()[0]
            if size == 0:
                raise LookalikeError(f"Audience {name!r} would be empty: every member is in a higher-priority audience.")
            cursor = con.execute("select * from audiences where audience_id = ?", [old_id])
            row = dict(zip([d[0] for d in cursor.description], cursor.fetchall()[0]))
            parameters = json.loads(row["parameters"] or "{}")
            parameters.update(disjoint_from=names[: names.index(name)], derived_from_audience_id=old_id)
            stats = con.execute("select min(score), max(score), avg(score), median(score), min(similarity) from kept").fetchall()[0]
            row.update(audience_id=new_id, version=row["version"] + 1, created_at=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                       parameters=json.dumps(parameters, sort_keys=True), size=size,
                       score_min=stats[0], score_max=stats[1], score_mean=stats[2], score_median=stats[3], similarity_min=stats[4])
            con.execute(f"insert into audiences ({', '.join(AUDIENCE_COLUMNS)}) values ({', '.join('?' * len(AUDIENCE_COLUMNS))})",
                        [row[c] for c in AUDIENCE_COLUMNS])
            # A disjoint copy keeps each member's ring and holdout flag.
            write_members(con, new_id, "select * from kept")
            if has_curves:
                parent = con.sql("select * exclude (audience_id) from audience_reach_curve where audience_id = $id order by size",
                                 params={"id": old_id}).to_arrow_table()
                if parent.num_rows:
                    kept_scores = con.sql("select score from kept order by rank").to_arrow_table().column(0).to_numpy()
                    write_reach(con, new_id, derived_curve(parent, kept_scores, row["population_size"]))
            if has_seeds:
                for table in ("audience_seeds", "seed_diagnostics"):
                    columns = [r[0] for r in con.execute(f"describe {table}").fetchall() if r[0] != "audience_id"]
                    con.execute(f"insert into {table} select ?, {', '.join(columns)} from {table} where audience_id = ?", [new_id, old_id])
            con.execute("insert into taken select customer_id from kept")
            results.append({"name": name, "version": row["version"], "audience_id": new_id, "size": size, "removed": removed})
        return results

    return publish_tables(serving_path, write)
