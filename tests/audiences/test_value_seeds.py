"""Value-based seeds (issue 18, part 3): `--seed-value-sql` / `value_sql:` weight the seed.

No dbt: planted-cluster warehouses (tests.helpers) whose customer_features has segment_id and
total_spend, so the known answers are exact: a weighted centroid, a mixed seed whose valuable half
the audience follows, every bad value an error naming the parameter with nothing published.
"""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest

from lookalike_cli import api
from lookalike_cli.audiences.blend import BlendInputs, auc, fit_blend
from lookalike_cli.audiences.expand import expand
from lookalike_cli.audiences.seeds import Seeds
from lookalike_cli.errors import ParameterError
from lookalike_cli.index.faiss_index import build_index
from lookalike_cli.settings import Settings
from tests.audiences.test_blend import shop, split
from tests.helpers import build_planted_warehouse, cli_error, run_cli

# Two planted segments in one seed: 150 customers of each.
MIXED_SEED = ("select customer_id from (select customer_id, row_number() over (partition by segment_id order by customer_id) as n "
              "from customer_features where segment_id in (3, 5)) where n <= 150")
SEGMENT_3_VALUABLE = "select customer_id, case when segment_id = 3 then 100.0 else 1.0 end as value from customer_features"
SPEND = "select customer_id, total_spend as value from customer_features"


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("value_seeds")
    db = root / "warehouse.duckdb"
    build_planted_warehouse(db, customers=4000)
    build_index(db, root / "flat", progress=quiet)
    return Settings.resolve(db=db, serving_db=root / "serving.duckdb", index_dir=root / "flat")


def fresh(world: Settings, tmp_path) -> Settings:
    """The world with a serving file of the test's own (it starts absent)."""
    return Settings.resolve(db=world.db_path, serving_db=tmp_path / "serving.duckdb", index_dir=world.index_dir)


def segments(settings: Settings, ids) -> np.ndarray:
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        lookup = dict(con.execute("select customer_id, segment_id from customer_features").fetchall())
    return np.array([lookup[i] for i in ids])


def test_weighted_centroid_is_the_value_weighted_mean():
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    seeds = Seeds("test", 3, np.array([1, 2, 3]), vectors, [])
    np.testing.assert_allclose(seeds.centroid(), [[3 ** -0.5] * 3], rtol=1e-6)  # unweighted: the plain mean
    seeds.weights = np.array([3.0, 0.0, 0.0])
    np.testing.assert_allclose(seeds.centroid(), [[1, 0, 0]])  # weight 0: as if absent
    seeds.weights = np.array([2.0, 1.0, 0.0])
    np.testing.assert_allclose(seeds.centroid(), [[2 / 5 ** 0.5, 1 / 5 ** 0.5, 0]], rtol=1e-6)


def test_weighted_auc_draws_positives_by_value():
    positives, negatives = np.array([0.9, 0.1]), np.array([0.5])
    assert auc(positives, negatives) == 0.5
    assert auc(positives, negatives, np.array([1.0, 0.0])) == 1.0
    assert auc(positives, negatives, np.array([1.0, 3.0])) == 0.25


def test_uniform_values_fit_the_same_blend():
    """Equal values are no weighting at all: the same components, weights and scores."""
    inputs, positives = shop("preference")
    seed_rows, unlabelled_rows, _ = split(inputs, positives)
    plain = fit_blend(inputs.take(seed_rows), inputs.take(unlabelled_rows), 0)
    seeds = inputs.take(seed_rows)
    seeds.weights = np.ones(len(seed_rows))
    weighted = fit_blend(seeds, inputs.take(unlabelled_rows), 0)
    assert weighted.evidence["weights"] == plain.evidence["weights"]
    # The same up to float rounding (a customer may cross one entry of the reference sample: 1e-5).
    np.testing.assert_allclose(weighted.score(inputs), plain.score(inputs), atol=1e-4)


def test_value_weighted_self_validation_follows_the_valuable_seeds():
    """Converters share a taste; the valuable ones are also the most active. Weighted by value, the
    held-out AUC rewards finding active customers, so the blend moves weight to the activity components."""
    inputs, positives = shop("preference")
    seed_rows, unlabelled_rows, _ = split(inputs, positives)
    activity = ("activity", "rfm", "spend", "shares_lr", "shares_gbm")  # shares_*: also see log order lines
    seeds = inputs.take(seed_rows)
    plain = fit_blend(seeds, inputs.take(unlabelled_rows), 0)
    lines = np.expm1(seeds.column("order_line_count", plain=True))
    seeds.weights = (lines >= np.quantile(lines, 0.8)).astype(float)  # only the top fifth by activity is worth anything
    weighted = fit_blend(seeds, inputs.take(unlabelled_rows), 0)
    share = {name: sum(fitted.evidence["weights"].get(c, 0.0) for c in activity) for name, fitted in
             (("plain", plain), ("weighted", weighted))}
    assert share["weighted"] > share["plain"] + 0.2, (plain.evidence["weights"], weighted.evidence["weights"])
    assert "weighted by value" in weighted.evidence["selection"]


