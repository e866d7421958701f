"""The blend strategy: self-validation inside the seed on data with a known answer (numpy only),
and its pool mode (large populations) against exact scoring on the shared scored warehouse."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike_cli.audiences.blend import BlendInputs, auc, fit_blend

SIMILARITY = ("embedding", "raw", "propensity", "propensity_raw")
ACTIVITY = ("activity", "rfm", "spend")


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def planted(signal_in: str, n: int = 3000, positives: int = 300, seed: int = 0):
    """Positives differ from the rest only in the embeddings or only in the raw features (no names:
    only the embedding, raw-cosine and the two propensity components exist)."""
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


def shop(converters: str, n: int = 4000, positives: int = 300, categories: int = 30, seed: int = 0):
    """A small shop laid out as `load_raw_features` lays it out (log1p numerics, category shares,
    z-scored with their scale, named columns), with converters defined purely by activity (the
    most active customers, noisily) or purely by category preference (a taste for 3 categories)."""
    rng = np.random.default_rng(seed)
    lines = np.round(np.exp(rng.normal(3.0, 1.0, n)))
    orders = np.maximum(1, np.round(lines / rng.uniform(2, 6, n)))
    spend = lines * np.exp(rng.normal(1.5, 0.5, n))
    recency = rng.exponential(30, n) / (1 + orders / 10)
    taste = rng.dirichlet(np.full(categories, 0.3), n)
    if converters == "activity":
        utility = np.log1p(lines) + rng.normal(0, 0.5, n)
    else:
        utility = taste[:, :3].sum(axis=1) + rng.normal(0, 0.1, n)
    rows = np.argsort(-utility)[:positives]
    if converters == "preference":
        taste[rows, :3] += 0.3
        taste /= taste.sum(axis=1, keepdims=True)
    dense = np.log1p(np.column_stack([orders, lines, spend, recency]))
    stacked = np.hstack([dense, taste])
    scale = (stacked.mean(axis=0), stacked.std(axis=0))
    names = ("order_count", "order_line_count", "total_spend", "recency_days") + tuple(f"category:c{i}" for i in range(categories))
    embeddings = unit(taste @ rng.normal(size=(categories, 16)) + rng.normal(0, 0.3, (n, 16)))
    inputs = BlendInputs(embeddings, ((stacked - scale[0]) / scale[1]).astype(np.float32), names, scale)
    return inputs, rng.permutation(rows)


def split(inputs: BlendInputs, positive_rows: np.ndarray):
    seed_rows, hidden_rows = positive_rows[: len(positive_rows) // 2], positive_rows[len(positive_rows) // 2 :]
    unlabelled_rows = np.setdiff1d(np.arange(len(inputs)), seed_rows)
    return seed_rows, unlabelled_rows, np.isin(unlabelled_rows, hidden_rows)


def test_self_validation_drops_a_component_that_is_noise():
    """Raw features are noise here, so the raw similarity gets (almost) no weight, the embedding
    cosine most of it, and the hidden positives must still rank on top."""
    inputs, positive_rows = planted("embeddings")
    seed_rows, unlabelled_rows, hidden = split(inputs, positive_rows)

    blend = fit_blend(inputs.take(seed_rows), inputs.take(unlabelled_rows), random_seed=1)

    weights = blend.evidence["weights"]
    assert set(weights) == set(SIMILARITY) and abs(sum(blend.weights) - 1.0) < 1e-9
    assert weights["raw"] <= 0.1 and weights["embedding"] >= 0.5, blend.evidence
    assert weights["propensity_raw"] <= 0.1, blend.evidence  # the classifier without the embeddings: noise too
    assert blend.evidence["folds"] == 3 and set(blend.evidence["validation_auc"]) == set(SIMILARITY)
    assert blend.evidence["validation_auc"]["embedding"] > blend.evidence["validation_auc"]["raw"] + 0.3
    scores = blend.score(inputs.take(unlabelled_rows))
    assert auc(scores[hidden], scores[~hidden]) > 0.9
    # Percentiles are measured against a fixed reference: scoring a subset gives the same scores.
    assert np.allclose(blend.score(inputs.take(unlabelled_rows[:50])), scores[:50])


def test_self_validation_picks_activity_when_converters_are_the_most_active():
    inputs, positive_rows = shop("activity")
    seed_rows, unlabelled_rows, hidden = split(inputs, positive_rows)
    blend = fit_blend(inputs.take(seed_rows), inputs.take(unlabelled_rows), random_seed=1)
    weights = blend.evidence["weights"]
    assert set(weights) == {*SIMILARITY, *ACTIVITY, "shares_lr", "shares_gbm"}
    # Activity (alone, or inside the classifiers that see log order lines) carries the blend; the
    # embedding (taste, which says nothing here) gets little. (Raw cosine sees activity too: its
    # standardised columns include log order lines, so it is not ruled out.)
    assert weights["activity"] >= 0.4 and weights["activity"] == max(weights.values()), blend.evidence
    assert sum(weights[c] for c in (*ACTIVITY, "shares_lr", "shares_gbm")) >= 0.7, blend.evidence
    assert weights["embedding"] <= 0.1, blend.evidence
    validation = blend.evidence["validation_auc"]
    assert validation["activity"] > validation["raw"] and validation["activity"] > validation["embedding"] + 0.2
    scores = blend.score(inputs.take(unlabelled_rows))
    activity = inputs.take(unlabelled_rows).static("activity")
    assert auc(scores[hidden], scores[~hidden]) >= auc(activity[hidden], activity[~hidden]) - 0.01


def test_self_validation_picks_preference_when_converters_share_a_taste():
    inputs, positive_rows = shop("preference")
    seed_rows, unlabelled_rows, hidden = split(inputs, positive_rows)
    blend = fit_blend(inputs.take(seed_rows), inputs.take(unlabelled_rows), random_seed=1)
    weights = blend.evidence["weights"]
    assert sum(weights[c] for c in ACTIVITY) <= 0.1, blend.evidence
    assert sum(weights[c] for c in ("embedding", "raw", "propensity", "propensity_raw", "shares_lr", "shares_gbm")) >= 0.9
    validation = blend.evidence["validation_auc"]
    assert max(validation[c] for c in ACTIVITY) < 0.65 < validation["raw"]
    scores = blend.score(inputs.take(unlabelled_rows))
    assert auc(scores[hidden], scores[~hidden]) > 0.9


def test_small_seed_gets_equal_weights_and_no_raw_features_drop_the_raw_components():
    inputs, _ = shop("activity", n=600)
    small = fit_blend(inputs.take(np.arange(10)), inputs.take(np.arange(10, 600)))
    assert small.evidence["folds"] == 0 and len(set(small.weights)) == 1 and len(small.weights) == 9
    no_raw = BlendInputs(inputs.embeddings, np.zeros((600, 0), np.float32))
    fitted = fit_blend(no_raw.take(np.arange(60)), no_raw.take(np.arange(60, 600)))
    assert set(fitted.evidence["weights"]) == {"embedding", "propensity"} and fitted.evidence["folds"] == 3
    without_embeddings = fit_blend(inputs.take(np.arange(60)), inputs.take(np.arange(60, 600)), embeddings=False)
    # Without the embeddings, propensity is on the raw features already: no second copy of it.
    assert not {"embedding", "propensity_raw"} & set(without_embeddings.evidence["weights"])
    assert without_embeddings.components.models["propensity"].coef_.shape[1] == inputs.raw.shape[1]


@pytest.mark.slow
@pytest.mark.parametrize("max_categories", [None, 40], ids=["every-category", "screened-to-40"])
def test_sampled_blend_scores_everyone_like_the_exact_path(scored_warehouse, monkeypatch, max_categories):
    """Above BLEND_EXACT_MAX customers the blend is fitted on a sample and scores every customer batch by
    batch (shares sparse, embeddings from the index); the score of a customer must be what the dense
    path gives the same fitted blend, and on a planted segment it must find much the same audience.
    With more categories than BLEND_MAX_CATEGORIES (here 40 of the generator's 300) the same holds on
    the screened share columns, which both paths must use alike."""
    import duckdb

    from lookalike_cli.audiences import expand as expansion
    from lookalike_cli.audiences.raw_features import screened_categories, with_columns
    from lookalike_cli.audiences.seeds import excluded_ids, resolve_seeds
    from lookalike_cli.index.faiss_index import load_index

    if max_categories is not None:
        monkeypatch.setattr(expansion, "BLEND_MAX_CATEGORIES", max_categories)

    seed_sql = ("select customer_id from raw.planted_segments where segment_id = 1 "
                "order by hash(customer_id) limit 80")
    args = dict(seed_sql=seed_sql, size=150, progress=lambda _: None)
    exact = expansion.expand(scored_warehouse.db_path, scored_warehouse.index_dir, **args)
    monkeypatch.setattr(expansion, "BLEND_EXACT_MAX", 0)
    sampled = expansion.expand(scored_warehouse.db_path, scored_warehouse.index_dir, **args)
    assert exact.audience["strategy"] == sampled.audience["strategy"] == "blend"
    assert exact.audience["parameters"]["blend"]["scored"] == sampled.audience["parameters"]["blend"]["scored"] == "every customer"
    exact_ids = set(exact.members.column("customer_id").to_pylist())
    sampled_ids = set(sampled.members.column("customer_id").to_pylist())
    assert len(sampled_ids) == 150 and len(exact_ids & sampled_ids) >= 0.7 * 150, len(exact_ids & sampled_ids)

    # The same fitted blend, the whole population scored densely: the members' scores and order must match.
    index = load_index(scored_warehouse.index_dir)
    with duckdb.connect(str(scored_warehouse.db_path), read_only=True) as con:
        seeds = resolve_seeds(con, seed_sql, None, None)
        opted_out, _ = excluded_ids(con, None)  # raw.opt_outs: never members
        ids, vectors, raw, _ = expansion.blend_population(con, seeds, 0, index)
        every_column_scale = raw.scale
        if max_categories is not None:
            kept = screened_categories(raw, seeds.ids, max_categories)
            assert len(kept) == max_categories
            raw = with_columns(raw, [n for n in raw.names if not n.startswith("category:") or n in kept])
        fitted = expansion.fit_blend_for(seeds, ids, vectors, raw, 0)
        everyone = con.sql("select customer_id from customer_embeddings order by customer_id").fetchnumpy()["customer_id"]
        population = with_columns(load_raw_features_for(con, everyone, every_column_scale), raw.names)
        segment = {r[0] for r in con.execute("select customer_id from raw.planted_segments where segment_id = 1").fetchall()}
    assert sampled.audience["parameters"]["blend"]["weights"] == fitted.evidence["weights"]
    screening = sampled.audience["parameters"]["blend"].get("categories")
    assert screening == (None if max_categories is None else {
        "used": max_categories, "of": 300, "chosen": "largest |mean z-score| of the seed's category shares"})
    assert exact.audience["parameters"]["blend"].get("categories") == screening
    assert fitted.components.models["propensity"].coef_.shape[1] == vectors.shape[1] + len(raw.names)
    dense = dict(zip(population.ids, fitted.score(expansion.blend_inputs(population.ids, index.vectors(population.ids), population))))
    members = sampled.members.to_pydict()
    assert np.allclose([dense[i] for i in members["customer_id"]], members["score"], rtol=0, atol=1e-12)
    blocked = set(seeds.ids.tolist()) | set(opted_out.tolist())
    assert opted_out.size  # the generated data has opt-outs: the check below must leave them out as expand does
    eligible = sorted((s, i) for i, s in dense.items() if i not in blocked)
    assert min(members["score"]) >= eligible[-150][0] - 1e-12  # nobody the dense ranking puts higher is missing
    # 80 of the segment's customers are seeds; the rest of the segment should fill most of the audience.
    assert len(sampled_ids & segment) >= 0.6 * min(150, len(segment) - 80), len(sampled_ids & segment)


def test_screened_categories_keep_the_shares_that_set_the_seed_apart():
    """Above the limit, the kept share columns are those whose seed mean z-score is farthest from 0, over- or
    under-bought, in the matrix's order; at or under the limit nothing is screened."""
    from lookalike_cli.audiences.raw_features import RawFeatures, screened_categories, with_columns

    rng = np.random.default_rng(3)
    n, categories = 2000, 30
    matrix = rng.normal(size=(n, 2 + categories)).astype(np.float32)
    seeds = np.arange(100)
    matrix[seeds, 2 + 7] += 2.0    # bought far more by the seed
    matrix[seeds, 2 + 19] -= 1.5   # far less
    matrix[seeds, 2 + 3] += 0.8
    names = ["order_count", "total_spend"] + [f"category:c{i}" for i in range(categories)]
    raw = RawFeatures(ids=np.arange(n), matrix=matrix, names=names, activity=np.zeros(n), spend=np.zeros(n),
                      lines=np.zeros(n), shares=None, scale=(np.zeros(len(names)), np.ones(len(names))))
    assert screened_categories(raw, seeds, categories) is None
    assert screened_categories(raw, seeds, 3) == ["category:c3", "category:c7", "category:c19"]
    weights = np.r_[np.zeros(50), np.ones(50)]  # a value-based seed: only its second half counts
    matrix[50:100, 2 + 3] += 5.0
    assert screened_categories(raw, seeds, 1, weights) == ["category:c3"]
    narrowed = with_columns(raw, ["total_spend", "category:c7"])
    assert narrowed.names == ["total_spend", "category:c7"] and narrowed.matrix.shape == (n, 2)
    assert np.array_equal(narrowed.matrix[:, 1], matrix[:, 2 + 7]) and len(narrowed.scale[0]) == 2


def load_raw_features_for(con, ids, scale):
    from lookalike_cli.audiences.raw_features import load_raw_features

    return load_raw_features(con, ids=ids, scale=scale)


def test_tree_evaluator_matches_lightgbm_predict():
    """shares_gbm is scored by numpy over the trees' own split columns; it must give LightGBM's raw
    scores to the bit, NaN (the default direction) included."""
    from lookalike_cli.audiences.blend import Trees, fit_gbm

    rng = np.random.default_rng(4)
    x = np.where(rng.random((3000, 40)) < 0.2, rng.random((3000, 40)), 0.0)
    x[:, -1] = np.log1p(rng.exponential(30, 3000))
    y = (x[:, :3].sum(axis=1) + 0.05 * x[:, -1] + rng.normal(0, 0.2, 3000) > 0.5).astype(float)
    model = fit_gbm(x, y, random_seed=0)
    trees = Trees.from_booster(model.booster_)
    assert 0 < len(trees.features) < x.shape[1]
    x[::11, trees.features[0]] = np.nan
    assert np.array_equal(trees.raw_score(x[:, trees.features]), model.predict(x, raw_score=True))


def test_sparse_scoring_matches_dense_scoring():
    """Scoring customers from z-scored head columns + sparse stored shares (how expand scores a large
    population) gives every component the same value as scoring the dense z-scored matrix."""
    from scipy import sparse

    from lookalike_cli.audiences.blend import SparseRows
    from lookalike_cli.audiences.raw_features import CLIP, zscore_in_place

    rng = np.random.default_rng(5)
    n, categories = 3000, 25
    lines = np.round(np.exp(rng.normal(3.0, 1.0, n)))
    orders = np.maximum(1, np.round(lines / rng.uniform(2, 6, n)))
    numerics = np.log1p(np.column_stack([orders, lines, lines * np.exp(rng.normal(1.5, 0.5, n)), rng.exponential(30, n)]))
    shares = np.where(rng.random((n, categories)) < 0.15, rng.dirichlet(np.full(categories, 0.3), n), 0.0)
    shares[:, 0] = np.where(rng.random(n) < 0.002, 1.0, 0.0)  # a rare category: its z-scores clip at CLIP
    matrix = np.hstack([numerics, shares]).astype(np.float32)
    scale = (matrix.mean(axis=0, dtype=np.float64), matrix.std(axis=0, dtype=np.float64))
    z = zscore_in_place(matrix.copy(), scale)
    assert z[:, 4].max() == CLIP
    names = ("order_count", "order_line_count", "total_spend", "recency_days") + tuple(f"category:c{i}" for i in range(categories))
    embeddings = unit(shares @ rng.normal(size=(categories, 16)) + rng.normal(0, 0.3, (n, 16)))
    inputs = BlendInputs(embeddings, z, names, scale)
    positives = np.argsort(-(shares[:, 1:4].sum(axis=1) + rng.normal(0, 0.1, n)))[:200]
    unlabelled = np.setdiff1d(np.arange(n), positives)
    blend = fit_blend(inputs.take(positives), inputs.take(unlabelled), random_seed=2)
    components = blend.components
    assert components.gbm_trees is not None
    directions = components.embedding_directions()
    products = np.column_stack([embeddings.astype(np.float64) @ directions, (embeddings.astype(np.float64) ** 2).sum(axis=1)])
    rows = SparseRows(z[:, :4], sparse.csr_matrix(shares.astype(np.float32)), products)
    dense = components.raw_scores(inputs)
    assert np.allclose(components.sparse_raw_scores(rows, components.active, inputs), dense, rtol=0, atol=2e-9)
    assert np.allclose(blend.score_sparse(rows, inputs), blend.score(inputs), rtol=0, atol=1e-6)


def test_selection_prefers_the_component_that_ranks_seeds_at_the_top():
    """Component A shifts every positive a little (the better plain AUC); component B puts a third of
    the positives above almost every negative and leaves the rest random (worse plain AUC, far better
    where an audience is cut). The top-weighted criterion must choose B; plain AUC would choose A."""
    from lookalike_cli.audiences.blend import greedy_selection, top_weighted_auc

    rng = np.random.default_rng(3)
    negatives = rng.uniform(size=(4000, 2))
    positives = np.column_stack([
        rng.uniform(0.4, 0.98, 300),                                      # A: everyone somewhat higher
        np.where(np.arange(300) < 100, rng.uniform(0.97, 1.0, 300), rng.uniform(size=300)),  # B: a third on top
    ])
    assert auc(positives[:, 0], negatives[:, 0]) > auc(positives[:, 1], negatives[:, 1])
    assert top_weighted_auc(positives[:, 1], negatives[:, 1]) > top_weighted_auc(positives[:, 0], negatives[:, 0])
    counts = greedy_selection(positives, negatives)
    assert counts[1] > counts[0]
