"""`lookalike refresh`: bring a warehouse's features, embeddings, index and audiences up to date.

The daily job after new raw rows land, in one call. Each step runs only when what it reads
changed since it last ran (a fingerprint of its input, kept in the warehouse table
`lookalike_refresh_state`), says why it ran or was skipped, and does only the work the change needs:

    build   dbt build of the serving models          input: the raw tables
            (what score, expand, apply and BI read, with their tests; the training side is left to
            `lookalike train`, which builds it first when the raw tables changed since: ensure_training_current);
            the order aggregates merge in only the new order lines when that is sound (plan_aggregates), and
            are rebuilt otherwise; it says which and why
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
changes to some customers' attributes, re-score only those customers.

The dbt build. Only the serving cutoff can take appended lines: it is the end of data (as_of_date
unset), so its aggregates are sums over every line and new lines add to them; the training cutoff is a
share of the history and moves with it, which is one more reason the training side is train's to build.
The cutoff-free grain is per customer and order day (int_customer_order_days: a day is wholly before
or after a midnight cutoff), so the date-relative features are computed from it as of each cutoff on
every build, never stored; category counts for the serving cutoff are per customer and category. A
merge is sound when the tables hold exactly the lines up to the last one refresh recorded and every
new line comes after it (plan_aggregates checks the count and hash of the earlier lines, that no new
line joins an order already held, the tables' own last line, the last build's as_of_at and the dbt
project); anything else rebuilds them. Spend sums are exact decimals, so merged totals equal a full
build's bit for bit and untouched customers keep their hash. The per-customer models downstream
(CUSTOMER_MODELS) merge too, computing only the customers whose inputs changed (each finds them from its own
held rows; everyone when the serving cutoff moved); what they cannot see from their rows is checked here: no
raw table but order_lines changed (plan_aggregates), and the categories mart kept its ids (build_step rebuilds
customer_features and what reads it when it did not).

A step's state is written only after it succeeds, so a refresh killed midway redoes the unfinished
step next time; published audiences stay readable throughout (publishing swaps the serving file
atomically), customer_embeddings and its input hashes change in one transaction, and the index file
and its manifest are each replaced atomically (index first, manifest last).
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from lookalike_cli.progress import Progress, quiet
from lookalike_cli.settings import Settings

STATE_TABLE = "lookalike_refresh_state"
# What only `lookalike train` reads: the training features and the similarity labels, and the models only
# they read. refresh does not retrain, so it does not build them; train builds them first when the raw
# tables changed since they were built (ensure_training_current), so it never learns from stale tables.
TRAINING_MODELS = ("training_features", "similarity_pairs", "int_customer_pairs_sampled", "int_customer_label_vectors",
                   "int_customer_category_counts_training")
# The order aggregates refresh can merge new lines into (dbt incremental models, var incremental_aggregates), and
# the state row that says which order lines they hold.
INCREMENTAL_MODELS = ("int_customer_order_days", "int_customer_category_counts_serving")
# The per-customer models a merge updates for the changed customers only (delete+insert by customer): those whose
# order lines changed, everyone when the serving cutoff moved (a new day); each finds them from its own held rows.
CUSTOMER_MODELS = ("int_customer_orders_aggregated", "customer_features", "customer_profiles_text")
AGGREGATES_STATE = "aggregates"


@dataclass
class StepResult:
    step: str
    ran: bool
    reason: str
    seconds: float
    detail: str = ""  # what the step did when it ran: how many customers re-scored, index updated or rebuilt and why


def fingerprint(con, tables: list[str], hashed: dict[str, str] | None = None) -> str:
    """Row count and an order-independent hash of every row of each table (absent tables count as empty).
    `hashed` holds tables' parts already read in this run (a scan of 44M order lines costs ~1 s): used, and filled."""
    hashed = {} if hashed is None else hashed
    parts = []
    for table in tables:
        if table not in hashed:
            schema, _, name = table.rpartition(".")
            exists = con.execute("select count(*) from information_schema.tables where table_name = ? and table_schema = ?",
                                 [name, schema or "main"]).fetchall()[0][0]
            hashed[table] = (str(con.execute(f"select count(*), coalesce(sum(hash(t)), 0) from {table} t").fetchall()[0])
                             if exists else "absent")
        parts.append(f"{table}:{hashed[table]}")
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


