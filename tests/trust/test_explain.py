"""Explaining an audience, through the CLI on generated data: seed diagnostics (inspect-seed),
the blend's stored evidence, member explanations and audience overlap, each read back with SQL
from the serving file."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli, serving_connection as serving

pytestmark = pytest.mark.slow  # the shared scored warehouse


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
        "embedding", "raw", "propensity", "propensity_raw", "activity", "rfm", "spend", "shares_lr", "shares_gbm"}
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
        # The disjoint version gets a reach curve: its parent's expectations, min scores of the kept ranking.
        curve = con.execute("""
            select c.size, c.min_score, c.expected_lift, c.source from audience_reach_curve c join latest_audiences a using (audience_id)
            where a.name = 'second' order by c.size""").fetchall()
        last_kept = con.execute("select score from latest_audience_members where audience_name = 'second' "
                                "order by rank desc limit 1").fetchall()[0][0]
        parent_sources = {r[0] for r in con.execute(
            "select source from audience_reach_curve c join audiences a using (audience_id) where a.name = 'second' and a.version = 1"
        ).fetchall()}
    assert shared == 0 and stored == 0
    at_size = [row for row in curve if row[0] == 200 - overlap]
    assert len(at_size) == 1 and at_size[0][1] == pytest.approx(last_kept)
    assert {row[3] for row in curve} <= parent_sources and len(curve) >= 2
    assert (version, size, ranks) == (2, 200 - overlap, 200 - overlap)
