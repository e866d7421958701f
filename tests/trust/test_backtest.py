"""Trust in an audience, through the CLI on generated data: backtest against baselines,
seed diagnostics, member explanations and audience overlap, each read back with SQL from
the serving file."""

from __future__ import annotations

import json

import duckdb
import pytest

from tests.helpers import copy_warehouse, run_cli


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


def serving(settings) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(settings.serving_db_path), read_only=True)


def test_backtest_model_beats_random(trust_warehouse, segment, tmp_path):
    from lookalike_cli.trust.backtest import BASELINES

    result = run_cli(
        trust_warehouse, "backtest", "--name", "planted", "--splits", "2", "--report-dir", str(tmp_path),
        "--converters-sql", f"select customer_id from raw.planted_segments where segment_id = {segment}",
        "--baselines", ",".join(BASELINES),
    )
    assert "model:blend" in result.output and "raw-classifier" in result.output and "raw-gbm" in result.output
    with serving(trust_warehouse) as con:
        rows = {(m, s): (lift, auc, recall, n) for m, s, lift, auc, recall, n in con.execute("""
            select method, size_percent, lift_mean, auc_mean, recall_mean, splits
            from audience_backtests where name = 'planted'
        """).fetchall()}
        parameters = json.loads(con.execute("select any_value(parameters) from audience_backtests where name = 'planted'").fetchall()[0][0])
    methods = {m for m, _ in rows}
    assert methods == {"model:blend", "model:blend-no-embedding", "model:centroid", "random", "activity", "spend", "rfm", "raw-shares-cosine",
                       "raw-cosine", "raw-classifier", "raw-gbm"}
    assert {s for _, s in rows} == {1.0, 2.0, 5.0, 10.0, 20.0}
    model_lift, model_auc, _, splits = rows[("model:centroid", 5.0)]
    random_lift, random_auc, _, _ = rows[("random", 5.0)]
    assert splits == 2
    assert model_lift > max(3.0, 2 * random_lift), (model_lift, random_lift)
    assert model_auc > random_auc + 0.2
    # The default strategy (blend) beats random by far and is at least as good as the strongest
    # baseline, whichever it is (issue 16's goal, at test scale: AUC within 0.005, lift@5% within 0.25).
    blend_lift, blend_auc, _, _ = rows[("model:blend", 5.0)]
    assert blend_lift > 5 * max(random_lift, 1.0) and blend_auc > 0.95, (blend_lift, blend_auc)
    best_auc = max(rows[(b, 5.0)][1] for b in BASELINES)
    best_lift = max(rows[(b, 5.0)][0] for b in BASELINES)
    assert blend_auc >= best_auc - 0.005 and blend_lift >= best_lift - 0.25, (blend_auc, best_auc, blend_lift, best_lift)
    assert blend_lift > rows[("model:centroid", 5.0)][0]
    # Activity does not define a planted segment: the activity ranking is far below the blend.
    assert rows[("activity", 5.0)][1] < blend_auc - 0.2
    # The new baselines ran: category-share cosine finds the planted segment, spend does not.
    assert rows[("raw-shares-cosine", 5.0)][0] > 5 * max(random_lift, 1.0)
    assert rows[("spend", 5.0)][1] < 0.8
    # The blend's per-split weights (chosen by self-validation inside each seed) are stored.
    assert len(parameters["blend_weights_per_split"]) == 2
    assert all(abs(sum(w.values()) - 1.0) < 0.01 for w in parameters["blend_weights_per_split"])  # rounded to 3 digits
    # Recall can only grow with the audience size.
    recalls = [rows[("model:centroid", s)][2] for s in (1.0, 2.0, 5.0, 10.0, 20.0)]
    assert recalls == sorted(recalls)
    assert (tmp_path / "backtest_planted.md").read_text().count("| model:centroid |") == 5
    assert (tmp_path / "backtest_planted_model_centroid.png").stat().st_size > 1000
    assert (tmp_path / "backtest_planted_random.png").exists()


def test_backtest_rejects_bad_converters(trust_warehouse):
    result = run_cli(trust_warehouse, "backtest", "--name", "bad", "--converters-sql", "select customer_id from raw.nope",
                     expect_exit=1)
    assert "--converters-sql failed" in result.output
    result = run_cli(trust_warehouse, "backtest", "--name", "few", "--converters-sql", "select 1 as customer_id",
                     expect_exit=1)
    assert "converters are in the population" in result.output


def test_inspect_seed_tells_a_segment_from_a_random_sample(trust_warehouse, segment):
    planted = json.loads(run_cli(
        trust_warehouse, "inspect-seed", "--json",
        "--seed-sql", f"select customer_id from raw.planted_segments where segment_id = {segment}",
    ).output)
    random = json.loads(run_cli(
        trust_warehouse, "inspect-seed", "--json",
        "--seed-sql", "select customer_id from customer_features order by hash(customer_id) limit 150",
    ).output)
    assert planted["seed_found"] == planted["seed_requested"] > 50
    assert planted["homogeneity"] > random["homogeneity"] + 0.05
    assert not any("as diverse as a random sample" in w for w in planted["warnings"])
    assert any("as diverse as a random sample" in w for w in random["warnings"])
    small = json.loads(run_cli(trust_warehouse, "inspect-seed", "--json", "--seed-sql",
                               "select * from (values (1), (2), (3), (99999999)) t(customer_id)").output)
    assert (small["seed_found"], small["seed_missing"]) == (3, 1)
    assert any("recommend at least 100" in w for w in small["warnings"])


