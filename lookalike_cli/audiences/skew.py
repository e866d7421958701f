"""Sensitive-attribute skew: who an audience over- or under-represents, against the population and the seed.

For each listed attribute (default: gender, age band, income band) and each of its values, the
share among the audience's members, the population (customer_features) and the seed, and the
ratio audience share / population share. Published as `audience_attribute_skew` beside the
audience; a warning names any value whose ratio passes SKEW_WARNING (or falls below its
inverse) while it holds at least MIN_POPULATION_SHARE of the population and the gap is not
chance (SKEW_Z standard errors), one warning per attribute, so a marketer sees
that a lookalike of a skewed seed is skewed too before activating it.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

SENSITIVE_ATTRIBUTES = ("gender", "age_band", "income_band")
SKEW_WARNING = 1.5
MIN_POPULATION_SHARE = 0.05
SKEW_Z = 4.0

SKEW_DDL = """
create table if not exists audience_attribute_skew (
    audience_id bigint, attribute varchar, value varchar, audience_share double, population_share double,
    seed_share double, skew_ratio double
)
"""


def attribute_skew(con: duckdb.DuckDBPyConnection, member_ids: np.ndarray, seed_ids: np.ndarray,
                   attributes: tuple[str, ...] = SENSITIVE_ATTRIBUTES) -> pa.Table:
    """One row per (attribute, value) present in customer_features; empty when none of the attributes exist."""
    columns = {r[0] for r in con.execute("describe customer_features").fetchall()}
    present = [a for a in attributes if a in columns]
    schema = pa.schema([("attribute", pa.string()), ("value", pa.string()), ("audience_share", pa.float64()),
                        ("population_share", pa.float64()), ("seed_share", pa.float64()), ("skew_ratio", pa.float64())])
    if not present:
        return schema.empty_table()
    from lookalike_cli.warehouse.connection import registered

    members = pa.table({"customer_id": pa.array(member_ids, pa.int64())})
    seeds = pa.table({"customer_id": pa.array(seed_ids, pa.int64())})
    with registered(con, "skew_members", members), registered(con, "skew_seeds", seeds):
        parts = []
        for attribute in present:
            parts.append(f"""
                select '{attribute}' as attribute, coalesce(cast(f.{attribute} as varchar), 'unknown') as value,
                       count(m.customer_id) as in_audience, count(s.customer_id) as in_seed, count(*) as in_population
                from customer_features f
                left join skew_members m using (customer_id)
                left join skew_seeds s using (customer_id)
                group by all""")
        return con.sql(f"""
            with counts as ({' union all '.join(parts)})
            select attribute, value,
                   in_audience / nullif(sum(in_audience) over (partition by attribute), 0) as audience_share,
                   in_population / sum(in_population) over (partition by attribute) as population_share,
                   in_seed / nullif(sum(in_seed) over (partition by attribute), 0) as seed_share,
                   (in_audience / nullif(sum(in_audience) over (partition by attribute), 0))
                     / (in_population / sum(in_population) over (partition by attribute)) as skew_ratio
            from counts order by attribute, value""").to_arrow_table().cast(schema)


def skew_warnings(skew: pa.Table, audience_size: int, threshold: float = SKEW_WARNING,
                  excluded: tuple[str, ...] | list[str] = ()) -> list[str]:
    """At most one warning per attribute: its most skewed value, when the skew is large and not chance.

    Not chance: the audience share is more than SKEW_Z binomial standard errors from the
    population share (a 100-member audience of a 36% group varies by about +-5 points by chance).
    Each warning says whether the attribute was among the `excluded` features (exclude_features).
    """
    worst: dict[str, tuple[float, dict]] = {}
    for row in skew.to_pylist():
        ratio, p = row["skew_ratio"], row["population_share"]
        if ratio is None or p < MIN_POPULATION_SHARE or not (ratio >= threshold or ratio <= 1 / threshold):
            continue
        z = abs(row["audience_share"] - p) / np.sqrt(p * (1 - p) / max(audience_size, 1))
        if z >= SKEW_Z and z > worst.get(row["attribute"], (0.0, None))[0]:
            worst[row["attribute"]] = (z, row)
    return [
        f"Attribute skew: {row['attribute']} = {row['value']} is {row['audience_share']:.0%} of the audience vs "
        f"{row['population_share']:.0%} of customers ({row['skew_ratio']:.2f}x; seed {row['seed_share'] or 0:.0%}). "
        "See audience_attribute_skew before activating. "
        + (f"{row['attribute']} was excluded from the ranking: the skew comes through correlated features."
           if row["attribute"] in excluded else
           f"{row['attribute']} was not excluded from the ranking: exclude_features can keep it out.")
        for _, row in worst.values()
    ]


def write_skew(con: duckdb.DuckDBPyConnection, audience_id: int, skew: pa.Table) -> None:
    """Rows of audience_attribute_skew for one audience version (inside a publish swap)."""
    from lookalike_cli.audiences.publish import insert_rows

    rows = skew.add_column(0, "audience_id", pa.array(np.full(skew.num_rows, audience_id), pa.int64()))
    insert_rows(con, "audience_attribute_skew", rows, SKEW_DDL)
