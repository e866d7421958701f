"""Rings and holdouts (audiences/tiers.py): known answers on small hand-made member tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lookalike_cli.audiences.tiers import (assign_holdout, assign_rings, parse_holdout, parse_rings, ring_bounds,
                                           stable_uniform)
from lookalike_cli.errors import LookalikeError
from lookalike_cli.trust.measure import lift_interval


def members(n: int, first_id: int = 1000) -> pa.Table:
    return pa.table({"rank": pa.array(np.arange(1, n + 1), pa.int32()),
                     "customer_id": pa.array(np.arange(first_id, first_id + n), pa.int64())})


def test_rings_are_disjoint_tiers_by_rank_against_the_population():
    shares = parse_rings(["1%", "2%", "5%"])
    assert ring_bounds(shares, 1000) == [("0-1%", 10), ("1-2%", 20), ("2-5%", 50)]
    ringed = assign_rings(members(50), shares, 1000)
    ring = ringed.column("ring").to_pylist()
    assert ring[:10] == ["0-1%"] * 10 and ring[10:20] == ["1-2%"] * 10 and ring[20:] == ["2-5%"] * 30
    with pytest.raises(LookalikeError, match="past its outer ring"):
        assign_rings(members(51), shares, 1000)


@pytest.mark.parametrize("rings, message", [(["2%", "1%"], "increase strictly"), (["0%"], r"share in \(0%"),
                                            (["abc"], "not a share"), ([], "at least one")])
def test_bad_rings_say_what_is_wrong(rings, message):
    with pytest.raises(LookalikeError, match=message):
        parse_rings(rings)


@pytest.mark.parametrize("value", ["0%", "60%", "-5%", "x"])
def test_holdout_outside_zero_to_half_is_refused(value):
    with pytest.raises(LookalikeError, match="holdout"):
        parse_holdout(value)


def test_holdout_is_the_asked_share_and_stable_across_versions():
    first = assign_holdout(members(20_000), 0.1, "vip/0")
    held = np.asarray(first.column("is_holdout"))
    assert 0.09 < held.mean() < 0.11
    # Version 2 keeps half of version 1's members and adds new ones: who stays keeps their arm.
    second = assign_holdout(members(20_000, first_id=11_000), 0.1, "vip/0")
    overlap_first = held[10_000:]
    overlap_second = np.asarray(second.column("is_holdout"))[:10_000]
    assert (overlap_first == overlap_second).all()
    # Another audience name (salt) draws another holdout.
    other = np.asarray(assign_holdout(members(20_000), 0.1, "other/0").column("is_holdout"))
    assert (other != held).mean() > 0.1


def test_stable_uniform_is_uniform():
    u = stable_uniform(np.arange(200_000), "salt")
    assert abs(u.mean() - 0.5) < 0.01 and abs((u < 0.25).mean() - 0.25) < 0.01


def test_lift_interval_known_answer():
    # 10% vs 5% conversion, 2,000 treated and 1,000 held out.
    difference, low, high, p = lift_interval(2000, 200, 1000, 50)
    se = np.sqrt(0.1 * 0.9 / 2000 + 0.05 * 0.95 / 1000)
    assert difference == pytest.approx(0.05)
    assert low == pytest.approx(0.05 - 1.959964 * se, rel=1e-5) and high == pytest.approx(0.05 + 1.959964 * se, rel=1e-5)
    assert p < 1e-4
    assert lift_interval(1000, 100, 1000, 100)[3] == pytest.approx(1.0)
