"""Backtests of a value-based holdout: value captured (the share of the hidden converters' value in
the top k%) beside recall, and the value-weighted strategies. The quick tests need no dbt: a
planted-cluster warehouse with the few raw-feature columns a backtest reads, so every number can be
recomputed by hand; one slow test runs the generator's value holdout on the shared scored warehouse."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from lookalike_cli.errors import ParameterError
from lookalike_cli.index.faiss_index import build_index
from lookalike_cli.settings import Settings
from lookalike_cli.trust.backtest import BACKTESTS_DDL, hits_at, publish_backtest, run_backtest, summary_table
from tests.helpers import build_planted_warehouse, cli_error, run_cli

CONVERTERS = "select customer_id from customer_features where segment_id = 3"
VALUES = "select customer_id, total_spend as value from customer_features where segment_id = 3"
SIZES = (1.0, 5.0, 20.0)


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Settings:
    """Planted clusters plus category shares and a categories table (what load_raw_features reads)."""
    root = tmp_path_factory.mktemp("backtest_value")
    db = root / "warehouse.duckdb"
    build_planted_warehouse(db, customers=2000)
    with duckdb.connect(str(db)) as con:
        con.execute("alter table customer_features add column category_shares double[]")
        con.execute("update customer_features set category_shares = [0.7, 0.3]")
        con.execute("create table categories as select range::integer as category_id, 'category ' || range as category "
                    "from range(112)")
    build_index(db, root / "flat", progress=quiet)
    return Settings.resolve(db=db, serving_db=root / "serving.duckdb", index_dir=root / "flat")


def test_value_captured_of_a_ranking_by_hand():
    # Hidden converters 10 (worth 5), 30 (3) and 40 (2); 20 is not one. Ranked 10, 30, 40 (tie: by id), 20.
    candidates, scores = np.array([10, 20, 30, 40]), np.array([0.9, 0.1, 0.5, 0.5])
    values = np.array([5.0, 0.0, 3.0, 2.0])
    np.testing.assert_allclose(hits_at(values, scores, candidates, [1, 2, 3, 4]) / values.sum(), [0.5, 0.8, 1.0, 1.0])
    np.testing.assert_allclose(hits_at(values > 0, scores, candidates, [1, 2, 3, 4]) / 3, [1 / 3, 2 / 3, 1.0, 1.0])


def test_backtest_reports_value_captured_beside_recall(world):
    result = run_backtest(world.db_path, world.index_dir, CONVERTERS, value_sql=VALUES, splits=3, strategies=("centroid",),
                          baselines=("random", "spend"), sizes_percent=SIZES, progress=quiet)
    rows = {(r["method"], r["size_percent"]): r for r in result.table.to_pylist()}
    assert {m for m, _ in rows} == {"model:centroid", "model:centroid+value", "random", "spend"}
    assert result.info["value"]["seeds_with_value"] == result.info["converters"]

    # The spend baseline ranks by the very value: recompute its value captured split by split.
    with duckdb.connect(str(world.db_path), read_only=True) as con:
        spend = dict(con.execute("select customer_id, total_spend from customer_features").fetchall())
        converters = np.array(sorted(r[0] for r in con.execute(CONVERTERS).fetchall()))
    population = np.array(sorted(spend))
    expected = []
    for split in range(3):  # the backtest's protocol: a seeded permutation, the first half is the seed
        shuffled = np.random.default_rng(split).permutation(converters)
        seed_ids, hidden = shuffled[: round(len(converters) / 2)], set(shuffled[round(len(converters) / 2):].tolist())
        candidates = sorted(set(population.tolist()) - set(seed_ids.tolist()), key=lambda c: (-spend[c], c))
        total = sum(spend[c] for c in hidden)
        expected.append([sum(spend[c] for c in candidates[: int(np.ceil(len(population) * p / 100))] if c in hidden) / total
                         for p in SIZES])
    expected = np.array(expected)
    for i, percent in enumerate(SIZES):
        row = rows[("spend", percent)]
        assert row["value_captured_mean"] == pytest.approx(expected[:, i].mean())
        assert row["value_captured_std"] == pytest.approx(expected[:, i].std(ddof=1))
        assert row["value_sql"] == VALUES
        # Ranked by value, the value comes in faster than the converters do.
        assert row["value_captured_mean"] >= row["recall_mean"] - 1e-12
    for method in ("model:centroid", "model:centroid+value", "random"):
        captured = [rows[(method, p)]["value_captured_mean"] for p in SIZES]
        assert captured == sorted(captured) and 0 <= captured[0] and captured[-1] <= 1
    assert rows[("model:centroid", 20.0)]["value_captured_mean"] > 3 * rows[("random", 20.0)]["value_captured_mean"]
    assert "value captured" in summary_table(result).column_names


def test_value_columns_are_added_to_an_older_backtests_table(world, tmp_path):
    serving = tmp_path / "serving.duckdb"
    older = BACKTESTS_DDL.replace("    value_captured_mean double, value_captured_std double,\n", "").replace("    value_sql varchar,\n", "")
    assert "value" not in older
    with duckdb.connect(str(serving)) as con:  # audience_backtests as published before value captured existed
        con.execute(older)
    result = run_backtest(world.db_path, world.index_dir, CONVERTERS, value_sql=VALUES, splits=2, strategies=("centroid",),
                          baselines=("random",), sizes_percent=SIZES, progress=quiet)
    publish_backtest(serving, result)
    with duckdb.connect(str(serving), read_only=True) as con:
        rows = con.execute("select method, value_captured_mean from audience_backtests where size_percent = 20 "
                           "order by method").fetchall()
    assert [m for m, _ in rows] == ["model:centroid", "model:centroid+value", "random"]
    assert all(0 < v <= 1 for _, v in rows)


def test_backtest_value_sql_errors_name_the_option(world, tmp_path):
    settings = Settings.resolve(db=world.db_path, serving_db=tmp_path / "serving.duckdb", index_dir=world.index_dir)
    bad = "select customer_id, -total_spend as value from customer_features"
    with pytest.raises(ParameterError, match="^value_sql gives a negative or infinite value to .* of the converters"):
        run_backtest(world.db_path, world.index_dir, CONVERTERS, value_sql=bad, progress=quiet)
    error = cli_error(settings, "backtest", "--name", "bad", "--converters-sql", CONVERTERS, "--value-sql", bad,
                      "--strategy", "centroid", "--baselines", "random")
    assert error.startswith("--value-sql gives a negative or infinite value to ")
    assert not settings.serving_db_path.exists()
    out = run_cli(settings, "backtest", "--name", "valued", "--converters-sql", CONVERTERS, "--value-sql", VALUES,
                  "--strategy", "centroid", "--baselines", "random", "--splits", "2", "--report-dir", str(tmp_path)).output
    assert "model:centroid+value" in out and "value@10%" in out
    assert "| value captured |" in (tmp_path / "backtest_valued.md").read_text()


@pytest.mark.slow
def test_value_backtest_of_planted_conversions_on_the_scored_warehouse(trust_warehouse, tmp_path):
    """The generator's value-based holdout (planted conversions with conversion_value) through the CLI:
    value captured for every method, the blend also value-weighted, read back with SQL."""
    from lookalike_cli.warehouse.generate import GeneratorConfig, planted_value_holdouts

    _, holdouts = planted_value_holdouts(GeneratorConfig())
    _, converters, _, values = next(h for h in holdouts if h[0] == "segment_response")
    run_cli(trust_warehouse, "backtest", "--name", "valued", "--converters-sql", converters, "--value-sql", values,
            "--strategy", "blend", "--baselines", "random,spend", "--splits", "2", "--report-dir", str(tmp_path))
    with duckdb.connect(str(trust_warehouse.serving_db_path), read_only=True) as con:
        rows = {(m, s): (v, r) for m, s, v, r in con.execute(
            "select method, size_percent, value_captured_mean, recall_mean from audience_backtests where name = 'valued'"
        ).fetchall()}
        assert con.execute("select distinct value_sql from audience_backtests where name = 'valued'").fetchall() == [(values,)]
    assert {m for m, _ in rows} == {"model:blend", "model:blend+value", "random", "spend"}
    assert all(0 <= v <= 1 for v, _ in rows.values())
    # The models find the hidden converters' value far above random; spend finds value faster than converters.
    for method in ("model:blend", "model:blend+value"):
        assert rows[(method, 10.0)][0] > 2 * rows[("random", 10.0)][0], rows
    assert rows[("spend", 10.0)][0] > rows[("spend", 10.0)][1], rows
