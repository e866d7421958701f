"""The fault suite's starting point: the scored warehouse with one audience published, so every kill has
something earlier to lose."""

from __future__ import annotations

import pytest

from lookalike_cli.settings import Settings
from tests.helpers import copy_warehouse, run_cli

SEED_SQL = "select customer_id from customer_features order by total_spend desc limit 100"


@pytest.fixture(scope="session")
def published_warehouse(scored_warehouse, tmp_path_factory) -> Settings:
    """scored_warehouse + audience `vip` v1 in the serving file. Read-only: tests copy it (`private_copy`)."""
    settings = copy_warehouse(scored_warehouse, tmp_path_factory.mktemp("published"), "published")
    run_cli(settings, "expand", "--name", "vip", "--seed-sql", SEED_SQL, "--size", "5%", "--strategy", "centroid")
    return settings


@pytest.fixture
def private_copy(published_warehouse, tmp_path) -> Settings:
    return copy_warehouse(published_warehouse, tmp_path, "w")
