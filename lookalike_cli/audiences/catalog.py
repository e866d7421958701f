"""Creating and reading published audiences: expand + publish, list, show, diff, drop."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.files import remove_stale_temp_files
from lookalike_cli.audiences.expand import Expansion, expand
from lookalike_cli.audiences.publish import WarehouseAttributes, check_name, drop_audience, publish_audience
from lookalike_cli.warehouse.connection import connect_serving, connection, table_exists
from lookalike_cli.progress import Progress


def warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


@contextmanager
def customer_attributes(db_path: Path) -> Iterator[WarehouseAttributes | None]:
    """customer_features without its list columns, what BI joins audiences to, as a lazily read snapshot
    (publish.WarehouseAttributes): its connection stays open while the `with` body publishes."""
    with connection(db_path, read_only=True) as con:
        if not table_exists(con, "customer_features"):
            yield None
            return
        columns = [(r[0], r[1]) for r in con.execute("describe customer_features").fetchall() if not r[1].endswith("[]")]
        yield WarehouseAttributes(con, "customer_features", columns)


def create_audience(
    db_path: Path,
    serving_db_path: Path,
    index_dir: Path,
    name: str,
    seed_sql: str | None = None,
    seed_table: str | None = None,
    seed_file: str | Path | None = None,
    seed_value_sql: str | None = None,
    size: str | int | None = None,
    min_similarity: float | None = None,
    strategy: str = "blend",
    exclude_sql: str | None = None,
    k_per_seed: int | None = None,
    seed: int = 0,
    export_parquet: str | Path | None = None,
    rings: str | list | None = None,
    holdout: str | float | None = None,
    min_expected_lift: float | None = None,
    exclude_features: str | list | None = None,
    progress: Progress = print,
    on_warning: Progress = warn,
) -> dict:
    """Expand a seed into a new version of audience `name` and publish it; returns the audiences row.

    `rings` ([1%, 2%, 5%]) publishes disjoint tiers up to the outer ring (which sets the size);
    `holdout` (10%) marks a stable share of members as held out of activation (audiences/tiers.py).
    The reach curve takes the lift of the latest backtest named `name` where it measured (reach.py).
    """
    from lookalike_cli.audiences.reach import latest_backtest
    from lookalike_cli.audiences.tiers import parse_holdout, parse_rings, ring_size, split_expansion

    check_name(name)
    ring_shares = parse_rings(rings) if rings else None
    holdout_share = parse_holdout(holdout) if holdout else None
    if ring_shares:
        if size is not None or min_similarity is not None or min_expected_lift is not None:
            raise ParameterError("Give {rings} or {size} / {min_similarity} / {min_expected_lift}, not both: the outer "
                                 "ring is the size.", "rings", "size", "min_similarity", "min_expected_lift")
        with connection(db_path, read_only=True) as con:
            population = con.execute("select count(*) from customer_embeddings").fetchall()[0][0]
        size = ring_size(ring_shares, population)
    result = expand(db_path, index_dir, seed_sql=seed_sql, seed_table=seed_table, seed_file=seed_file,
                    seed_value_sql=seed_value_sql, size=size,
                    min_similarity=min_similarity, strategy=strategy, exclude_sql=exclude_sql,
                    k_per_seed=k_per_seed, seed=seed, progress=progress, min_expected_lift=min_expected_lift,
                    exclude_features=exclude_features, reach_backtest=latest_backtest(serving_db_path, name, strategy))
    result = split_expansion(result, name, ring_shares, holdout_share, seed=seed)
    return publish_expansion(db_path, serving_db_path, name, result, seed=seed, export_parquet=export_parquet,
                             progress=progress, on_warning=on_warning)


def publish_expansion(
    db_path: Path,
    serving_db_path: Path,
    name: str,
    result: Expansion,
    seed: int = 0,
    export_parquet: str | Path | None = None,
    progress: Progress = print,
    on_warning: Progress = warn,
) -> dict:
    """Publish a computed expansion as a new version of audience `name`, with its seed diagnostics and
    reach curve; the curve's PNG goes beside the serving file (`row["reach_curve_png"]`)."""
    from lookalike_cli.audiences.publish import safe_file_name
    from lookalike_cli.audiences.reach import plot_reach, reach_png_dir

    check_name(name)
    for message in result.warnings:
        on_warning(message)
    # The picture is drawn before the publish (not while holding its lock; a drawing error publishes
    # nothing) and moved in once the publish succeeded. It is drawn on a thread of its own (half a
    # second of matplotlib) beside the seed diagnostics' and skew's warehouse reads.
    picture, drawing = None, None
    if result.reach is not None:
        remove_stale_temp_files(reach_png_dir(serving_db_path))
        picture = reach_png_dir(serving_db_path) / f".{safe_file_name(name)}.{os.getpid()}.tmp.png"
        drawing = ThreadPoolExecutor(1, thread_name_prefix="reach-png")
        drawn = drawing.submit(plot_reach, result.reach, f"{name}: {result.audience['strategy']}", result.members.num_rows,
                               result.audience["population_size"], picture)
    try:
        return _publish_with_companions(db_path, serving_db_path, name, result, seed, export_parquet, progress,
                                        on_warning, picture, drawn if drawing is not None else None)
    finally:
        if drawing is not None:
            drawing.shutdown(wait=True)
        if picture is not None:
            picture.unlink(missing_ok=True)


