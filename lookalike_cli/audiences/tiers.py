"""Rings and holdouts: how one computed audience is split before it is published.

Rings (Meta's nested lookalike tiers): `[1%, 2%, 5%]` publishes the top 5% of the population in
one version, each member labelled with its disjoint tier by rank: '0-1%', '1-2%', '2-5%'.

Holdouts (incrementality): a share of members is marked `is_holdout`, chosen by a stable hash
of (customer_id, audience name, seed), so a customer held out of version 1 stays held out of
version 2 while it stays in the audience: measurement across refreshes compares the same people.
Activation reads `latest_audience_activation`, which leaves them out.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import replace

import numpy as np
import pyarrow as pa

from lookalike_cli.errors import LookalikeError, ParameterError, input_error

MAX_HOLDOUT = 0.5


def parse_share(value, param: str) -> float:
    """'10%' (or 0.1) -> 0.1; a clear error, naming the parameter, for anything that is not a share in (0, 1]."""
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
    try:
        share = float(match.group(1)) / 100 if match else float(text)
    except ValueError:
        raise input_error(param, f"{text!r} is not a share: write it as a percentage, e.g. 10%.") from None
    if not match and share > 1:
        raise input_error(param, f"{text!r} is not a share: write it as a percentage, e.g. 10%.")
    if not 0 < share <= 1:
        raise input_error(param, f"{text!r} must be a share in (0%, 100%].")
    return share


def parse_holdout(value) -> float:
    share = parse_share(value, "holdout")
    if share > MAX_HOLDOUT:
        raise ParameterError(f"{{holdout}} {value!r} must be in (0%, {MAX_HOLDOUT:.0%}]: above that the audience is mostly held out.",
                             "holdout")
    return share


def format_share(share: float) -> str:
    return f"{100 * share:g}%"


def parse_rings(values) -> list[float]:
    """['1%', '2%', '5%'] -> [0.01, 0.02, 0.05]: shares of the population, strictly increasing."""
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    if not values:
        raise ParameterError("{rings} must list at least one share of the population, e.g. [1%, 2%, 5%].", "rings")
    shares = [parse_share(v, "rings") for v in values]
    if any(b <= a for a, b in zip(shares, shares[1:])):
        raise ParameterError(f"{{rings}} {[format_share(s) for s in shares]} must increase strictly, e.g. [1%, 2%, 5%].", "rings")
    return shares


def ring_bounds(shares: list[float], population: int) -> list[tuple[str, int]]:
    """(label, last rank in the ring) per ring: '0-1%' up to ceil(1% of the population), and so on."""
    bounds, lower = [], 0.0
    for share in shares:
        bounds.append((f"{format_share(lower).rstrip('%')}-{format_share(share)}", max(1, math.ceil(population * share))))
        lower = share
    return bounds


def ring_size(shares: list[float], population: int) -> int:
    """How many members the outer ring holds: the audience size to ask expand for."""
    return ring_bounds(shares, population)[-1][1]


def assign_rings(members: pa.Table, shares: list[float], population: int) -> pa.Table:
    """Add `ring` to members (ranked 1..n) by rank; members past the outer ring are an error."""
    ranks = members.column("rank").to_numpy()
    bounds = ring_bounds(shares, population)
    labels = np.array([label for label, _ in bounds], dtype=object)
    position = np.searchsorted(np.array([upper for _, upper in bounds]), ranks, side="left")
    if len(ranks) and position.max() >= len(bounds):
        raise LookalikeError(f"The audience has members ranked past its outer ring ({bounds[-1][0]}).")
    return members.append_column("ring", pa.array(labels[position], pa.string()))


def stable_uniform(customer_ids: np.ndarray, salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per customer that depends only on (customer_id, salt)."""
    key = np.uint64((zlib.crc32(salt.encode()) * 0x9E3779B97F4A7C15) % 2**64)
    x = customer_ids.astype(np.uint64) ^ key
    # splitmix64 finaliser (wrapping uint64 arithmetic): neighbouring ids get unrelated outputs.
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_holdout(members: pa.Table, share: float, salt: str) -> pa.Table:
    """Add `is_holdout`: about `share` of the members, chosen by a stable hash of customer and salt."""
    ids = members.column("customer_id").to_numpy()
    held = stable_uniform(ids, salt) < share
    if len(ids) and (held.all() or not held.any()):
        raise LookalikeError(f"A {format_share(share)} holdout of {len(ids):,} members leaves "
                             f"{'no treated' if held.all() else 'no held-out'} member: choose a larger audience or holdout.")
    return members.append_column("is_holdout", pa.array(held, pa.bool_()))


def split_expansion(expansion, name: str, rings: list[float] | None = None, holdout: float | None = None, seed: int = 0):
    """The expansion with rings and/or holdout marked on its members and recorded in its parameters."""
    members, parameters = expansion.members, dict(expansion.audience["parameters"])
    if rings:
        members = assign_rings(members, rings, expansion.audience["population_size"])
        parameters["rings"] = [format_share(s) for s in rings]
    if holdout:
        members = assign_holdout(members, holdout, f"{name}/{seed}")
        parameters["holdout"] = format_share(holdout)
        parameters["holdout_size"] = int(np.asarray(members.column("is_holdout")).sum())
    return replace(expansion, members=members, audience={**expansion.audience, "parameters": parameters})
