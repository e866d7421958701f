"""Reach curve: how an audience's expected quality falls as it grows, and sizing by expected lift.

Every published audience version gets rows of `audience_reach_curve` at 0.5/1/2/5/10/20% of the
population and at its own size: `min_score` (the score of the last member at that size),
`expected_recall`, `expected_lift`, `expected_precision`, and their `source`.

In-seed validation (`source = 'in_seed'`, every strategy, no labels needed). The seed is split into
FOLDS folds; the strategy's ranking is refitted without each fold and scores the held-out seeds and
the held-out customers of a population sample (the blend reuses the out-of-fold scores its weights
were selected on, `blend.Blend.validation`). For a share q of the population, the threshold is the
score of the top q of the held-out customers, and

    expected recall r(q) = share of held-out seeds scoring above that threshold (ties: pro rata)
    expected lift        = r(q) / q, made non-increasing in q (below)

Assumption: the seed is a random sample of the customers the audience should find (PU learning's
"selected completely at random"). Then the customers like the seed that are not in it rank like the
held-out seeds, the top q holds a share r(q) of them, and r(q) / q is the audience's precision over
their base rate: its lift over a random audience of the same size. Precision itself needs that base
rate (how many customers are like the seed), which no seed tells: in-seed rows leave
`expected_precision` null. The folds' models see (FOLDS-1)/FOLDS of the seed (slightly pessimistic)
and the blend's weights were selected on the same held-out rows (slightly optimistic); r moves in
steps of one held-out seed, so small shares of small seeds are noisy: the lifts on a grid of shares
are fitted by weighted isotonic regression (non-increasing; weights the inverse binomial variance
of r, so noisy small shares move most, and expected_recall = fitted lift x q). A ranking whose score
orders customers by how likely they are to be like the seed has a cumulative lift that can only fall
as it goes deeper, so the rises of the raw estimate are noise. Seeds too small to validate
(< MIN_VALIDATION_SEEDS) get `source = 'unvalidated'` and null expectations.

Backtest (`source = 'backtest:<backtest_id>'`): when the serving file holds a backtest with the
audience's name (`lookalike backtest --name NAME`) that ran its strategy (method `model:<strategy>`),
sizes within the range it measured (1-20% by default) take the latest such backtest's mean
precision, recall and lift (linear between its sizes): measured on hidden converters, not estimated.

`--min-expected-lift X` sizes an audience by this curve (similarity-locked, as against a count,
which is reach-locked): the largest size whose expected lift is at least X, over a fine grid of sizes
that includes the curve's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa

from lookalike_cli.audiences.blend import FOLDS, MIN_VALIDATION_SEEDS
from lookalike_cli.errors import ParameterError
from lookalike_cli.vectors import normalise
from lookalike_cli.warehouse.connection import connect_serving

CURVE_SHARES = (0.005, 0.01, 0.02, 0.05, 0.10, 0.20)
# Sizes --min-expected-lift chooses among (besides the curve's): 0.01% to 50% of the population.
SELECTION_SHARES = tuple(float(s) for s in np.geomspace(0.0001, 0.5, 300))
# Where the in-seed lift is estimated and smoothed (other shares: interpolated).
LIFT_GRID = np.unique(np.r_[CURVE_SHARES, SELECTION_SHARES])
VALIDATION_SAMPLE = 5_000       # population customers the non-blend strategies' held-out seeds rank against
VALIDATION_SEEDS_MAX = 3_000    # seeds those validations use at most (a random subset beyond)
IN_SEED, UNVALIDATED = "in_seed", "unvalidated"

REACH_DDL = """
create table if not exists audience_reach_curve (
    audience_id bigint not null,
    size bigint not null,
    share_of_population double not null,
    min_score double,
    expected_precision double,
    expected_recall double,
    expected_lift double,
    source varchar not null
)
"""

CURVE_SCHEMA = pa.schema([
    ("size", pa.int64()), ("share_of_population", pa.float64()), ("min_score", pa.float64()),
    ("expected_precision", pa.float64()), ("expected_recall", pa.float64()), ("expected_lift", pa.float64()),
    ("source", pa.string())])


@dataclass
class Validation:
    """Out-of-fold scores of held-out seeds and of held-out population customers, from the same models."""
    seeds: np.ndarray
    unlabelled: np.ndarray

    def __post_init__(self) -> None:
        from sklearn.isotonic import IsotonicRegression

        self.seeds = np.sort(np.asarray(self.seeds, np.float64))
        self.unlabelled = np.sort(np.asarray(self.unlabelled, np.float64))[::-1]
        # Lift r(q)/q on a fixed grid, made non-increasing by weighted isotonic regression (weights: the
        # inverse binomial variance of r over the held-out seeds, so the noisy small shares move most).
        recall = np.array([self.recall(q) for q in LIFT_GRID])
        clipped = np.clip(recall, 0.5 / len(self.seeds), 1 - 0.5 / len(self.seeds))
        weights = len(self.seeds) * LIFT_GRID ** 2 / (clipped * (1 - clipped))
        self.raw_lift = recall / LIFT_GRID
        self.fitted_lift = IsotonicRegression(increasing=False).fit_transform(LIFT_GRID, self.raw_lift, sample_weight=weights)

    def lift(self, share: float) -> float:
        """The expected lift at `share`: the fitted grid, linear in log share between its points."""
        return float(np.interp(np.log(share), np.log(LIFT_GRID), self.fitted_lift))

    def recall(self, share: float) -> float:
        """Share of held-out seeds above the score of the top `share` of held-out customers; a tie at
        the threshold counts for the part of the tied customers the top `share` takes."""
        k = min(len(self.unlabelled), max(1, math.ceil(share * len(self.unlabelled))))
        threshold = self.unlabelled[k - 1]
        above = int(np.searchsorted(-self.unlabelled, -threshold, side="left"))  # customers strictly above
        tied = int(np.searchsorted(-self.unlabelled, -threshold, side="right")) - above
        seeds_above = len(self.seeds) - int(np.searchsorted(self.seeds, threshold, side="right"))
        seeds_tied = int(np.searchsorted(self.seeds, threshold, side="right") - np.searchsorted(self.seeds, threshold, side="left"))
        return (seeds_above + seeds_tied * (k - above) / tied) / len(self.seeds)


@dataclass
class BacktestCurve:
    """The latest backtest of an audience's name and strategy: mean precision, recall and lift per size."""
    backtest_id: int
    percent: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    lift: np.ndarray

    def at(self, share: float) -> tuple[float, float, float] | None:
        """(precision, recall, lift) at `share`, linear between measured sizes; None outside them."""
        percent = 100 * share
        if not self.percent[0] - 1e-9 <= percent <= self.percent[-1] + 1e-9:
            return None
        return tuple(float(np.interp(percent, self.percent, values)) for values in (self.precision, self.recall, self.lift))


