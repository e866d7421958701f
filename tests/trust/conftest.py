"""Fixtures of the trust tests: a private copy of the shared scored warehouse per module (the
tests write backtests, audiences and explanations into it) and the planted segment they target."""

from __future__ import annotations

import duckdb
import pytest

from tests.helpers import copy_warehouse


@pytest.fixture(scope="module")
def trust_warehouse(scored_warehouse, tmp_path_factory):
    # The shared fixture ran train (3 layers, word location), score and build-index.
    return copy_warehouse(scored_warehouse, tmp_path_factory.mktemp("trust"))


@pytest.fixture(scope="module")
def segment(trust_warehouse) -> int:
    """A mid-sized planted segment (the same choice as the end-to-end test)."""
    with duckdb.connect(str(trust_warehouse.db_path), read_only=True) as con:
        return con.execute(
            "select segment_id from raw.planted_segments group by segment_id order by count(*) desc limit 1 offset 3"
        ).fetchall()[0][0]