def dbt_summary(lines: list[str] | None) -> str:
    """dbt's closing count ("PASS=40 WARN=0 ERROR=0 SKIP=0 TOTAL=40"), in brackets, or nothing."""
    return next((f" ({line.split('Done. ')[1]})" for line in reversed(lines or []) if "Done. " in line), "")


def project_fingerprint(settings: Settings) -> str:
    """A hash of the dbt project's SQL, YAML and seeds: a changed model or var default changes what the stored
    aggregates mean, so they are rebuilt rather than merged into."""
    digest = hashlib.sha256()
    root = settings.dbt_project_dir
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and path.suffix in (".sql", ".yml", ".yaml", ".csv") and relative.parts[0] not in ("target", "logs", "dbt_packages"):
            digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def order_lines_state(con, through: str | None) -> dict:
    """One scan of raw.order_lines: every line's count, hash and last timestamp, and the count and hash of the
    lines at or before `through` (the last line the order aggregates hold)."""
    at = "cast(t.ordered_at as timestamp)"
    bound = f"{at} <= cast(? as timestamp)" if through else "false"
    count, total, last, count_through, hash_through = con.execute(
        f"""select count(*), coalesce(sum(hash(t)), 0), max({at}),
                   count(*) filter (where {bound}), coalesce(sum(hash(t)) filter (where {bound}), 0)
            from raw.order_lines t""", [through, through] if through else []).fetchall()[0]
    return {"lines": count, "hash": str(total), "through": str(last) if last is not None else None,
            "lines_through": count_through, "hash_through": str(hash_through)}


def plan_aggregates(settings: Settings, state: dict[str, str],
                    hashed: dict[str, str] | None = None) -> tuple[str | None, str, dict | None]:
    """Whether the order aggregates (INCREMENTAL_MODELS) can take only the new order lines: returns
    (the last line they hold, or None for a rebuild; why; the state to record after the build).

    Sound only when the tables hold exactly the lines up to `through` (the last line when refresh built
    them) and every new line comes after it: no line at or before it added, edited or deleted (same count
    and hash), no new line added to an order already aggregated (its order count would double), the
    serving cutoff at the end of data (as_of_date unset: the last build's as_of_at is the day after its
    last line), and the same dbt project. Anything else: a full rebuild of those tables, saying why."""
    import json

    from lookalike_cli.warehouse.connection import connection, table_exists

    prior = json.loads(state[AGGREGATES_STATE]) if AGGREGATES_STATE in state else None
    project = project_fingerprint(settings)
    with connection(settings.db_path, read_only=True) as con:
        if not table_exists(con, "raw.order_lines"):
            return None, "no raw.order_lines", None
        through = prior["through"] if prior else None
        lines = order_lines_state(con, through)
        others = fingerprint(con, [table for table in raw_tables(con) if table != "raw.order_lines"], hashed)
        after = {"project": project, "other_raw_tables": others, **{key: lines[key] for key in ("lines", "hash", "through")}}
        if prior is None:
            return None, "no aggregates recorded by refresh yet", after
        if prior["project"] != project:
            return None, "the dbt project changed since the aggregates were built", after
        if prior.get("other_raw_tables") != others:
            # customer_features merges only the customers whose order lines changed (CUSTOMER_MODELS).
            return None, "a raw table other than order_lines changed (customers, visits, ...)", after
        if not all(table_exists(con, name) for name in (*INCREMENTAL_MODELS, "int_time_windows")):
            return None, "an order aggregate table is missing", after
        held_days = con.execute("select max(last_ordered_at) from int_customer_order_days").fetchall()[0][0]
        held_categories = con.execute("select max(last_ordered_at) from int_customer_category_counts_serving").fetchall()[0][0]
        last = datetime.fromisoformat(through)
        if held_days != last or (held_categories is not None and held_categories > last):
            return None, "the order aggregates changed since refresh built them (another build or merge)", after
        as_of_at, data_end_at = con.execute("select as_of_at, data_end_at from int_time_windows").fetchall()[0]
        if as_of_at.date() != data_end_at.date() + timedelta(days=1):
            return None, "the last build's serving cutoff was not the end of data (as_of_date set)", after
        if (lines["lines_through"], lines["hash_through"]) != (prior["lines"], prior["hash"]):
            return None, f"order lines at or before {through} changed (added, edited or deleted)", after
        new_lines = lines["lines"] - lines["lines_through"]
        if new_lines:
            at = "cast(ordered_at as timestamp)"
            reopened = con.execute(
                f"""select count(*) from (select distinct order_id from raw.order_lines where {at} > cast(? as timestamp)) new_orders
                    semi join raw.order_lines old on old.order_id = new_orders.order_id and cast(old.ordered_at as timestamp) <= cast(? as timestamp)""",
                [through, through]).fetchall()[0][0]
            if reopened:
                return None, f"{reopened:,} orders got lines after {through}: orders already aggregated would count twice", after
    return through, f"{new_lines:,} order lines after {through} aggregated and merged into the held totals", after