def expected(share: float, validation: Validation | None, backtest: BacktestCurve | None) -> dict:
    """Expected precision, recall and lift at a share of the population, and where they come from."""
    measured = backtest.at(share) if backtest is not None else None
    if measured is not None:
        precision, recall, lift = measured
        return {"expected_precision": precision, "expected_recall": recall, "expected_lift": lift,
                "source": f"backtest:{backtest.backtest_id}"}
    if validation is None:
        return {"expected_precision": None, "expected_recall": None, "expected_lift": None, "source": UNVALIDATED}
    lift = validation.lift(share)
    return {"expected_precision": None, "expected_recall": min(1.0, lift * share), "expected_lift": lift, "source": IN_SEED}


def curve_sizes(population: int, published: int, largest: int) -> list[int]:
    sizes = {max(1, math.ceil(share * population)) for share in CURVE_SHARES} | {published}
    return sorted(s for s in sizes if s <= max(largest, published))


def reach_curve(population: int, ranked_scores: np.ndarray, published: int, largest: int,
                validation: Validation | None, backtest: BacktestCurve | None,
                sample_scores: Callable[[], np.ndarray] | None = None) -> pa.Table:
    """The curve's rows (no audience_id yet). `ranked_scores`: the eligible customers' scores best first,
    as far as the strategy ranked them; beyond, `sample_scores()` (the audience's scorer on a population
    sample) estimates min_score as a quantile, else it is null. `largest`: the most customers an
    audience could hold (the population without the seeds)."""
    sample = None
    rows = []
    for size in curve_sizes(population, published, largest):
        share = size / population
        if size <= len(ranked_scores):
            min_score = float(ranked_scores[size - 1])
        else:
            if sample is None and sample_scores is not None:
                sample = sample_scores()
            min_score = float(np.quantile(sample, 1 - share)) if sample is not None and len(sample) else None
        rows.append({"size": size, "share_of_population": share, "min_score": min_score,
                     **expected(share, validation, backtest)})
    # An estimate beyond the ranking must not rise above the last ranked score.
    lowest = math.inf
    for row in rows:
        if row["min_score"] is not None:
            lowest = row["min_score"] = min(row["min_score"], lowest)
    return pa.Table.from_pylist(rows, schema=CURVE_SCHEMA)