# multi-centroid is left out: it gives every sub-group of the seed its own sub-centroid, and the
# weights only move each sub-centroid towards its valuable members (weighted k-means).
@pytest.mark.parametrize("strategy", ["centroid", "blend", "knn-vote", "classifier"])
def test_a_mixed_seed_follows_its_valuable_half(world, strategy):
    """150 seeds of segment 3 worth 100 each and 150 of segment 5 worth 1: weighted, every strategy's
    audience (100 of the ~180 non-seed customers of each segment) is mostly segment 3; unweighted,
    both segments share it."""
    weighted = expand(world.db_path, world.index_dir, seed_sql=MIXED_SEED, seed_value_sql=SEGMENT_3_VALUABLE,
                      size=100, strategy=strategy, progress=quiet)
    plain = expand(world.db_path, world.index_dir, seed_sql=MIXED_SEED, size=100, strategy=strategy, progress=quiet)
    share = {name: (segments(world, result.members["customer_id"].to_pylist()) == 3).mean()
             for name, result in (("weighted", weighted), ("plain", plain))}
    assert share["weighted"] > 0.9 and share["weighted"] > share["plain"] + 0.2, share
    recorded = weighted.audience["parameters"]["seed_value"]
    assert recorded["weighted"] is True and recorded["value_sql"] == SEGMENT_3_VALUABLE
    assert (recorded["min"], recorded["max"], recorded["seeds_with_value"], recorded["filled_with_median"]) == (1.0, 100.0, 300, 0)
    assert recorded["effective_seeds"] < 160  # 300 seeds, half of them nearly weightless
    assert "seed_value" not in plain.audience["parameters"]


def test_seed_members_without_a_value_weigh_the_median(world):
    result = expand(world.db_path, world.index_dir, seed_sql=MIXED_SEED, size=50, strategy="centroid", progress=quiet,
                    seed_value_sql=SPEND + " where customer_id % 3 = 0")
    recorded = result.audience["parameters"]["seed_value"]
    assert recorded["filled_with_median"] == 300 - recorded["seeds_with_value"] > 0
    assert any("have no row in the value SQL" in w and "median" in w for w in result.warnings)


BAD_VALUES = [
    ("select customer_id, total_spend - 1000 as value from customer_features", "a negative or infinite value to"),
    ("select customer_id, case when segment_id = 3 then null else 1 end as value from customer_features", "a null (or NaN) value"),
    ("select customer_id, gender as value from customer_features", "column value is VARCHAR, not a number"),
    ("select customer_id from customer_features", "it needs customer_id and value"),
    ("select customer_id, 0 as value from customer_features", "a value of 0: at least one must be positive"),
    ("select customer_id, 1 as value from customer_features union all select customer_id, 2 from customer_features",
     "one value per customer"),
    ("select customer_id + 1 as customer_id, 1.0 as value from customer_features where customer_id % 2 = 0",
     "has no row for any of the 300 seed members"),
    ("select customer_id, 'inf'::double as value from customer_features", "a negative or infinite value to"),
    ("select nope from customer_features", "failed: Binder Error"),
]


@pytest.mark.parametrize("value_sql, message", BAD_VALUES)
def test_bad_values_are_one_clear_error_naming_the_parameter_and_publish_nothing(world, tmp_path, value_sql, message):
    settings = fresh(world, tmp_path)
    with pytest.raises(ParameterError) as raised:
        api.expand(settings, seed_sql=MIXED_SEED, seed_value_sql=value_sql, size=100, progress=quiet)
    assert str(raised.value).startswith("seed_value_sql ") and message in str(raised.value), str(raised.value)
    error = cli_error(settings, "expand", "--name", "valuable", "--seed-sql", MIXED_SEED, "--size", "100",
                      "--seed-value-sql", value_sql)
    assert error == "--seed-value-sql " + str(raised.value).removeprefix("seed_value_sql ")
    assert "\n" not in error
    assert not settings.serving_db_path.exists()


def test_value_sql_in_an_audiences_file(world, tmp_path):
    settings = fresh(world, tmp_path)
    path = tmp_path / "audiences.yml"
    path.write_text(f"""
audiences:
  - name: valuable
    seed_sql: {MIXED_SEED}
    value_sql: {SEGMENT_3_VALUABLE}
    size: 100
    strategy: centroid
  - name: plain
    seed_sql: {MIXED_SEED}
    size: 100
    strategy: centroid
""")
    out = run_cli(settings, "audiences", "apply", str(path)).output
    assert "valuable v1: 100 members" in out and "plain v1: 100 members" in out
    with duckdb.connect(str(settings.serving_db_path), read_only=True) as con:
        rows = dict(con.execute("select name, parameters from audiences").fetchall())
        members = con.execute("select m.customer_id from audience_members m join audiences a using (audience_id) "
                              "where a.name = 'valuable'").fetchall()
    assert json.loads(rows["valuable"])["seed_value"]["value_sql"] == SEGMENT_3_VALUABLE
    assert "seed_value" not in json.loads(rows["plain"])
    assert (segments(settings, [m for (m,) in members]) == 3).mean() > 0.9

    # A bad value in one audience: the file's own key in the error, and neither audience gets a new version.
    path.write_text(path.read_text().replace("then 100.0 else 1.0", "then 100.0 else -1.0"))
    error = cli_error(settings, "audiences", "apply", str(path))
    assert error.startswith(f"{path}: audience 'valuable': value_sql gives a negative or infinite value to 150 "), error
    with duckdb.connect(str(settings.serving_db_path), read_only=True) as con:
        assert con.execute("select max(version), count(*) from audiences").fetchall() == [(1, 2)]


def test_a_value_sql_that_fails_is_listed_with_the_files_other_problems(world, tmp_path):
    settings = fresh(world, tmp_path)
    path = tmp_path / "audiences.yml"
    path.write_text(f"audiences:\n  - name: broken\n    seed_sql: {MIXED_SEED}\n    value_sql: select nope\n    size: 10\n")
    out = run_cli(settings, "audiences", "apply", str(path), expect_exit=1).output
    assert "1 problem(s); nothing was published" in out and "audience 'broken': value_sql fails:" in out, out
    assert not settings.serving_db_path.exists()
