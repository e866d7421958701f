"""The blend strategy: self-validation inside the seed on data with a known answer (numpy only),
and its pool mode (large populations) against exact scoring on the shared scored warehouse."""

from __future__ import annotations

import numpy as np

from lookalike_cli.blend import DEFAULT_WEIGHTS, BlendInputs, auc, fit_blend


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def planted(signal_in: str, n: int = 3000, positives: int = 300, seed: int = 0):
    """Positives differ from the rest only in the embeddings or only in the raw features."""
    rng = np.random.default_rng(seed)
    is_positive = np.zeros(n, dtype=bool)
    is_positive[rng.choice(n, positives, replace=False)] = True
    embeddings = rng.normal(size=(n, 16))
    raw = rng.normal(size=(n, 20))
    if signal_in == "embeddings":
        embeddings[is_positive, 0] += 3.0
    else:
        raw[is_positive, :3] += 2.0
    return BlendInputs(unit(embeddings), raw.astype(np.float32)), np.flatnonzero(is_positive)


def test_self_validation_leaves_the_default_for_a_clearly_better_weighting():
    """Raw features are noise here, so the default (raw similarity + propensity) must be replaced by
    a weighting without the raw similarity, and the hidden positives must still rank on top."""
    inputs, positive_rows = planted("embeddings")
    seed_rows, hidden_rows = positive_rows[:150], positive_rows[150:]
    unlabelled_rows = np.setdiff1d(np.arange(len(inputs)), seed_rows)

    blend = fit_blend(inputs.take(seed_rows), inputs.take(unlabelled_rows), random_seed=1)

    assert blend.weights[1] == 0.0 and blend.weights[0] > 0, blend.evidence
    assert blend.evidence["folds"] == 3 and len(blend.evidence["validation_auc"]) == 7
    scores = blend.score(inputs.take(unlabelled_rows))
    hidden = np.isin(unlabelled_rows, hidden_rows)
    assert auc(scores[hidden], scores[~hidden]) > 0.9
    # Percentiles are measured against a fixed reference: scoring a subset gives the same scores.
    assert np.allclose(blend.score(inputs.take(unlabelled_rows[:50])), scores[:50])


def test_self_validation_keeps_the_default_when_it_is_right():
    inputs, positive_rows = planted("raw")
    seed_rows, hidden_rows = positive_rows[:150], positive_rows[150:]
    unlabelled_rows = np.setdiff1d(np.arange(len(inputs)), seed_rows)
    blend = fit_blend(inputs.take(seed_rows), inputs.take(unlabelled_rows), random_seed=1)
    assert blend.weights == DEFAULT_WEIGHTS, blend.evidence
    scores = blend.score(inputs.take(unlabelled_rows))
    hidden = np.isin(unlabelled_rows, hidden_rows)
    assert auc(scores[hidden], scores[~hidden]) > 0.95


def test_small_seed_gets_the_default_and_no_raw_features_drop_the_raw_component():
    rng = np.random.default_rng(2)
    embeddings = unit(rng.normal(size=(500, 8)))
    inputs = BlendInputs(embeddings, rng.normal(size=(500, 5)).astype(np.float32))
    small = fit_blend(inputs.take(np.arange(10)), inputs.take(np.arange(10, 500)))
    assert small.evidence["folds"] == 0 and small.weights == DEFAULT_WEIGHTS
    no_raw = BlendInputs(embeddings, np.zeros((500, 0), np.float32))
    fitted = fit_blend(no_raw.take(np.arange(60)), no_raw.take(np.arange(60, 500)))
    assert fitted.weights[1] == 0.0 and all(key.split("/")[1] == "0.00" for key in fitted.evidence["validation_auc"])


def test_blend_pool_mode_agrees_with_exact_scoring(scored_warehouse, monkeypatch):
    """Above BLEND_EXACT_MAX customers the blend re-ranks an ANN pool with raw features loaded for a
    sample and the pool only; on a planted segment it must find much the same audience."""
    from lookalike_cli import expand as expansion

    seed_sql = ("select customer_id from raw.planted_segments where segment_id = 1 "
                "order by hash(customer_id) limit 80")
    args = dict(seed_sql=seed_sql, size=150, progress=lambda _: None)
    exact = expansion.expand(scored_warehouse.db_path, scored_warehouse.index_dir, **args)
    monkeypatch.setattr(expansion, "BLEND_EXACT_MAX", 0)
    pooled = expansion.expand(scored_warehouse.db_path, scored_warehouse.index_dir, **args)
    assert exact.audience["strategy"] == pooled.audience["strategy"] == "blend"
    assert exact.audience["parameters"]["blend"]["scored"] == "every customer"
    assert pooled.audience["parameters"]["blend"]["scored"] == "ANN candidate pool"
    exact_ids = set(exact.members.column("customer_id").to_pylist())
    pooled_ids = set(pooled.members.column("customer_id").to_pylist())
    assert len(pooled_ids) == 150 and len(exact_ids & pooled_ids) >= 0.7 * 150, len(exact_ids & pooled_ids)
    import duckdb

    with duckdb.connect(str(scored_warehouse.db_path), read_only=True) as con:
        segment = {r[0] for r in con.execute("select customer_id from raw.planted_segments where segment_id = 1").fetchall()}
    # 80 of the segment's customers are seeds; the rest of the segment should fill most of the audience.
    assert len(pooled_ids & segment) >= 0.6 * min(150, len(segment) - 80), len(pooled_ids & segment)


def test_campaign_shortcut_sets_issue_9s_population_and_converters(completejourney_warehouse, scored_warehouse):
    """`backtest --campaign C`: population = households C targeted, converters = those of them that
    redeemed C's coupons (the backtest intersects converters with the population)."""
    import pytest

    from lookalike_cli.backtest import campaign_sql
    from lookalike_cli.errors import LookalikeError
    from lookalike_cli.warehouse import connection
    from tests.conftest import run_cli

    with connection(completejourney_warehouse.db_path, read_only=True) as con:
        population_sql, converters_sql = campaign_sql(con, "18")
        population = {r[0] for r in con.sql(population_sql).fetchall()}
        converters = {r[0] for r in con.sql(converters_sql).fetchall()}
        with pytest.raises(LookalikeError, match="known campaigns"):
            campaign_sql(con, "999")
    assert len(population) == 1133 and len(converters & population) == 214
    # A warehouse without the campaign tables says what to load; so does giving both kinds of input.
    assert "needs raw.campaigns" in run_cli(scored_warehouse, "backtest", "--name", "x", "--campaign", "18", expect_exit=1).output
    assert "not both" in run_cli(scored_warehouse, "backtest", "--name", "x", "--campaign", "18",
                                 "--converters-sql", "select 1", expect_exit=1).output
