"""The Python API: the whole job as functions of one Settings, for notebooks and schedulers.

Each function is the library call a CLI command makes, with the same defaults:

    from lookalike_cli import Settings, build, train, score, build_index, expand, publish
    s = Settings.resolve(db="shop.duckdb")
    build(s); train(s, layers=3, location="word"); score(s); build_index(s)
    audience = expand(s, seed_sql="select customer_id from customer_features order by total_spend desc limit 500",
                      size="5%")          # computes, writes nothing
    publish(s, "vip", audience)           # a new version of audience `vip` in the serving file

Heavy dependencies (torch, FAISS, ONNX Runtime) load only when a function that needs them runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lookalike_cli.progress import Progress, quiet
from lookalike_cli.settings import Settings


def generate_data(settings: Settings, customers: int = 20_000, days: int = 365, seed: int = 7,
                  progress: Progress = quiet, **options) -> dict[str, int]:
    """Write generated raw tables (planted segments and conversions) into the warehouse's `raw` schema."""
    from lookalike_cli.warehouse.generate import generate_data as generate

    return generate(settings.db_path, customers=customers, days=days, seed=seed, progress=progress, **options)


def build(settings: Settings, vars: dict[str, Any] | None = None, select: str | None = None,
          exclude: str | None = "customer_embeddings+", target: str | None = None, progress: Progress = quiet) -> None:
    """`dbt build` of the bundled (or Settings.dbt_project_dir) project: features, labels, marts, tests.

    `vars` are dbt vars with dbt's semantics, e.g. {"as_of_date": "2025-06-30"}."""
    from lookalike_cli.audiences.refresh import forget_aggregates
    from lookalike_cli.warehouse.dbt_runner import run_dbt

    forget_aggregates(settings)  # the order aggregates are rebuilt in full: refresh's record of them is void
    args = ["build", *(["--select", select] if select else []), *(["--exclude", exclude] if exclude else []),
            *(["--target", target] if target else []), *(["--vars", json.dumps(vars)] if vars else [])]
    run_dbt(settings, args, echo=progress)


def train(settings: Settings, name: str | None = None, progress: Progress = quiet, **options) -> Path:
    """Train the two-tower encoder (options: lookalike_cli.model.config.TrainOptions); returns the manifest path.

    When `lookalike refresh` built the serving side on raw rows the training tables have not seen, the
    training side is built first (refresh leaves it: it does not retrain)."""
    from lookalike_cli.audiences.refresh import ensure_training_current
    from lookalike_cli.model.train import train as train_model

    if settings.db_path.exists():
        ensure_training_current(settings, progress=progress)

    return train_model(settings.db_path, settings.onnx_dir, name=name, progress=progress, **options)


def score(settings: Settings, model: str | None = None, quantize: str = "none", progress: Progress = quiet) -> dict:
    """Build customer_embeddings with the latest (or the named) model."""
    from lookalike_cli.model.scoring import score as score_customers

    return score_customers(settings, model=model, quantize=quantize, echo=progress)


def build_index(settings: Settings, progress: Progress = quiet, **options):
    """Build the FAISS index over customer_embeddings (options: see `lookalike build-index --help`)."""
    from lookalike_cli.index.faiss_index import build_index as build

    return build(settings.db_path, settings.index_dir, progress=progress, **options)


def expand(settings: Settings, seed_sql: str | None = None, seed_table: str | None = None,
           seed_file: str | Path | None = None, size: str | int | None = None, progress: Progress = quiet,
           seed_value_sql: str | None = None, **options):
    """Compute a lookalike audience of a seed (nothing is written); returns an Expansion (members, audience row).

    `seed_value_sql` (SQL returning customer_id, value) makes a value-based seed, each seed weighted by
    its value; other options are expand's (strategy, exclude_sql, min_similarity, ...)."""
    from lookalike_cli.audiences.expand import expand as compute

    return compute(settings.db_path, settings.index_dir, seed_sql=seed_sql, seed_table=seed_table, seed_file=seed_file,
                   seed_value_sql=seed_value_sql, size=size, progress=progress, **options)


def publish(settings: Settings, name: str, expansion, progress: Progress = quiet) -> dict:
    """Publish an Expansion as a new version of audience `name` (serving file); returns the audiences row."""
    from lookalike_cli.audiences.catalog import publish_expansion

    return publish_expansion(settings.db_path, settings.serving_db_path, name, expansion, progress=progress,
                             on_warning=progress)


def show(settings: Settings, name: str, version: int | None = None, limit: int = 10):
    """The audiences row and the first `limit` members of a published audience."""
    from lookalike_cli.audiences.catalog import show_audience

    return show_audience(settings.serving_db_path, name, version=version, limit=limit)


def recommend(settings: Settings, model: str = "persona-lightgcn", k: int = 10, compare: bool = False, publish: bool = True,
              progress: Progress = quiet, **options):
    """Train a recommender on the customer(-persona)-item graph, evaluate it on the held-out window and (with `publish`)
    replace customer_recommendations in the serving file; returns a RecommendResult (options: RecommendOptions)."""
    from lookalike_cli.personas.recommend import RecommendOptions, recommend as run

    return run(settings.db_path, settings.serving_db_path if publish else None, RecommendOptions(model=model, k=k, **options),
               compare=compare, progress=progress)
