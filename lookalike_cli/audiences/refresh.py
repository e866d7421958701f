"""`lookalike refresh`: bring a warehouse's features, embeddings, index and audiences up to date.

The daily job after new raw rows land, in one call. Each step runs only when what it reads
changed since it last ran (a fingerprint of its input, kept in the warehouse table
`lookalike_refresh_state`), and says why it ran or was skipped:

    build   dbt build of the features and labels     input: the raw tables
    score   customer_embeddings with the latest model input: customer_features + the model
    index   the FAISS index                           input: customer_embeddings
    apply   every audience of the audiences file      input: the file + customer_embeddings

A step's state is written only after it succeeds, so a refresh killed midway redoes the
unfinished step next time; published audiences stay readable throughout (publishing swaps the
serving file atomically). Steps run in full: dbt incremental aggregation and re-scoring only
the customers whose features changed are not built yet.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from lookalike_cli.progress import Progress, quiet
from lookalike_cli.settings import Settings

STATE_TABLE = "lookalike_refresh_state"


@dataclass
class StepResult:
    step: str
    ran: bool
    reason: str
    seconds: float


def fingerprint(con, tables: list[str]) -> str:
    """Row count and an order-independent hash of every row of each table (absent tables count as empty)."""
    parts = []
    for table in tables:
        schema, _, name = table.rpartition(".")
        exists = con.execute("select count(*) from information_schema.tables where table_name = ? and table_schema = ?",
                             [name, schema or "main"]).fetchall()[0][0]
        parts.append(f"{table}:" + (str(con.execute(f"select count(*), coalesce(sum(hash(t)), 0) from {table} t").fetchall()[0])
                                    if exists else "absent"))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def raw_tables(con) -> list[str]:
    return [f"raw.{r[0]}" for r in con.execute(
        "select table_name from information_schema.tables where table_schema = 'raw' order by 1").fetchall()]


def read_state(settings: Settings) -> dict[str, str]:
    from lookalike_cli.warehouse.connection import connection, table_exists

    with connection(settings.db_path, read_only=True) as con:
        if not table_exists(con, STATE_TABLE):
            return {}
        return dict(con.execute(f"select step, input_fingerprint from {STATE_TABLE}").fetchall())


def write_state(settings: Settings, step: str, input_fingerprint: str) -> None:
    from lookalike_cli.warehouse.connection import connection

    with connection(settings.db_path) as con:
        con.execute(f"create table if not exists {STATE_TABLE} (step varchar primary key, input_fingerprint varchar, "
                    "finished_at timestamp)")
        con.execute(f"insert or replace into {STATE_TABLE} values (?, ?, now())", [step, input_fingerprint])


def refresh(settings: Settings, audiences_file: str | Path | None = None, force: bool = False,
            progress: Progress = quiet, on_warning: Progress = quiet) -> list[StepResult]:
    """Run every step whose input changed (all of them with `force`); returns what ran and why."""
    from lookalike_cli.errors import LookalikeError
    from lookalike_cli.index.faiss_index import build_index
    from lookalike_cli.model.manifest import customer_manifests, load_manifest
    from lookalike_cli.model.scoring import score
    from lookalike_cli.warehouse.connection import connection, table_exists
    from lookalike_cli.warehouse.dbt_runner import run_dbt

    if not settings.db_path.exists():
        raise LookalikeError(f"Warehouse file {settings.db_path} does not exist: load raw tables first "
                             "(`lookalike generate-data` or your own loader), then `lookalike refresh`.")
    if audiences_file is not None and not Path(audiences_file).is_file():
        raise LookalikeError(f"No audiences file at {audiences_file}.")
    state = {} if force else read_state(settings)
    results: list[StepResult] = []

    def step(name: str, input_fingerprint: str | None, work, skip_reason: str | None = None) -> None:
        started = time.perf_counter()
        if skip_reason:
            results.append(StepResult(name, False, skip_reason, 0.0))
        elif input_fingerprint is not None and state.get(name) == input_fingerprint:
            results.append(StepResult(name, False, "its input has not changed since it last ran", 0.0))
        else:
            reason = "forced" if force else ("first run" if name not in state else "its input changed")
            progress(f"== refresh: {name} ({reason})")
            work()
            if input_fingerprint is not None:
                write_state(settings, name, input_fingerprint)
            results.append(StepResult(name, True, reason, time.perf_counter() - started))
        last = results[-1]
        progress(f"   {name}: {'ran' if last.ran else 'skipped'} ({last.reason}){f' in {last.seconds:.1f}s' if last.ran else ''}")

    with connection(settings.db_path, read_only=True) as con:
        raw = fingerprint(con, raw_tables(con))
    step("build", raw, lambda: run_dbt(settings, ["build", "--exclude", "customer_embeddings+"], echo=lambda _: None))

    manifests = customer_manifests(settings.onnx_dir)
    with connection(settings.db_path, read_only=True) as con:
        features = fingerprint(con, ["customer_features"])
    model = load_manifest(manifests[-1])["model_version"] if manifests else None
    step("score", f"{features}/{model}", lambda: score(settings, echo=lambda _: None),
         skip_reason=None if manifests else f"no trained model in {settings.onnx_dir}: run `lookalike train` once")

    with connection(settings.db_path, read_only=True) as con:
        scored = table_exists(con, "customer_embeddings")
        embeddings = fingerprint(con, ["customer_embeddings"]) if scored else None
    step("index", embeddings, lambda: build_index(settings.db_path, settings.index_dir, progress=quiet),
         skip_reason=None if scored else "no customer_embeddings yet")

    if audiences_file is not None:
        from lookalike_cli.audiences.definitions import apply_definitions

        applied = []
        definitions = hashlib.sha256(Path(audiences_file).read_bytes()).hexdigest()[:16]
        step("apply", f"{definitions}/{embeddings}", lambda: applied.extend(apply_definitions(settings, audiences_file, progress=quiet,
                                                                     on_warning=on_warning)))
        for audience in applied:
            diff = audience.diff
            progress(f"   {audience.row['name']} v{audience.row['version']}: {audience.row['size']:,} members"
                     + (f" (+{diff.entered.num_rows:,} / -{diff.left.num_rows:,} vs v{diff.from_version})" if diff else ""))
    return results
