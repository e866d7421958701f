"""audience_attribute_skew: shares against the population and the seed, and when to warn."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from lookalike_cli.audiences.skew import attribute_skew, skew_warnings


@pytest.fixture
def con():
    con = duckdb.connect()
    # 1,000 customers: ids 0..499 'f', 500..999 'm'; age band alternates.
    con.execute("""create table customer_features as
                   select i as customer_id, case when i < 500 then 'f' else 'm' end as gender,
                          case when i % 2 = 0 then '18-34' else '35-54' end as age_band
                   from range(1000) t(i)""")
    yield con
    con.close()


def test_shares_and_ratio_known_answer(con):
    members = np.arange(0, 200)            # all 'f'
    seeds = np.concatenate([np.arange(0, 30), np.arange(500, 510)])  # 30 f, 10 m
    skew = {(r["attribute"], r["value"]): r for r in attribute_skew(con, members, seeds).to_pylist()}
    assert set(a for a, _ in skew) == {"gender", "age_band"}  # income_band absent: skipped
    female = skew["gender", "f"]
    assert female["audience_share"] == 1.0 and female["population_share"] == 0.5
    assert female["seed_share"] == pytest.approx(0.75) and female["skew_ratio"] == pytest.approx(2.0)
    assert skew["gender", "m"]["skew_ratio"] == 0.0
    assert skew["age_band", "18-34"]["skew_ratio"] == pytest.approx(1.0)
    warnings = skew_warnings(attribute_skew(con, members, seeds), len(members))
    assert len(warnings) == 1 and "gender" in warnings[0]  # one per attribute; age band is balanced


def test_small_chance_gaps_do_not_warn(con):
    # 20 members, 13 'f' (65% vs 50%): 1.3x and well within chance for n = 20.
    members = np.concatenate([np.arange(0, 13), np.arange(500, 507)])
    assert skew_warnings(attribute_skew(con, members, members), len(members)) == []


def test_warnings_say_whether_the_attribute_was_excluded(con):
    members = np.arange(0, 200)
    skew = attribute_skew(con, members, members)
    assert skew_warnings(skew, len(members))[0].endswith("gender was not excluded from the ranking: exclude_features can keep it out.")
    (warning,) = skew_warnings(skew, len(members), excluded=["gender"])
    assert warning.endswith("gender was excluded from the ranking: the skew comes through correlated features.")
    assert "\n" not in warning
