"""Incrementality of an audience: conversion of treated members against its holdout.

An audience published with a holdout (`holdout: 10%`) has members marked `is_holdout`, left out
of activation. After the campaign, the outcome SQL names who converted; the lift is the
difference of conversion rates, treated minus holdout, with a 95% interval (normal
approximation to the difference of two proportions) and a two-sided p-value. The row goes to
`audience_measurements` in the serving file, beside the audience it measures.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from lookalike_cli.errors import LookalikeError

MEASUREMENTS_DDL = """
create table if not exists audience_measurements (
    audience_id bigint, audience_name varchar, audience_version integer, measured_at timestamp,
    outcome_sql varchar, treated_size bigint, holdout_size bigint, treated_conversions bigint,
    holdout_conversions bigint, treated_rate double, holdout_rate double, absolute_lift double,
    lift_ci_low double, lift_ci_high double, relative_lift double, p_value double
)
"""
Z_95 = 1.959963984540054


@dataclass
class Measurement:
    audience_id: int
    audience_name: str
    audience_version: int
    measured_at: str
    outcome_sql: str
    treated_size: int
    holdout_size: int
    treated_conversions: int
    holdout_conversions: int
    treated_rate: float
    holdout_rate: float
    absolute_lift: float
    lift_ci_low: float
    lift_ci_high: float
    relative_lift: float | None
    p_value: float


def lift_interval(treated: int, treated_hits: int, holdout: int, holdout_hits: int) -> tuple[float, float, float, float]:
    """(difference of rates, 95% low, 95% high, two-sided p) for treated minus holdout conversion."""
    p1, p0 = treated_hits / treated, holdout_hits / holdout
    difference = p1 - p0
    standard_error = math.sqrt(p1 * (1 - p1) / treated + p0 * (1 - p0) / holdout)
    pooled = (treated_hits + holdout_hits) / (treated + holdout)
    pooled_error = math.sqrt(pooled * (1 - pooled) * (1 / treated + 1 / holdout))
    p_value = math.erfc(abs(difference) / pooled_error / math.sqrt(2)) if pooled_error > 0 else 1.0
    return difference, difference - Z_95 * standard_error, difference + Z_95 * standard_error, p_value


def measure_audience(db_path: Path, serving_db_path: Path, name: str, outcome_sql: str,
                     version: int | None = None) -> Measurement:
    """Conversion of treated vs held-out members of one version (default latest) of audience `name`."""
    from lookalike_cli.audiences.catalog import open_serving, resolve_version
    from lookalike_cli.warehouse.connection import connection, registered, user_query

    serving = open_serving(serving_db_path)
    try:
        audience_id, version = resolve_version(serving, name, version)
        members = serving.sql("select customer_id, coalesce(is_holdout, false) as is_holdout from audience_members "
                              "where audience_id = $id", params={"id": audience_id}).to_arrow_table()
    finally:
        serving.close()
    with connection(db_path, read_only=True) as con:
        converted = user_query(con, f"select distinct customer_id from ({outcome_sql}) as outcome",
                               "outcome_sql").to_arrow_table()
        with registered(con, "members", members), registered(con, "converted", converted):
            (treated, treated_hits, holdout, holdout_hits), = con.execute(
                """select count(*) filter (where not is_holdout),
                          count(c.customer_id) filter (where not is_holdout),
                          count(*) filter (where is_holdout),
                          count(c.customer_id) filter (where is_holdout)
                   from members m left join converted c using (customer_id)"""
            ).fetchall()
    if holdout == 0:
        raise LookalikeError(f"Audience {name!r} version {version} has no holdout: publish it with a holdout "
                             "(`holdout: 10%` in the audiences file, or `lookalike expand --holdout 10%`) before measuring.")
    difference, low, high, p_value = lift_interval(treated, treated_hits, holdout, holdout_hits)
    holdout_rate = holdout_hits / holdout
    return Measurement(
        audience_id=audience_id, audience_name=name, audience_version=version,
        measured_at=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), outcome_sql=outcome_sql,
        treated_size=treated, holdout_size=holdout, treated_conversions=treated_hits, holdout_conversions=holdout_hits,
        treated_rate=treated_hits / treated, holdout_rate=holdout_rate, absolute_lift=difference,
        lift_ci_low=low, lift_ci_high=high, relative_lift=difference / holdout_rate if holdout_rate > 0 else None,
        p_value=p_value,
    )


def publish_measurement(serving_db_path: Path, measurement: Measurement) -> None:
    from lookalike_cli.audiences.publish import insert_rows, publish_tables

    row = pa.Table.from_pylist([asdict(measurement)])
    publish_tables(serving_db_path, lambda con: insert_rows(con, "audience_measurements", row, MEASUREMENTS_DDL))