# Passed to every dbt build refresh and train run, always the same: dbt re-parses the whole project when vars
# change, so the choice between merging and rebuilding is the --full-refresh flag, which does not.
BUILD_VARS = ["--vars", '{"incremental_aggregates": true}']


def build_serving(settings: Settings, merge: bool = False) -> str:
    """dbt build of what serving reads (customer_features, categories, profiles, ...) with their tests:
    every model but customer_embeddings (scored by refresh itself) and the training side. With `merge`, the
    order aggregates (INCREMENTAL_MODELS) take in only the lines after the last one they hold
    (plan_aggregates says when that is sound); without, they are rebuilt (--full-refresh)."""
    from lookalike_cli.warehouse.dbt_runner import run_dbt

    lines = run_dbt(settings, ["build", "--exclude", "customer_embeddings+", *TRAINING_MODELS, *BUILD_VARS,
                               *([] if merge else ["--full-refresh"])], echo=lambda _: None)
    return "dbt build of the serving models (the training side is left to `lookalike train`)" + dbt_summary(lines)


def category_mapping(settings: Settings) -> str | None:
    """A hash of the categories mart's ids, names and departments (what customer_features' category_ids mean)."""
    from lookalike_cli.warehouse.connection import connection, table_exists

    with connection(settings.db_path, read_only=True) as con:
        if not table_exists(con, "categories"):
            return None
        return str(con.execute("select count(*), coalesce(sum(hash(category_id, category, department)), 0) "
                               "from categories").fetchall()[0])


MERGE_SCOPE_TABLE = "lookalike_refresh_merge"


@contextmanager
def merge_scope(settings: Settings, through: str | None):
    """For the length of a merging build: the last order line held before it (`merged_after`), so the order
    aggregates' uniqueness tests check only the rows the merge wrote (macro refresh_merged_rows), not the
    whole tables (at 1M customers, seconds of every refresh). Not written for a rebuild, which checks all."""
    from lookalike_cli.warehouse.connection import connection

    if through is None:
        yield
        return
    with connection(settings.db_path) as con:
        con.execute(f"create or replace table {MERGE_SCOPE_TABLE} as select cast(? as timestamp) as merged_after", [through])
    try:
        yield
    finally:
        with connection(settings.db_path) as con:
            con.execute(f"drop table if exists {MERGE_SCOPE_TABLE}")


def build_step(settings: Settings, state: dict[str, str], force: bool = False,
               hashed: dict[str, str] | None = None) -> str:
    """refresh's build: the serving models, the order aggregates incrementally when plan_aggregates allows
    (never with `force`: everything is rebuilt), and with them the changed customers' features and profiles."""
    import json

    from lookalike_cli.warehouse.dbt_runner import run_dbt

    through, why, after = plan_aggregates(settings, state, hashed)
    if force:
        through, why = None, "forced"
    mapping = category_mapping(settings) if through is not None else None
    with merge_scope(settings, through):
        detail = build_serving(settings, merge=through is not None)
    if through is not None and category_mapping(settings) != mapping:
        # New lines brought a category (or moved one to another department): category ids shift for customers the
        # merge did not touch, so their features and profiles are computed again. Rare: a new category in the data.
        lines = run_dbt(settings, ["build", "--select", "customer_features+", "--exclude", "customer_embeddings+",
                                   *TRAINING_MODELS, *BUILD_VARS, "--full-refresh"], echo=lambda _: None)
        detail += "; the categories changed, so customer_features and what reads it were rebuilt in full" + dbt_summary(lines)
    if after is not None:
        write_state(settings, AGGREGATES_STATE, json.dumps(after))
    return (f"{detail}; order aggregates {'incremental' if through else 'rebuilt in full'} ({why})")


