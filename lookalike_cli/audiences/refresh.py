"""`lookalike refresh`: bring a warehouse's features, embeddings, index and audiences up to date.

The daily job after new raw rows land, in one call. Each step runs only when what it reads
changed since it last ran (a fingerprint of its input, kept in the warehouse table
`lookalike_refresh_state`), says why it ran or was skipped, and does only the work the change needs:

    build   dbt build of the features and labels     input: the raw tables
    score   customer_embeddings with the latest model input: customer_features + the model
            re-scores only customers whose model inputs changed (model/rescoring.py: a hash of
            the columns the model reads, per customer); everyone when the model changed or
            customer_embeddings was written outside refresh
    index   the FAISS index                           input: customer_embeddings
            updated in place (re-scored vectors replaced, new ones added) when at most
            MAX_UPDATE_SHARE of the rows changed and the index type allows it, else rebuilt;
            it says which and why
    apply   every audience of the audiences file      input: the file + customer_embeddings

What the data allows. Serving features are as of the day after the last order line, and the model
reads date-relative columns (recency_days, tenure_days, orders_per_month, the 90-day recent_*): when
new lines land on a new day, every customer's inputs change and every customer is re-scored, rightly
(the hashes find it, nothing assumes it). Lines landing on the same day (an intraday load), or
changes to some customers' attributes, re-score only those customers. The dbt build runs in full:
its per-customer aggregates are evaluated at cutoffs that move with the data (serving: end of data;
training: a share of the history), so an append-only aggregate would have to be merged per cutoff;
see README "Refresh" for what it costs and why it is not built yet.

A step's state is written only after it succeeds, so a refresh killed midway redoes the unfinished
step next time; published audiences stay readable throughout (publishing swaps the serving file
atomically), customer_embeddings and its input hashes change in one transaction, and the index file
and its manifest are each replaced atomically (index first, manifest last).
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
    detail: str = ""  # what the step did when it ran: how many customers re-scored, index updated or rebuilt and why


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
    """Run every step whose input changed (all of them, in full, with `force`); returns what ran and why."""
    from lookalike_cli.errors import LookalikeError
    from lookalike_cli.index.faiss_index import build_index, update_index
    from lookalike_cli.model.manifest import customer_manifests, load_manifest
    from lookalike_cli.model.rescoring import INPUTS_TABLE, rescore_changed
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
            detail = work()
            if input_fingerprint is not None:
                write_state(settings, name, input_fingerprint)
            results.append(StepResult(name, True, reason, time.perf_counter() - started, detail or ""))
        last = results[-1]
        progress(f"   {name}: {'ran' if last.ran else 'skipped'} ({last.reason}){f' in {last.seconds:.1f}s' if last.ran else ''}"
                 + (f": {last.detail}" if last.detail else ""))

    with connection(settings.db_path, read_only=True) as con:
        raw = fingerprint(con, raw_tables(con))
    def build() -> str:
        lines = run_dbt(settings, ["build", "--exclude", "customer_embeddings+"], echo=lambda _: None)
        return "dbt build of every model but customer_embeddings, in full" + next(
            (f" ({line.split('Done. ')[1]})" for line in reversed(lines or []) if "Done. " in line), "")

    step("build", raw, build)

    manifests = customer_manifests(settings.onnx_dir)
    with connection(settings.db_path, read_only=True) as con:
        features = fingerprint(con, ["customer_features"])
        embeddings_before = fingerprint(con, ["customer_embeddings"]) if table_exists(con, "customer_embeddings") else None
    model = load_manifest(manifests[-1])["model_version"] if manifests else None

    def score() -> str:
        # Stored hashes describe customer_embeddings only if nothing else rewrote it since refresh last did.
        outcome = rescore_changed(settings, trusted=not force and embeddings_before is not None
                                  and state.get("embeddings") == embeddings_before, progress=progress)
        return (f"{'all ' if outcome.full else ''}{outcome.scored:,} of {outcome.customers:,} customers re-scored"
                + (f" ({outcome.reason})" if outcome.full else f", {outcome.removed:,} removed (the others' model inputs did not change)"))

    step("score", f"{features}/{model}", score,
         skip_reason=None if manifests else f"no trained model in {settings.onnx_dir}: run `lookalike train` once")

    with connection(settings.db_path, read_only=True) as con:
        scored = table_exists(con, "customer_embeddings")
        embeddings = fingerprint(con, ["customer_embeddings"]) if scored else None
        generation = (con.execute(f"select max(scored_generation) from {INPUTS_TABLE}").fetchall()[0][0]
                      if table_exists(con, INPUTS_TABLE) else None)
    if embeddings is not None and any(r.step == "score" and r.ran for r in results):
        write_state(settings, "embeddings", embeddings)
        state["embeddings"] = embeddings
    # customer_embedding_inputs describes customer_embeddings only if refresh wrote the table last.
    trusted = embeddings is not None and embeddings == state.get("embeddings")

    def index() -> str:
        if force:
            updated, why = None, "forced"
        elif not trusted:
            updated, why = None, "customer_embeddings was written outside refresh"
        else:
            updated, why = update_index(settings.db_path, settings.index_dir, progress=quiet)
        if updated is not None:
            return f"index {why}"
        manifest = build_index(settings.db_path, settings.index_dir, progress=quiet,
                               embeddings_generation=generation if trusted else None)
        return f"index rebuilt ({why}): {manifest.index_type}, recall@10 {manifest.self_check.get('recall')}"

    step("index", embeddings, index, skip_reason=None if scored else "no customer_embeddings yet")

    if audiences_file is not None:
        from lookalike_cli.audiences.definitions import apply_definitions

        applied = []
        definitions = hashlib.sha256(Path(audiences_file).read_bytes()).hexdigest()[:16]
        step("apply", f"{definitions}/{embeddings}", lambda: applied.extend(apply_definitions(settings, audiences_file, progress=quiet,
                                                                     on_warning=on_warning)),
             skip_reason=None if scored else "no customer_embeddings yet")
        for audience in applied:
            diff = audience.diff
            progress(f"   {audience.row['name']} v{audience.row['version']}: {audience.row['size']:,} members"
                     + (f" (+{diff.entered.num_rows:,} / -{diff.left.num_rows:,} vs v{diff.from_version})" if diff else ""))
    return results