def _publish_with_companions(db_path, serving_db_path, name, result, seed, export_parquet, progress, on_warning,
                             picture, drawn) -> dict:
    from lookalike_cli.audiences.diagnostics import inspect_seed, write_seed_diagnostics
    from lookalike_cli.audiences.reach import reach_png_path, write_reach
    from lookalike_cli.audiences.skew import attribute_skew, skew_warnings, write_skew

    with connection(db_path, read_only=True) as con:
        diagnostics = inspect_seed(con, result.seeds, seed, index=result.index)
        skew = attribute_skew(con, result.members.column("customer_id").to_numpy(), result.seeds.ids)
    excluded = result.audience["parameters"].get("exclude_features", ())
    for message in diagnostics.warnings + skew_warnings(skew, result.members.num_rows, excluded=excluded):
        if message not in result.warnings:
            on_warning(message)

    def companions(con, audience_id: int) -> None:
        write_seed_diagnostics(con, audience_id, diagnostics)
        write_skew(con, audience_id, skew)
        if result.reach is not None:
            write_reach(con, audience_id, result.reach)

    if picture is not None:
        drawn.result()
    with customer_attributes(db_path) as attributes:
        row = publish_audience(serving_db_path, name, result.audience, result.members, attributes=attributes,
                               export_parquet=Path(export_parquet) if export_parquet else None, progress=progress,
                               extra=companions)
    if picture is not None:
        path = reach_png_path(serving_db_path, name, row["version"])
        os.replace(picture, path)
        row["reach_curve_png"] = str(path)
    return row


def open_serving(serving_db_path: Path) -> duckdb.DuckDBPyConnection:
    if not serving_db_path.exists():
        raise LookalikeError(f"No serving file at {serving_db_path}: run `lookalike expand` to publish an audience first.")
    return connect_serving(serving_db_path)


def list_audiences(serving_db_path: Path) -> pa.Table:
    con = open_serving(serving_db_path)
    try:
        return con.sql(
            "select audience_id, name, version, created_at, strategy, size, seed_found, seed_missing, "
            "round(score_min, 4) as score_min, round(score_max, 4) as score_max, model_version, index_version "
            "from audiences order by name, version"
        ).to_arrow_table()
    finally:
        con.close()


def resolve_version(con: duckdb.DuckDBPyConnection, name: str, version: int | None) -> tuple[int, int]:
    query = "select audience_id, version from audiences where name = ?"
    params: list = [name]
    if version is not None:
        query, params = query + " and version = ?", [name, version]
    rows = con.execute(query + " order by version desc limit 1", params).fetchall()
    if not rows:
        which = f"version {version} of " if version is not None else ""
        raise LookalikeError(f"No {which}audience named {name!r}. `lookalike audiences list` shows what exists.")
    return rows[0]


@dataclass
class AudienceView:
    audience: dict
    members: pa.Table
    reach_curve: pa.Table | None = None      # audience_reach_curve rows (None before curves existed)
    reach_curve_png: Path | None = None


def show_audience(serving_db_path: Path, name: str, version: int | None = None, limit: int = 10) -> AudienceView:
    """The audiences row and the first `limit` members (by rank) of one version (default latest)."""
    con = open_serving(serving_db_path)
    try:
        audience_id, _ = resolve_version(con, name, version)
        cursor = con.execute("select * from audiences where audience_id = ?", [audience_id])
        columns = [d[0] for d in cursor.description]
        audience = dict(zip(columns, cursor.fetchall()[0]))
        members = con.sql(
            "select rank, customer_id, round(score, 4) as score, round(similarity, 4) as similarity, nearest_seed_id "
            "from audience_members where audience_id = $id order by rank limit $limit",
            params={"id": audience_id, "limit": limit},
        ).to_arrow_table()
        from lookalike_cli.audiences.reach import reach_png_path, read_reach

        picture = reach_png_path(serving_db_path, name, audience["version"])
        return AudienceView(audience, members, read_reach(con, audience_id), picture if picture.exists() else None)
    finally:
        con.close()


@dataclass
class AudienceDiff:
    name: str
    from_version: int
    to_version: int
    entered: pa.Table
    left: pa.Table
    stayed: int


def diff_audience(serving_db_path: Path, name: str, from_version: int | None = None, to_version: int | None = None) -> AudienceDiff:
    """Who entered and who left between two versions (default: the previous and the latest)."""
    con = open_serving(serving_db_path)
    try:
        new_id, new_version = resolve_version(con, name, to_version)
        old_version = from_version if from_version is not None else new_version - 1
        if old_version < 1:
            raise LookalikeError(f"Audience {name!r} has only version {new_version}: nothing to diff against.")
        old_id, old_version = resolve_version(con, name, old_version)

        def members_only_in(a: int, b: int) -> pa.Table:
            return con.sql(
                "select customer_id, rank, round(score, 4) as score from audience_members where audience_id = $a "
                "and customer_id not in (select customer_id from audience_members where audience_id = $b) order by rank",
                params={"a": a, "b": b},
            ).to_arrow_table()

        entered, left = members_only_in(new_id, old_id), members_only_in(old_id, new_id)
        stayed = con.execute(
            "select count(*) from audience_members n join audience_members o using (customer_id) "
            "where n.audience_id = ? and o.audience_id = ?", [new_id, old_id]
        ).fetchall()[0][0]
        return AudienceDiff(name, old_version, new_version, entered, left, stayed)
    finally:
        con.close()


__all__ = ["create_audience", "list_audiences", "show_audience", "diff_audience", "drop_audience", "customer_attributes"]
