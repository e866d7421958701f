"""Backtests as of a date, with the product's own commands.

`lookalike backtest --as-of DATE` answers "had we built this audience on DATE, would it have
found the customers who converted later?" without touching the user's warehouse:

1. a scratch warehouse beside --db gets a copy of every raw table (all of it: converters are often
   defined by what happened after DATE, e.g. later first purchases or coupon redemptions);
2. `lookalike build --vars {as_of_date: DATE - 1 day}`: every point-in-time model stops before
   DATE, so training features, similarity labels and serving features only see the past
   (the training windows split the history before DATE exactly as the defaults split all of it);
3. `lookalike train` with its defaults, `lookalike score`, `lookalike build-index` with its defaults;
4. `run_backtest` on the scratch warehouse: the same rankings `expand` uses by default.

The scratch folder is removed afterwards (kept with keep_scratch, for inspection).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.settings import Settings
from lookalike_cli.progress import Progress

SCRATCH_FOLDER = ".backtests"  # beside the warehouse file; one temporary sub-folder per run
MODEL_NAME = "backtest"


def parse_date(value: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise LookalikeError(f"{what} must be a date like 2025-06-30, got {value!r}.") from None


def data_dates(con: duckdb.DuckDBPyConnection) -> tuple[dt.date, dt.date]:
    try:
        first, last = con.execute("select min(ordered_at)::date, max(ordered_at)::date from raw.order_lines").fetchone()
    except duckdb.Error:
        raise LookalikeError("No raw.order_lines in the warehouse: load data with `lookalike generate-data` "
                             "or `lookalike load-sample completejourney` first.") from None
    if first is None:
        raise LookalikeError("raw.order_lines is empty: nothing to backtest on.")
    return first, last


def campaign_start(con: duckdb.DuckDBPyConnection, campaign: str) -> dt.date:
    """The first day of a Complete Journey campaign (raw.campaign_descriptions.start_date)."""
    try:
        start = con.execute("select min(start_date) from raw.campaign_descriptions where campaign_id::varchar = ?",
                            [str(campaign)]).fetchone()[0]
    except duckdb.Error:
        raise ParameterError("{campaign} needs raw.campaign_descriptions (load it with "
                             "`lookalike load-sample completejourney`).", "campaign") from None
    if start is None:
        raise LookalikeError(f"Campaign {campaign!r} has no start_date in raw.campaign_descriptions.")
    return parse_date(start, "start_date")


def check_as_of(as_of: dt.date, first: dt.date, last: dt.date) -> None:
    # Training needs a feature window and a label window before DATE: at least a few days of history.
    if not first + dt.timedelta(days=8) <= as_of <= last + dt.timedelta(days=1):
        raise ParameterError(f"{{as_of}} {as_of} is outside the data: the order lines run from {first} to {last} "
                             f"(give a date from {first + dt.timedelta(days=8)} to {last + dt.timedelta(days=1)}).", "as_of")


def copy_raw_tables(source: Path, target: Path) -> list[str]:
    """Every table of the `raw` schema of `source` into a new DuckDB file `target`."""
    from lookalike_cli.warehouse.connection import connect

    con = connect(target)
    try:
        con.execute(f"attach '{source}' as source (read_only)")
        tables = [r[0] for r in con.execute(
            "select table_name from duckdb_tables() where database_name = 'source' and schema_name = 'raw' order by 1"
        ).fetchall()]
        con.execute("create schema if not exists raw")
        for table in tables:
            con.execute(f'create table raw."{table}" as select * from source.raw."{table}"')
        con.execute("detach source")
        con.execute("checkpoint")
    finally:
        con.close()
    return tables


@dataclass(frozen=True)
class Holdout:
    """One known outcome to backtest: who converted (SQL), among whom (SQL, default everyone) and,
    optionally, what each converter was worth (SQL of customer_id, value: value captured)."""
    name: str
    converters_sql: str
    population_sql: str | None = None
    value_sql: str | None = None


def backtest_as_of(settings: Settings, as_of: dt.date, converters_sql: str, population_sql: str | None = None,
                   name: str = "backtest", value_sql: str | None = None, **options):
    """Rebuild everything from the data before `as_of` in a scratch warehouse, then run the backtest there.

    Returns the Backtest (see lookalike_cli.trust.backtest), with info["as_of"], info["windows"] and the stage timings."""
    return backtests_as_of(settings, as_of, [Holdout(name, converters_sql, population_sql, value_sql)], **options)[0]


def backtests_as_of(settings: Settings, as_of: dt.date, holdouts: list[Holdout], splits: int = 5,
                    strategies: tuple[str, ...] | None = None, baselines: tuple[str, ...] | None = None,
                    seed_fraction: float = 0.5, seed: int = 0, train_options: dict | None = None,
                    dbt_vars: dict | None = None, keep_scratch: bool = False, progress: Progress = print) -> list:
    """One scratch rebuild as of `as_of`, then one backtest per holdout on it (same model, same index)."""
    from lookalike_cli.trust import backtest as backtesting
    from lookalike_cli.warehouse.dbt_runner import run_dbt
    from lookalike_cli.index.faiss_index import build_index
    from lookalike_cli.model.scoring import score
    from lookalike_cli.model.train import train
    from lookalike_cli.warehouse.connection import connection

    with connection(settings.db_path, read_only=True) as con:
        first, last = data_dates(con)
    check_as_of(as_of, first, last)
    parent = settings.db_path.parent / SCRATCH_FOLDER
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{holdouts[0].name}_", dir=parent))
    scratch_settings = Settings.resolve(db=scratch / "warehouse.duckdb", serving_db=scratch / "serving.duckdb",
                                        onnx_dir=scratch / "onnx", index_dir=scratch / "indexes")
    timings: dict[str, float] = {}

    def stage(label: str, started: float) -> None:
        timings[label] = round(time.perf_counter() - started, 2)
        progress(f"  {label}: {timings[label]:.1f}s")

    try:
        progress(f"Backtest as of {as_of}: everything rebuilt from data before it in {scratch}")
        started = time.perf_counter()
        tables = copy_raw_tables(settings.db_path, scratch_settings.db_path)
        stage(f"copied {len(tables)} raw table(s)", started)

        started = time.perf_counter()
        # as_of_date is inclusive: the day before DATE is the last one anything may see.
        variables = {**(dbt_vars or {}), "as_of_date": (as_of - dt.timedelta(days=1)).isoformat()}
        run_dbt(scratch_settings, ["build", "--exclude", "customer_embeddings+", "--vars", json.dumps(variables)],
                echo=lambda line: None)
        stage("lookalike build (as_of_date = the day before)", started)

        started = time.perf_counter()
        manifest = train(scratch_settings.db_path, scratch_settings.onnx_dir, name=MODEL_NAME,
                         **(train_options or {}))
        stage("lookalike train", started)

        started = time.perf_counter()
        score(scratch_settings, model=MODEL_NAME, echo=lambda line: None)
        stage("lookalike score", started)

        started = time.perf_counter()
        build_index(scratch_settings.db_path, scratch_settings.index_dir, progress=lambda message: None)
        stage("lookalike build-index", started)

        with connection(scratch_settings.db_path, read_only=True) as con:
            row = con.execute("select cast(feature_end_at as date), cast(label_end_at as date) - 1, "
                              "cast(as_of_at as date) - 1 from int_time_windows").fetchone()
        windows = {"feature_end_date": str(row[0]), "label_end_date": str(row[1]), "as_of_date": str(row[2])}
        results = []
        for holdout in holdouts:
            result = backtesting.run_backtest(
                scratch_settings.db_path, scratch_settings.index_dir, holdout.converters_sql,
                population_sql=holdout.population_sql, value_sql=holdout.value_sql, name=holdout.name, splits=splits,
                strategies=strategies or backtesting.DEFAULT_STRATEGIES, baselines=baselines or backtesting.BASELINES,
                seed_fraction=seed_fraction, seed=seed, progress=progress)
            result.info.update(as_of=as_of.isoformat(), stage_seconds=timings, model_manifest=Path(manifest).name,
                               windows=windows)
            if keep_scratch:  # where to look (or to reuse the rebuilt warehouse from)
                result.info["scratch"] = str(scratch)
            results.append(result)
        return results
    finally:
        if not keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
