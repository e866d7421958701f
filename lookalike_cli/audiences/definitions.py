"""Audiences as code: a YAML file of audience definitions, validated as a whole, then published.

    audiences:
      - name: big_spenders
        seed_sql: select customer_id from customer_features order by total_spend desc limit 500
        value_sql: select customer_id, total_spend as value from customer_features   # optional: value-based seed
        size: 5%                 # a count or a share; or min_similarity; or min_expected_lift; or rings
        exclude_features: [gender, age_band]   # optional: columns kept out of the ranking (blend)
        strategy: blend          # and any other expand option: exclude_sql, seed_table, seed_file, seed_persona, ...
        holdout: 10%             # optional: held out of activation, for `lookalike measure`
        rings: [1%, 2%, 5%]      # optional: disjoint tiers in one version

`apply_definitions` checks every definition first (unknown keys, duplicate names, bad sizes,
seed SQL that fails, missing tables and files) and raises one error listing every problem,
before anything is computed; then it computes every audience, and only then publishes them,
each as a new version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.progress import Progress, quiet
from lookalike_cli.settings import Settings

SEED_KEYS = ("seed_sql", "seed_table", "seed_file", "seed_persona")
EXPAND_KEYS = ("size", "min_similarity", "strategy", "exclude_sql", "k_per_seed", "seed", "min_expected_lift",
               "exclude_features")
KEYS = ("name", *SEED_KEYS, "value_sql", *EXPAND_KEYS, "holdout", "rings", "export_parquet")
# Keys of the file that name an expand() parameter differently: how its errors spell them.
FILE_NAMES = {"seed_value_sql": "value_sql"}


@dataclass
class AudienceDefinition:
    name: str
    options: dict                      # expand() keyword arguments (seed source, size, strategy, ...)
    rings: list[float] | None = None
    holdout: float | None = None
    export_parquet: str | None = None


@dataclass
class AppliedAudience:
    definition: AudienceDefinition
    row: dict                          # the audiences row published
    diff: object | None = None         # AudienceDiff against the previous version (None for a first version)
    warnings: list[str] = field(default_factory=list)


def read_definitions_file(path: str | Path) -> list[dict]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LookalikeError(f"No audiences file at {path}.")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise LookalikeError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("audiences"), list):
        raise LookalikeError(f"{path} must have a top-level `audiences:` list (see examples/audiences.yml).")
    unknown = sorted(set(document) - {"audiences"})
    if unknown:
        raise LookalikeError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; only `audiences:` is read.")
    return document["audiences"]


def validate_definitions(entries: list, settings: Settings, where: str = "audiences file") -> list[AudienceDefinition]:
    """Every definition checked against the warehouse; one LookalikeError listing every problem."""
    from lookalike_cli.audiences.expand import STRATEGIES, check_exclusion, feature_list, is_share, parse_size
    from lookalike_cli.audiences.raw_features import check_excludable
    from lookalike_cli.audiences.reach import check_min_expected_lift
    from lookalike_cli.audiences.tiers import parse_holdout, parse_rings, ring_size
    from lookalike_cli.warehouse.connection import connection, require_table, table_exists

    problems: list[str] = []
    definitions: list[AudienceDefinition] = []
    seen: set[str] = set()
    with connection(settings.db_path, read_only=True) as con:
        require_table(con, "customer_embeddings", "Build it with `lookalike train` and `lookalike score`.")
        population = con.execute("select count(*) from customer_embeddings").fetchall()[0][0]

        def runs(sql: str) -> str | None:
            try:
                con.execute(f"select count(*) from ({sql}) as checked").fetchall()
                return None
            except Exception as exc:  # duckdb.Error and its kin: report, don't raise
                return str(exc).splitlines()[0]

        for position, entry in enumerate(entries, start=1):
            label = f"audience #{position}"
            if not isinstance(entry, dict):
                problems.append(f"{label}: expected a mapping of options, got {type(entry).__name__}.")
                continue
            name = entry.get("name")
            if not isinstance(name, str) or not name.strip():
                problems.append(f"{label}: `name` is required and must be a non-empty string.")
                name = None
            else:
                label = f"audience {name!r}"
                if name in seen:
                    problems.append(f"{label}: the name is used twice.")
                seen.add(name)
            unknown = sorted(set(entry) - set(KEYS))
            if unknown:
                problems.append(f"{label}: unknown key(s) {', '.join(unknown)} (known: {', '.join(KEYS)}).")
            sources = [k for k in SEED_KEYS if entry.get(k)]
            if len(sources) != 1:
                problems.append(f"{label}: give exactly one seed source of {', '.join(SEED_KEYS)}"
                                + (f" (got {', '.join(sources)})." if sources else "."))
            options = {k: entry[k] for k in (*SEED_KEYS, *EXPAND_KEYS) if entry.get(k) is not None}
            if entry.get("seed_sql") and (error := runs(entry["seed_sql"])):
                problems.append(f"{label}: seed_sql fails: {error}")
            if entry.get("exclude_sql") and (error := runs(entry["exclude_sql"])):
                problems.append(f"{label}: exclude_sql fails: {error}")
            if entry.get("value_sql"):
                options["seed_value_sql"] = entry["value_sql"]
                if error := runs(entry["value_sql"]):
                    problems.append(f"{label}: value_sql fails: {error}")
            if entry.get("seed_table") and not table_exists(con, str(entry["seed_table"])):
                problems.append(f"{label}: seed_table {entry['seed_table']!r} does not exist in {settings.db_path.name}.")
            if entry.get("seed_file") and not Path(entry["seed_file"]).is_file():
                problems.append(f"{label}: seed_file {entry['seed_file']!r} does not exist.")
            if entry.get("seed_persona") and not table_exists(con, "customer_personas"):
                problems.append(f"{label}: seed_persona needs customer_personas: run `lookalike personas label` and `propagate`.")
            strategy = entry.get("strategy", "blend")
            if strategy not in STRATEGIES:
                problems.append(f"{label}: strategy {strategy!r} is not one of {', '.join(STRATEGIES)}.")
            rings = holdout = None
            try:
                rings = parse_rings(entry["rings"]) if entry.get("rings") is not None else None
            except LookalikeError as exc:
                problems.append(f"{label}: {exc}")
            try:
                holdout = parse_holdout(entry["holdout"]) if entry.get("holdout") is not None else None
            except LookalikeError as exc:
                problems.append(f"{label}: {exc}")
            by_lift = entry.get("min_expected_lift") is not None
            if rings:
                if entry.get("size") is not None or entry.get("min_similarity") is not None or by_lift:
                    problems.append(f"{label}: give rings or size/min_similarity/min_expected_lift, not both "
                                    "(the outer ring is the size).")
                options["size"] = ring_size(rings, population)
            elif by_lift and (entry.get("size") is not None or entry.get("min_similarity") is not None):
                problems.append(f"{label}: give min_expected_lift alone, without size or min_similarity: it chooses the size.")
            elif entry.get("size") is None and entry.get("min_similarity") is None and not by_lift:
                problems.append(f"{label}: give size (a count or a share, e.g. 5%), min_similarity, min_expected_lift, or rings.")
            try:
                if by_lift:
                    check_min_expected_lift(entry["min_expected_lift"])
            except LookalikeError as exc:
                problems.append(f"{label}: {exc}")
            try:
                columns = feature_list(entry.get("exclude_features"))
                if columns:
                    check_exclusion(columns, strategy, entry.get("min_similarity"))
                    check_excludable(con, columns)
            except LookalikeError as exc:
                problems.append(f"{label}: {exc}")
            if entry.get("size") is not None:
                try:
                    target = parse_size(entry["size"], population)
                    # A share is capped at the candidates (100% = every candidate); a count must leave room for the seed.
                    if target is not None and not is_share(entry["size"]) and target >= population:
                        problems.append(f"{label}: size {entry['size']} is {target:,} customers, not fewer than the "
                                        f"population of {population:,}.")
                except LookalikeError as exc:
                    problems.append(f"{label}: {exc}")
            if name is not None:
                definitions.append(AudienceDefinition(name=name, options=options, rings=rings, holdout=holdout,
                                                      export_parquet=entry.get("export_parquet")))
    if problems:
        raise LookalikeError(f"{where} has {len(problems)} problem(s); nothing was published:\n"
                             + "\n".join(f"  - {p}" for p in problems))
    return definitions


def apply_definitions(settings: Settings, path: str | Path, progress: Progress = quiet,
                      on_warning: Progress = quiet) -> list[AppliedAudience]:
    """Validate every definition, compute every audience, then publish each as a new version."""
    from lookalike_cli.audiences.catalog import diff_audience, publish_expansion
    from lookalike_cli.audiences.expand import expand
    from lookalike_cli.audiences.reach import latest_backtest
    from lookalike_cli.audiences.seeds import persona_seed_sql
    from lookalike_cli.audiences.tiers import split_expansion
    from lookalike_cli.index.faiss_index import load_index

    definitions = validate_definitions(read_definitions_file(path), settings, where=str(path))
    # One index for every audience (each expand checks its model version): read once, and held once while
    # the computed audiences wait to be published (each keeps a reference for its seed diagnostics).
    index = load_index(settings.index_dir) if definitions else None
    computed = []
    for definition in definitions:
        progress(f"== {definition.name}")
        options = dict(definition.options)
        if options.get("seed_persona"):
            options["seed_sql"] = persona_seed_sql(settings.db_path, options.pop("seed_persona"))
        try:
            backtest = latest_backtest(settings.serving_db_path, definition.name, options.get("strategy", "blend"))
            result = expand(settings.db_path, settings.index_dir, progress=progress, reach_backtest=backtest,
                            loaded_index=index, **options)
        except ParameterError as exc:  # the file's keys are expand's parameter names: no flag to show
            raise LookalikeError(f"{path}: audience {definition.name!r}: {exc.render(FILE_NAMES)}") from exc
        computed.append((definition, split_expansion(result, definition.name, definition.rings, definition.holdout,
                                                     seed=int(options.get("seed", 0)))))
    applied = []
    for definition, result in computed:
        warnings: list[str] = []

        def collect(message: str) -> None:
            warnings.append(message)
            on_warning(message)

        row = publish_expansion(settings.db_path, settings.serving_db_path, definition.name, result,
                                seed=int(definition.options.get("seed", 0)), export_parquet=definition.export_parquet,
                                progress=progress, on_warning=collect)
        diff = diff_audience(settings.serving_db_path, definition.name) if row["version"] > 1 else None
        applied.append(AppliedAudience(definition, row, diff, warnings))
    return applied