def size_for_lift(min_expected_lift: float, population: int, largest: int, validation: Validation | None,
                  backtest: BacktestCurve | None, seed_count: int) -> tuple[int, dict]:
    """The largest size (up to `largest`) whose expected lift is at least `min_expected_lift`, and its expectations."""
    shares = np.r_[CURVE_SHARES, SELECTION_SHARES]
    sizes = np.unique(np.clip(np.ceil(shares * population).astype(np.int64), 1, largest))
    found = [(int(size), expected(size / population, validation, backtest)) for size in sizes]
    found = [(size, e) for size, e in found if e["expected_lift"] is not None]
    if not found:
        raise ParameterError(
            f"{{min_expected_lift}} needs an expected lift, and a seed of {seed_count} customers is too small to "
            f"validate (at least {MIN_VALIDATION_SEEDS}): give {{size}} instead, or a larger seed.",
            "min_expected_lift", "size")
    passing = [(size, e) for size, e in found if e["expected_lift"] >= min_expected_lift]
    if not passing:
        size, best = max(found, key=lambda item: item[1]["expected_lift"])
        raise ParameterError(
            f"No audience size reaches {{min_expected_lift}} {min_expected_lift:g}: the best expected lift is "
            f"{best['expected_lift']:.2f}, at {size:,} customers ({size / population:.2%} of the population; "
            f"{best['source']}). Lower {{min_expected_lift}} or give {{size}}.", "min_expected_lift", "size")
    return passing[-1]


def check_min_expected_lift(value) -> float:
    """A lift above 1 (a random audience has lift 1, so every size would pass below it)."""
    try:
        lift = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{{min_expected_lift}} {value!r} must be a number above 1, e.g. 2.", "min_expected_lift") from None
    if not lift > 1 or not math.isfinite(lift):
        raise ParameterError(f"{{min_expected_lift}} {value!r} must be above 1: a random audience has lift 1.",
                             "min_expected_lift")
    return lift


# --- in-seed validation of the embedding strategies (the blend validates itself) ---------

def population_sample(con: duckdb.DuckDBPyConnection, seed_ids: np.ndarray, random_seed: int, index=None) -> np.ndarray:
    """L2-normalised embeddings of a reservoir sample of the population, seeds left out (vectors from `index`
    when given: seeds.population_vectors)."""
    from lookalike_cli.audiences.seeds import population_vectors

    ids, vectors = population_vectors(con, VALIDATION_SAMPLE + len(seed_ids), random_seed, index)
    return vectors[~np.isin(ids, seed_ids)][:VALIDATION_SAMPLE]