def forget_aggregates(settings: Settings) -> None:
    """Before a build outside refresh (every table rebuilt): the recorded aggregate state no longer describes them."""
    from lookalike_cli.warehouse.connection import connection, table_exists

    if not settings.db_path.exists():
        return
    with connection(settings.db_path) as con:
        if table_exists(con, STATE_TABLE):
            con.execute(f"delete from {STATE_TABLE} where step = ?", [AGGREGATES_STATE])


def ensure_training_current(settings: Settings, progress: Progress = quiet) -> str | None:
    """Before `lookalike train`: build the training side when refresh built the serving side on raw rows the
    training tables have not seen. Returns what it built, or None when they were current.

    Only a warehouse refresh has built knows this: without refresh state the training tables are what the
    last `lookalike build` (every model) left, and that build is the user's to run."""
    from lookalike_cli.warehouse.dbt_runner import run_dbt

    state = read_state(settings)
    if "build" not in state:
        return None
    from lookalike_cli.warehouse.connection import connection

    with connection(settings.db_path, read_only=True) as con:
        raw = fingerprint(con, raw_tables(con))
    if state.get("training") == raw:
        return None
    done = []
    if state["build"] != raw:
        # The training side reads the shared aggregates (int_customer_orders_aggregated, ...): they must be of
        # the same raw rows, so the serving build runs first, as refresh's build step would.
        progress("== the raw tables changed since refresh last built: building the serving models first")
        done.append(build_step(settings, state))
        write_state(settings, "build", raw)
    progress("== the training tables are older than the raw tables: building them (dbt build of the training side)")
    lines = run_dbt(settings, ["build", "--select", *TRAINING_MODELS, *BUILD_VARS], echo=lambda _: None)
    write_state(settings, "training", raw)
    done.append("dbt build of the training side" + dbt_summary(lines))
    return "; ".join(done)


def refresh(settings: Settings, audiences_file: str | Path | None = None, force: bool = False,
            progress: Progress = quiet, on_warning: Progress = quiet) -> list[StepResult]:
    """Run every step whose input changed (all of them, in full, with `force`); returns what ran and why."""
    from lookalike_cli.errors import LookalikeError
    from lookalike_cli.index.faiss_index import build_index, update_index
    from lookalike_cli.model.manifest import customer_manifests, load_manifest
    from lookalike_cli.model.rescoring import INPUTS_TABLE, rescore_changed
    from lookalike_cli.warehouse.connection import connection, table_exists

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

    hashed: dict[str, str] = {}  # the raw tables' hashes, read once for the build's fingerprint and its plan
    with connection(settings.db_path, read_only=True) as con:
        raw = fingerprint(con, raw_tables(con), hashed)
    step("build", raw, lambda: build_step(settings, state, force=force, hashed=hashed))

    manifests = customer_manifests(settings.onnx_dir)
    with connection(settings.db_path, read_only=True) as con:
        features = fingerprint(con, ["customer_features"])
        # Read again after the score step only if it ran (it rewrites customer_embeddings).
        embedding_hash: dict[str, str] = {}
        embeddings_before = (fingerprint(con, ["customer_embeddings"], embedding_hash)
                             if table_exists(con, "customer_embeddings") else None)
    model = load_manifest(manifests[-1])["model_version"] if manifests else None

    def score() -> str:
        embedding_hash.clear()
        # Stored hashes describe customer_embeddings only if nothing else rewrote it since refresh last did.
        outcome = rescore_changed(settings, trusted=not force and embeddings_before is not None
                                  and state.get("embeddings") == embeddings_before, progress=progress)
        return (f"{'all ' if outcome.full else ''}{outcome.scored:,} of {outcome.customers:,} customers re-scored"
                + (f" ({outcome.reason})" if outcome.full else f", {outcome.removed:,} removed (the others' model inputs did not change)"))

    step("score", f"{features}/{model}", score,
         skip_reason=None if manifests else f"no trained model in {settings.onnx_dir}: run `lookalike train` once")

    with connection(settings.db_path, read_only=True) as con:
        scored = table_exists(con, "customer_embeddings")
        embeddings = fingerprint(con, ["customer_embeddings"], embedding_hash) if scored else None
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