def test_expand_saves_seed_diagnostics_and_explain_reads_them(trust_warehouse, segment):
    expanded = run_cli(trust_warehouse, "expand", "--name", "explained", "--size", "100",
                       "--seed-sql", f"select customer_id from raw.planted_segments where segment_id = {segment}")
    assert "strategy blend" in expanded.output and "blend weights" in expanded.output
    with serving(trust_warehouse) as con:
        strategy, parameters = con.execute(
            "select strategy, parameters from latest_audiences where name = 'explained'").fetchall()[0]
    # The self-validation evidence is stored with the audience: every weighting's held-out AUC.
    evidence = json.loads(parameters)["blend"]
    assert strategy == "blend" and evidence["folds"] == 3
    assert max(evidence["validation_auc"].values()) > 0.9
    assert set(evidence["weights"]) == set(evidence["validation_auc"]) == {
        "embedding", "raw", "propensity", "activity", "rfm", "spend", "shares_lr", "shares_gbm"}
    assert evidence["blend_validation_auc"] >= max(evidence["validation_auc"].values()) - 0.01
    result = run_cli(trust_warehouse, "explain", "--audience", "explained", "--limit", "3")
    assert "nearest seeds" in result.output
    with serving(trust_warehouse) as con:
        audience_id, seed_found = con.execute("select audience_id, seed_found from latest_audiences where name = 'explained'").fetchall()[0]
        found, clusters = con.execute("select seed_found, clusters from seed_diagnostics where audience_id = ?", [audience_id]).fetchall()[0]
        assert found == seed_found and clusters >= 1
        assert con.execute("select count(*) from audience_seeds where audience_id = ?", [audience_id]).fetchall()[0][0] == seed_found
        members, explained, seeds_ok, ordered, with_features = con.execute("""
            select (select count(*) from audience_members where audience_id = $id),
                   count(*),
                   bool_and(nearest_seed_id in (select customer_id from audience_seeds where audience_id = $id)),
                   bool_and(nearest_seed_similarities[1] >= nearest_seed_similarities[3]),
                   bool_and(len(top_features) = 3)
            from audience_member_explanations where audience_id = $id
        """, {"id": audience_id}).fetchall()[0]
        assert members == explained == 100 and seeds_ok and ordered and with_features
        top_feature_smd = con.execute("select standardised_mean_difference from audience_feature_differences "
                                      "where audience_id = ? and feature_rank = 1", [audience_id]).fetchall()[0][0]
        assert abs(top_feature_smd) > 0.5
        customer = con.execute("select customer_id from audience_members where audience_id = ? and rank = 7", [audience_id]).fetchall()[0][0]
    one = run_cli(trust_warehouse, "explain", "--audience", "explained", "--customer", str(customer))
    assert str(customer) in one.output
    assert "not a member" in run_cli(trust_warehouse, "explain", "--audience", "explained", "--customer", "-5", expect_exit=1).output


def test_overlap_matrix_and_disjoint_by_priority(trust_warehouse, segment):
    for name, segments in (("first", f"{segment}"), ("second", f"{segment}, {segment + 1}")):
        run_cli(trust_warehouse, "expand", "--name", name, "--size", "200",
                "--seed-sql", f"select customer_id from raw.planted_segments where segment_id in ({segments})")
    result = run_cli(trust_warehouse, "audiences", "overlap", "first", "second")
    assert "jaccard" in result.output
    with serving(trust_warehouse) as con:
        overlap, jaccard = con.execute(
            "select overlap, jaccard from audience_overlaps where audience_a = 'first' and audience_b = 'second'"
        ).fetchall()[0]
        expected = con.execute("""
            select count(*) from latest_audience_members a join latest_audience_members b using (customer_id)
            where a.audience_name = 'first' and b.audience_name = 'second'
        """).fetchall()[0][0]
    assert overlap == expected > 0
    assert jaccard == pytest.approx(overlap / (400 - overlap))

    result = run_cli(trust_warehouse, "audiences", "overlap", "first", "second", "--disjoint")
    assert f"{overlap:,} removed" in result.output
    with serving(trust_warehouse) as con:
        shared = con.execute("""
            select count(*) from latest_audience_members a join latest_audience_members b using (customer_id)
            where a.audience_name = 'first' and b.audience_name = 'second'
        """).fetchall()[0][0]
        version, size, ranks = con.execute("""
            select a.version, a.size, (select max(rank) from audience_members m where m.audience_id = a.audience_id)
            from latest_audiences a where name = 'second'
        """).fetchall()[0]
        stored = con.execute("select overlap from audience_overlaps where audience_a = 'first' and audience_b = 'second'").fetchall()[0][0]
    assert shared == 0 and stored == 0
    assert (version, size, ranks) == (2, 200 - overlap, 200 - overlap)