def fold_scorer(strategy: str, seeds: np.ndarray, unlabelled: np.ndarray, reference: np.ndarray, random_seed: int,
                population: int, clusters: int, k_per_seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """The strategy's ranking refitted on `seeds` (and, for the classifier, `unlabelled`), as a function of vectors.

    knn-vote on a sample: a customer gets each seed's similarity when it is among that seed's k
    nearest, which on `reference` (a population sample) means k scaled down to the sample's size."""
    if strategy == "multi-centroid" and clusters > 1:
        from sklearn.cluster import KMeans

        centres = normalise(KMeans(n_clusters=clusters, n_init=3, random_state=random_seed).fit(seeds).cluster_centers_)
        return lambda vectors: (vectors @ centres.T).max(axis=1)
    if strategy == "classifier":
        from lookalike_cli.audiences.expand import fit_pu

        return fit_pu(seeds, unlabelled, random_seed)[0].probability  # clipped at 1, ties and all, as expand ranks
    if strategy == "knn-vote":
        k = min(len(reference), max(1, round(k_per_seed * len(reference) / population)))
        radius = -np.partition(-(seeds @ reference.T), k - 1, axis=1)[:, k - 1]

        def votes(vectors: np.ndarray) -> np.ndarray:
            similarity = vectors @ seeds.T
            return np.where(similarity >= radius[None, :], similarity, 0.0).sum(axis=1)
        return votes
    centre = normalise(seeds.mean(axis=0, keepdims=True))[0]
    return lambda vectors: vectors @ centre


def vector_validation(strategy: str, seed_vectors: np.ndarray, sample: np.ndarray, random_seed: int, population: int,
                      clusters: int = 1, k_per_seed: int = 10) -> Validation | None:
    """Out-of-fold scores of an embedding strategy (centroid, knn-vote, multi-centroid, classifier)."""
    if len(seed_vectors) < MIN_VALIDATION_SEEDS or len(sample) < 2 * FOLDS:
        return None
    rng = np.random.default_rng(random_seed)
    if len(seed_vectors) > VALIDATION_SEEDS_MAX:
        seed_vectors = seed_vectors[rng.choice(len(seed_vectors), VALIDATION_SEEDS_MAX, replace=False)]
    seed_fold = rng.permutation(len(seed_vectors)) % FOLDS
    unlabelled_fold = rng.permutation(len(sample)) % FOLDS
    held_seeds, held_unlabelled = [], []
    for fold in range(FOLDS):
        score = fold_scorer(strategy, seed_vectors[seed_fold != fold], sample[unlabelled_fold != fold], sample,
                            random_seed, population, clusters, k_per_seed)
        held_seeds.append(score(seed_vectors[seed_fold == fold]))
        held_unlabelled.append(score(sample[unlabelled_fold == fold]))
    return Validation(np.concatenate(held_seeds), np.concatenate(held_unlabelled))


# --- the backtest, the table and the picture -------------------------------------------

def latest_backtest(serving_path: Path, name: str, strategy: str) -> BacktestCurve | None:
    """The latest backtest named `name` that ran `strategy` (method model:<strategy>), from the serving file."""
    if not Path(serving_path).exists():
        return None
    with connect_serving(serving_path) as con:
        if not con.execute("select count(*) from information_schema.tables where table_name = 'audience_backtests'").fetchall()[0][0]:
            return None
        rows = con.execute("""
            select backtest_id, size_percent, precision_mean, recall_mean, lift_mean from audience_backtests
            where backtest_id = (select max(backtest_id) from audience_backtests where name = ? and method = ?)
              and method = ? order by size_percent""", [name, f"model:{strategy}", f"model:{strategy}"]).fetchall()
    if not rows:
        return None
    columns = list(zip(*rows))
    return BacktestCurve(int(rows[0][0]), *(np.array(c, np.float64) for c in columns[1:]))


def derived_curve(parent: pa.Table, kept_scores: np.ndarray, population: int) -> pa.Table:
    """The curve of an audience derived by removing customers another audience took (`overlap --disjoint`).

    The customers left keep their parent's scores and order, so the expectations stay the parent's at
    each share (interpolated in log share at the new size, as `Validation.lift` does); `min_score` is
    read from the kept ranking where it reaches that size."""
    rows = [r for r in parent.to_pylist() if r["size"] != len(kept_scores)]
    shares = np.log([r["share_of_population"] for r in rows]) if rows else np.array([])
    share = len(kept_scores) / population
    at_size = {"size": len(kept_scores), "share_of_population": share, "source": rows[-1]["source"] if rows else UNVALIDATED}
    for column in ("expected_precision", "expected_recall", "expected_lift"):
        known = [(x, r[column]) for x, r in zip(shares, rows) if r[column] is not None]
        at_size[column] = float(np.interp(np.log(share), *zip(*known))) if known else None
    for row in rows + [at_size]:
        row["min_score"] = float(kept_scores[row["size"] - 1]) if row["size"] <= len(kept_scores) else row.get("min_score")
    rows = sorted(rows + [at_size], key=lambda r: r["size"])
    return pa.Table.from_pylist(rows, schema=CURVE_SCHEMA)


def write_reach(con: duckdb.DuckDBPyConnection, audience_id: int, curve: pa.Table) -> None:
    """Rows of audience_reach_curve for one audience version (inside a publish swap)."""
    from lookalike_cli.audiences.publish import insert_rows

    rows = curve.add_column(0, "audience_id", pa.array(np.full(curve.num_rows, audience_id), pa.int64()))
    insert_rows(con, "audience_reach_curve", rows, REACH_DDL)


def reach_png_dir(serving_path: Path) -> Path:
    """The folder of reach-curve pictures, beside the serving file: <serving file stem>_reach_curves/."""
    serving_path = Path(serving_path)
    return serving_path.with_name(f"{serving_path.stem}_reach_curves")


def reach_png_path(serving_path: Path, name: str, version: int) -> Path:
    """Where an audience version's reach-curve picture goes."""
    from lookalike_cli.audiences.publish import safe_file_name

    return reach_png_dir(serving_path) / f"{safe_file_name(name)}_v{version}.png"


def plot_reach(curve: pa.Table, title: str, published: int, population: int, path: Path) -> None:
    """Expected lift (and min score) against the share of the population, the published size marked."""
    # The object API, not pyplot: no global figure state (it may draw on a publish's background thread)
    # and half a second less of imports.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = curve.to_pylist()
    share = [100 * r["share_of_population"] for r in rows]
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    lifts = [(s, r["expected_lift"]) for s, r in zip(share, rows) if r["expected_lift"] is not None]
    if lifts:
        ax.plot(*zip(*lifts), marker="o", label="expected lift")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="random (lift 1)")
    ax.axvline(100 * published / population, color="tab:red", linewidth=1,
               label=f"published size ({published:,})")
    ax.set_xscale("log")
    ax.set_xticks(share, [f"{s:.2g}%" for s in share], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("audience size (% of population)")
    ax.set_ylabel("expected lift")
    scores = [(s, r["min_score"]) for s, r in zip(share, rows) if r["min_score"] is not None]
    if scores:
        twin = ax.twinx()
        twin.plot(*zip(*scores), color="tab:green", linestyle=":", marker=".", label="min score")
        twin.set_ylabel("min score at that size")
        twin.legend(fontsize=7, loc="upper center")
    sources = sorted({r["source"] for r in rows})
    ax.set_title(f"{title} ({', '.join(sources)})", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.subplots_adjust(left=0.12, right=0.88, bottom=0.13, top=0.9)  # tight_layout would double the time of a publish
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def read_reach(con: duckdb.DuckDBPyConnection, audience_id: int) -> pa.Table | None:
    """An audience version's curve from the serving file (None in a file published before curves existed)."""
    if not con.execute("select count(*) from information_schema.tables where table_name = 'audience_reach_curve'").fetchall()[0][0]:
        return None
    return con.sql(
        "select size, round(share_of_population, 4) as share_of_population, round(min_score, 4) as min_score, "
        "round(expected_precision, 4) as expected_precision, round(expected_recall, 3) as expected_recall, "
        "round(expected_lift, 2) as expected_lift, source from audience_reach_curve where audience_id = $id order by size",
        params={"id": audience_id}).to_arrow_table()

