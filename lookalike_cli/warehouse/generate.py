"""Synthetic raw tables with planted structure: the project's ground truth.

What is planted (tests and benchmarks rely on it; README "Generated data" documents it). Day d is
`start_date + d`; `label_day = int(days * (1 - label_fraction))` (day 292 of 365 by default) starts
the label period, the last 20% of the days.

Customers and their baskets:
- a two-level taxonomy: `departments` x `categories_per_department` categories;
- `segments` latent customer segments, each a sparse Dirichlet preference over categories
  concentrated in three "home" departments chosen by department popularity, so popular departments
  are home to several segments and segments overlap; each customer has a primary segment
  (`raw.planted_segments.segment_id`) and, with probability `secondary_probability` (0.5), a
  secondary one mixed in with weight 0.15-0.5;
- every order line comes from one of three sources: the population-wide staples basket
  (`staples_share`, 30%), one of the customer's three personal favourite categories
  (`favourites_share`, 10%), or the customer's segment mix (the rest). A customer's category shares
  therefore carry the segment, diluted and noisy, never a clean copy of it;
- demographics (gender, age, income, education, occupation) drawn 70% from a per-segment
  distribution and 30% uniformly; 60% of a segment's customers live in its three home cities,
  so location text carries real signal;
- activity: a per-customer order-rate multiplier, log-normal with log-sd `activity_sigma` (1.0) and
  mean 1, times a per-segment rate (~1.5 orders a month) and basket size: heavy-tailed like a retail
  panel (p90/p50 of order lines ~4-5x, 35-85 lines per customer depending on the seed);
  ~3% of customers never order;
- lapsing: a customer stops ordering, visiting and engaging at a uniform day of their history with
  probability ~`lapse_probability` (30%; logistic, likelier for light customers), so recency matters;
- preferences drift over time towards a second per-segment preference (up to `drift` at the end),
  so the label window is not a copy of the feature window;
- dirty rows: ~1% returns (negative quantity and amount), ~0.3% lines with a null category,
  ~3% customers with no orders at all, ~1% customers in `raw.opt_outs`.

Conversions, `raw.planted_conversions (conversion_name, customer_id, converted_at, conversion_value)`,
one row per converter and kind. Each is a Bernoulli draw of a logistic of latent preference, log activity
(`log a`), recency and N(0, 1) noise, so preference, activity and recency all matter and nothing
is separable; base rates after the cutoff are 1-10% of customers:
- `segment_response`: a campaign sent on `label_day`, aimed at segment RESPONSE_SEGMENT's (1) taste:
  logit = -4.0 + 1.0 z(affinity) + 1.0 log a - 2 [lapsed or not yet signed up on label_day] + noise,
  affinity = the customer's segment mix of the cosine between segment preferences and segment 1's.
  converted_at = label_day + Exponential(7 days). ~3-4.5% of customers.
- `category_adoption`: the first purchase of one target category (the top category of the most
  popular department that the segments drift towards; no customer buys it any other way):
  logit = -3.0 + 2.0 z(drifted affinity to the target's department) + 0.5 log a + noise; adoption
  day = start + sqrt(U) * (days - start) (adoption accelerates), kept only if the customer has not
  lapsed by then. converted_at is exactly the timestamp of an order line of the target category,
  the adopter's first (never a return or a null category); afterwards 8% of the adopter's lines are
  the target. ~5-14% of customers in all (seed-dependent), ~1.5-4.5% after label_day.
- `high_value_next`: customers active on label_day who upgrade during the first half of the label
  period: logit = -4.3 + 1.5 z(latent value segment mix: segment price level + noise) + 0.6 log a +
  noise. After converted_at the customer orders 2.5x as often at 1.4x the prices. ~2-3% of customers.
- `conversion_value` (every kind): what the conversion is worth, log-normal around the customer's
  latent spend propensity: VALUE_SCALE * exp(log price level + 0.5 z(latent value segment mix) +
  0.5 log a + N(0, VALUE_NOISE)), in the currency of order_lines.amount (converters' median ~30-60 by
  kind, p90/p50 ~3-5x), so high-value converters are the pricier, more active, high-value-segment
  ones, and the value is only partly predictable. Drawn from its own random stream ([seed, chunk, VALUE_STREAM]): every other
  table is the same with or without it. `planted_value_holdouts` gives each kind with its values.

Recommended backtest (benchmarks/bench_generated_separation.py does this on the raw tables):
features from order lines before `cutoff = start_date + label_day`; converters = a kind's rows with
converted_at >= cutoff; for category_adoption the customers with converted_at < cutoff (earlier
buyers) are not candidates, and make the natural seed ("seed = earlier buyers, converters = later
first buyers"). Planted segment 0 is a non-time-based converter set.

Everything is vectorised numpy, written to DuckDB in Arrow chunks of customers, so 1M
customers (~45M order lines) takes minutes; the same --seed gives the same tables.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.warehouse.connection import connection, registered, transaction

DEPARTMENTS = [
    "Produce", "Dairy", "Bakery", "Meat & Seafood", "Frozen", "Pantry", "Snacks", "Beverages",
    "Beer & Wine", "Household", "Personal Care", "Baby", "Pet", "Health", "Electronics",
    "Home & Kitchen", "Garden", "Toys", "Sports & Outdoors", "Apparel", "Books & Media",
    "Office", "Automotive", "Beauty",
]
CATEGORY_STYLES = [
    "Essentials", "Premium", "Organic", "Value Packs", "Seasonal", "Imported", "Kids",
    "Family Size", "Single Serve", "Specialty", "Store Brand", "Gifts", "Eco", "Classics",
    "New Arrivals", "Bulk", "Regional", "Diet & Light", "Limited Edition", "Accessories",
]
RESPONSE_SEGMENT = 1  # segment_response's campaign is aimed at this segment's taste
VALUE_SCALE, VALUE_NOISE = 40.0, 0.5  # conversion_value: median scale and log-sd of its noise
VALUE_STREAM = 1  # conversion_value's noise comes from its own stream, so other draws are unchanged
CONVERSION_KINDS = ("segment_response", "category_adoption", "high_value_next")
GENDERS = ["female", "male", "nonbinary"]
AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
INCOME_BANDS = ["<25K", "25-49K", "50-74K", "75-99K", "100-149K", "150K+"]
EDUCATIONS = ["high school", "some college", "bachelor", "master", "doctorate"]
OCCUPATIONS = ["student", "service", "trades", "office", "professional", "management", "retired", "homemaker"]
STATES = [
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS",
    "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY",
    "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV",
    "WI", "WY",
]
CITY_PREFIXES = ["Spring", "River", "Oak", "Maple", "Cedar", "Lake", "Hill", "Green", "Fair", "Clear",
                 "Brook", "Stone", "Pine", "Ash", "Elm", "Red", "Silver", "North", "West", "Glen"]
CITY_SUFFIXES = ["field", "ton", "ville", "port", "wood", "dale", "burg", "view", "ford", "haven"]
STREET_NAMES = ["Main", "Park", "Washington", "Lincoln", "Church", "High", "Mill", "Union", "Market",
                "Water", "Center", "Lake", "Hill", "School", "Forest", "Sunset", "Highland", "Walnut",
                "Franklin", "Jackson", "Madison", "Chestnut", "Prospect", "Spring"]
STREET_SUFFIXES = ["St", "Ave", "Rd", "Blvd", "Ln", "Dr", "Ct", "Way"]


@dataclass(frozen=True)
class GeneratorConfig:
    customers: int = 20_000
    days: int = 365
    seed: int = 7
    segments: int = 12
    departments: int = 20
    categories_per_department: int = 15
    cities_per_state: int = 6
    zips_per_city: int = 4
    drift: float = 0.3
    start_date: date = date(2025, 1, 1)
    chunk_customers: int = 100_000
    # Where a customer's order lines come from (the rest: their segment mix's preference).
    staples_share: float = 0.3  # the population-wide staples basket everyone buys
    favourites_share: float = 0.1  # three personal favourite categories per customer
    secondary_probability: float = 0.5  # customers mixing in a second segment
    activity_sigma: float = 1.0  # log-sd of the per-customer order rate (heavy-tailed, mean kept)
    lapse_probability: float = 0.3  # mean share of customers who stop ordering part-way
    label_fraction: float = 0.2  # the campaign / upgrade period: the last 20% of the days

    def validate(self) -> None:
        if self.customers < 10:
            raise ParameterError("{customers} must be at least 10.", "customers")
        if self.days < 14:
            raise ParameterError("{days} must be at least 14 (features and labels need two windows).", "days")
        if not 2 <= self.segments <= 200:
            raise ParameterError("{segments} must be between 2 and 200.", "segments")
        if not 1 <= self.departments <= len(DEPARTMENTS):
            raise LookalikeError(f"departments must be between 1 and {len(DEPARTMENTS)}.")
        if not 1 <= self.categories_per_department <= len(CATEGORY_STYLES):
            raise LookalikeError(f"categories_per_department must be between 1 and {len(CATEGORY_STYLES)}.")
        if self.departments * self.categories_per_department < 2:
            raise LookalikeError("the taxonomy needs at least 2 categories (one is category_adoption's target).")
        if not (0 <= self.staples_share and 0 <= self.favourites_share and self.staples_share + self.favourites_share < 1):
            raise LookalikeError("staples_share and favourites_share must be >= 0 and sum to less than 1.")
        if not 0 <= self.secondary_probability <= 1:
            raise LookalikeError("secondary_probability must be between 0 and 1.")
        if not 0 <= self.lapse_probability < 1:
            raise LookalikeError("lapse_probability must be in [0, 1).")
        if not 0 <= self.activity_sigma <= 3:
            raise LookalikeError("activity_sigma must be between 0 and 3.")
        if not 0.05 <= self.label_fraction <= 0.5:
            raise LookalikeError("label_fraction must be between 0.05 and 0.5.")


@dataclass
class World:
    """Everything shared by all customers: taxonomy, segments, geography, prices."""

    category_names: np.ndarray
    category_departments: np.ndarray
    segment_preferences: np.ndarray  # (S, C) feature-time preference
    segment_drifted: np.ndarray  # (S, C) preference the segment drifts towards
    segment_weights: np.ndarray  # (S,) population share
    segment_order_rate: np.ndarray  # (S,) orders per month
    segment_basket: np.ndarray  # (S,) mean lines per order
    segment_price_level: np.ndarray  # (S,)
    segment_visit_rate: np.ndarray  # (S,) visits per order
    segment_demographics: dict[str, np.ndarray]  # attribute -> (S, K) probabilities
    segment_home_cities: np.ndarray  # (S, 3) city indices
    staples: np.ndarray  # (C,) the population-wide staples basket
    target_category: int  # category_adoption's category (nobody buys it before adopting)
    segment_similarity: np.ndarray  # (S, S) cosine of the segments' preferences
    segment_adoption: np.ndarray  # (S,) z-scored drifted affinity to the target category's department
    segment_value: np.ndarray  # (S,) z-scored latent value propensity (price level + noise)
    category_price: np.ndarray  # (C,)
    city_names: np.ndarray
    city_states: np.ndarray
    city_zip_base: np.ndarray


DEMOGRAPHIC_VALUES = {
    "gender": GENDERS,
    "age_band": AGE_BANDS,
    "income_band": INCOME_BANDS,
    "education": EDUCATIONS,
    "occupation": OCCUPATIONS,
}


def build_world(config: GeneratorConfig, rng: np.random.Generator) -> World:
    departments = DEPARTMENTS[: config.departments]
    styles = CATEGORY_STYLES[: config.categories_per_department]
    category_names = np.array([f"{d} / {s}" for d in departments for s in styles])
    category_departments = np.repeat(np.arange(len(departments)), len(styles))
    n_categories = len(category_names)

    def sparse_preference(home: np.ndarray) -> np.ndarray:
        in_home = np.isin(category_departments, home)
        preference = np.zeros(n_categories)
        preference[in_home] = 0.9 * rng.dirichlet(np.full(in_home.sum(), 0.15))
        preference += 0.1 * rng.dirichlet(np.full(n_categories, 0.1))
        return preference / preference.sum()

    # Segments choose home departments by popularity, so popular departments are home to several
    # segments and segments overlap, as they do in a real store.
    popularity = rng.dirichlet(np.full(len(departments), 1.5))
    homes = [rng.choice(len(departments), size=min(3, len(departments)), replace=False, p=popularity)
             for _ in range(config.segments)]
    preferences = np.stack([sparse_preference(h) for h in homes])
    drifted = np.stack([sparse_preference(h) for h in homes])
    staples = popularity[category_departments] ** 2 * rng.gamma(0.5, 1.0, n_categories)

    # category_adoption's target: the category of the most popular department that the segments
    # drift towards most. Nobody buys it except through adoption (README "Generated data").
    target_department = int(np.argmax(popularity))
    in_target = category_departments == target_department
    target = int(np.flatnonzero(in_target)[np.argmax(drifted[:, in_target].sum(axis=0))])
    adoption = drifted[:, in_target].sum(axis=1) + drifted[:, target] * 5
    for matrix in (preferences, drifted):
        matrix[:, target] = 0.0
        matrix /= matrix.sum(axis=1, keepdims=True)
    staples[target] = 0.0
    staples /= staples.sum()
    unit = preferences / np.linalg.norm(preferences, axis=1, keepdims=True)
    price_level = np.exp(rng.normal(0.0, 0.35, config.segments))
    value = np.log(price_level) / 0.35 + rng.normal(0.0, 1.0, config.segments)

    def zscore(values: np.ndarray) -> np.ndarray:
        return (values - values.mean()) / (values.std() + 1e-12)

    n_cities = len(STATES) * config.cities_per_state
    city_names = np.array([
        f"{CITY_PREFIXES[i % len(CITY_PREFIXES)]}{CITY_SUFFIXES[(i // len(CITY_PREFIXES)) % len(CITY_SUFFIXES)]}"
        + ("" if i < len(CITY_PREFIXES) * len(CITY_SUFFIXES) else f" {i // (len(CITY_PREFIXES) * len(CITY_SUFFIXES)) + 1}")
        for i in rng.permutation(n_cities)
    ])
    city_states = np.repeat(np.arange(len(STATES)), config.cities_per_state)
    city_zip_base = 10000 + np.arange(n_cities) * config.zips_per_city * 3

    return World(
        category_names=category_names,
        category_departments=category_departments,
        segment_preferences=preferences,
        segment_drifted=drifted,
        segment_weights=rng.dirichlet(np.full(config.segments, 4.0)),
        segment_order_rate=np.exp(rng.normal(math.log(1.5), 0.45, config.segments)),
        segment_basket=rng.uniform(1.5, 5.0, config.segments),
        segment_price_level=price_level,
        segment_visit_rate=rng.uniform(0.8, 2.0, config.segments),
        segment_demographics={
            name: rng.dirichlet(np.full(len(values), 0.7), size=config.segments)
            for name, values in DEMOGRAPHIC_VALUES.items()
        },
        segment_home_cities=np.stack([rng.choice(n_cities, size=3, replace=False) for _ in range(config.segments)]),
        staples=staples,
        target_category=target,
        segment_similarity=unit @ unit.T,
        segment_adoption=zscore(adoption),
        segment_value=zscore(value),
        category_price=np.exp(rng.normal(math.log(6.0), 0.8, n_categories)),
        city_names=city_names,
        city_states=city_states,
        city_zip_base=city_zip_base,
    )


def _sample_grouped(rng: np.random.Generator, group: np.ndarray, cdfs: np.ndarray) -> np.ndarray:
    """Draw one category per row from the distribution of its group (inverse CDF per group)."""
    out = np.empty(len(group), dtype=np.int32)
    order = np.argsort(group, kind="stable")
    sorted_groups = group[order]
    bounds = np.flatnonzero(np.diff(sorted_groups)) + 1
    for chunk in np.split(order, bounds):
        if len(chunk) == 0:
            continue
        cdf = cdfs[group[chunk[0]]]
        draws = np.searchsorted(cdf, rng.random(len(chunk)) * cdf[-1], side="right")
        out[chunk] = np.minimum(draws, cdfs.shape[1] - 1)
    return out


def _customers_chunk(config: GeneratorConfig, world: World, rng: np.random.Generator, first_id: int, n: int) -> dict:
    segments = config.segments
    customer_id = np.arange(first_id, first_id + n, dtype=np.int64)
    primary = rng.choice(segments, size=n, p=world.segment_weights)
    has_secondary = rng.random(n) < config.secondary_probability
    secondary = np.where(has_secondary, (primary + rng.integers(1, segments, n)) % segments, -1)
    secondary_weight = np.where(has_secondary, rng.uniform(0.15, 0.5, n), 0.0)

    columns: dict[str, np.ndarray] = {"customer_id": customer_id}
    for name, values in DEMOGRAPHIC_VALUES.items():
        probabilities = world.segment_demographics[name][primary]
        cumulative = probabilities.cumsum(axis=1)
        from_segment = (rng.random(n)[:, None] > cumulative).sum(axis=1)
        uniform = rng.integers(0, len(values), n)
        chosen = np.where(rng.random(n) < 0.7, np.minimum(from_segment, len(values) - 1), uniform)
        columns[name] = np.array(values, dtype=object)[chosen]

    n_cities = len(world.city_names)
    home = world.segment_home_cities[primary, rng.integers(0, 3, n)]
    city = np.where(rng.random(n) < 0.6, home, rng.integers(0, n_cities, n))
    zip_code = world.city_zip_base[city] + rng.integers(0, config.zips_per_city, n) * 3
    columns["street"] = np.char.add(
        np.char.add(rng.integers(1, 9999, n).astype(str), " "),
        np.char.add(
            np.array(STREET_NAMES)[rng.integers(0, len(STREET_NAMES), n)],
            np.char.add(" ", np.array(STREET_SUFFIXES)[rng.integers(0, len(STREET_SUFFIXES), n)]),
        ),
    ).astype(object)
    columns["city"] = world.city_names[city].astype(object)
    columns["state"] = np.array(STATES)[world.city_states[city]].astype(object)
    columns["zip"] = np.char.zfill(zip_code.astype(str), 5).astype(object)

    signup_offset = rng.integers(-730, int(config.days * 0.5), n)
    columns["signup_date"] = np.datetime64(config.start_date) + signup_offset.astype("timedelta64[D]")

    # Missing demographics, as in a real CRM.
    for name in DEMOGRAPHIC_VALUES:
        missing = rng.random(n) < 0.05
        columns[name] = np.where(missing, None, columns[name])

    # Heavy-tailed order rates (log-normal, mean 1), as in retail panels: most customers order a
    # few times, a few order every week.
    sigma = config.activity_sigma
    activity = np.exp(rng.normal(-sigma * sigma / 2, sigma, n))
    activity[rng.random(n) < 0.03] = 0.0  # customers who never ordered
    # Three personal favourite categories (never the adoption target).
    n_categories = len(world.category_names)
    favourites = rng.integers(0, n_categories - 1, (n, 3))
    favourites += favourites >= world.target_category
    # Lapsing: light customers are likelier to stop ordering, at a uniform day of their history.
    start_day = np.maximum(signup_offset, 0)
    lapses = np.zeros(n, dtype=bool)
    if config.lapse_probability > 0:
        lapse_logit = math.log(config.lapse_probability / (1 - config.lapse_probability)) - 0.5 * np.log(np.maximum(activity, 1e-3))
        lapses = rng.random(n) < _logistic(lapse_logit)
    end_day = np.where(lapses, start_day + (rng.random(n) * (config.days - start_day)).astype(np.int64), config.days)
    chunk = {
        "customers": columns,
        "primary": primary,
        "secondary": secondary,
        "secondary_weight": secondary_weight,
        "activity": activity,
        "favourites": favourites,
        "signup_offset": signup_offset,
        "start_day": start_day,
        "end_day": end_day,
        "price_level": np.exp(rng.normal(0.0, 0.25, n)),
    }
    chunk.update(_conversions(config, world, rng, chunk))
    return chunk


def _logistic(logit: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(logit, -30, 30)))


def _segment_mix(chunk: dict, per_segment: np.ndarray) -> np.ndarray:
    """Per customer: a per-segment quantity mixed over the customer's primary and secondary segments."""
    primary, secondary, weight = chunk["primary"], chunk["secondary"], chunk["secondary_weight"]
    return (1 - weight) * per_segment[primary] + weight * per_segment[np.where(secondary >= 0, secondary, primary)]


def _log_activity(chunk: dict) -> np.ndarray:
    return np.log(np.maximum(chunk["activity"], 0.02))  # never-orderers: as a very light customer


def _conversions(config: GeneratorConfig, world: World, rng: np.random.Generator, chunk: dict) -> dict[str, np.ndarray]:
    """Latent conversion days (-1: none) and seconds per customer; see the module docstring."""
    n = len(chunk["primary"])
    log_activity = _log_activity(chunk)
    start, end = chunk["start_day"], chunk["end_day"]
    label_day = int(config.days * (1 - config.label_fraction))
    active_at_label = (start <= label_day) & (end > label_day) & (chunk["activity"] > 0)
    label_days = config.days - label_day

    # segment_response: a campaign aimed at segment RESPONSE_SEGMENT's taste, sent on label_day.
    similarity = world.segment_similarity[:, RESPONSE_SEGMENT]
    affinity = (_segment_mix(chunk, similarity) - similarity.mean()) / (similarity.std() + 1e-12)
    logit = -4.0 + 1.0 * affinity + 1.0 * log_activity + np.where(active_at_label, 0.0, -2.0) + rng.normal(0, 1.0, n)
    responds = rng.random(n) < _logistic(logit)
    response_day = np.where(responds, np.minimum(label_day + rng.exponential(7.0, n).astype(np.int64), config.days - 1), -1)

    # category_adoption: first purchase of the target category, likelier for customers whose segment
    # mix drifts towards it; adoption spreads over the history, faster towards the end (drift).
    logit = -3.0 + 2.0 * _segment_mix(chunk, world.segment_adoption) + 0.5 * log_activity + rng.normal(0, 1.0, n)
    adopts = rng.random(n) < _logistic(logit)
    adoption_day = start + (np.sqrt(rng.random(n)) * (config.days - start)).astype(np.int64)
    adoption_day = np.where(adopts & (adoption_day < end) & (chunk["activity"] > 0), adoption_day, -1)

    # high_value_next: an upgrade in the first half of the label period, after which the customer
    # orders 2.5x as often at 1.4x the prices; driven by activity and a latent value segment mix.
    logit = -4.3 + 1.5 * _segment_mix(chunk, world.segment_value) + 0.6 * log_activity + rng.normal(0, 1.0, n)
    upgrades = active_at_label & (rng.random(n) < _logistic(logit))
    upgrade_day = np.where(upgrades, label_day + (rng.random(n) * label_days / 2).astype(np.int64), -1)
    return {
        "response_day": response_day,
        "adoption_day": adoption_day,
        "upgrade_day": upgrade_day,
        "conversion_seconds": rng.integers(6 * 3600, 22 * 3600, (n, 3)),
    }


def _conversion_values(world: World, chunk: dict, rng: np.random.Generator) -> np.ndarray:
    """(n, len(CONVERSION_KINDS)) conversion_value of each customer for each kind, were they to convert:
    log-normal around the latent spend propensity (module docstring). `rng` is the value stream only."""
    propensity = (np.log(chunk["price_level"]) + 0.5 * _segment_mix(chunk, world.segment_value)
                  + 0.5 * _log_activity(chunk))
    noise = rng.normal(0.0, VALUE_NOISE, (len(propensity), len(CONVERSION_KINDS)))
    return np.round(VALUE_SCALE * np.exp(propensity[:, None] + noise), 2)


ADOPTER_REPEAT = 0.08  # after adopting, this share of a customer's lines are the target category
UPGRADE_RATE, UPGRADE_PRICE = 2.5, 1.4  # high_value_next: order rate and price multipliers after the upgrade


def _events(
    config: GeneratorConfig,
    world: World,
    rng: np.random.Generator,
    chunk: dict,
    per_customer_rate: np.ndarray,
    lines_mean: np.ndarray | None,
    flatten: float,
    extra: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = (),
) -> dict[str, np.ndarray]:
    """Timestamped (customer, category) events: orders (with lines) or visits/engagements.

    Events fall uniformly in each customer's active days [start_day, end_day) (end_day: lapse).
    `extra` adds (owner, day, seconds, forced) events; the first line of a `forced` one is the
    adoption target (the adopter's first purchase of it)."""
    n = len(per_customer_rate)
    start_day, end_day = chunk["start_day"], chunk["end_day"]
    active_days = np.maximum(end_day - start_day, 0)
    counts = rng.poisson(per_customer_rate * active_days / 30.0)
    owner = np.repeat(np.arange(n), counts)
    day = start_day[owner] + (rng.random(len(owner)) * active_days[owner]).astype(np.int64)
    seconds = rng.integers(6 * 3600, 22 * 3600, len(owner))
    forced = np.zeros(len(owner), dtype=bool)
    if extra:
        owner = np.concatenate([owner, *(e[0] for e in extra)])
        day = np.concatenate([day, *(e[1] for e in extra)])
        seconds = np.concatenate([seconds, *(e[2] for e in extra)])
        forced = np.concatenate([forced, *(np.full(len(e[0]), e[3]) for e in extra)])
        order = np.lexsort((seconds, day, owner))
        owner, day, seconds, forced = owner[order], day[order], seconds[order], forced[order]
    if lines_mean is not None:
        lines = 1 + rng.poisson(np.maximum(lines_mean[owner] - 1, 0.1))
        event_index = np.repeat(np.arange(len(owner)), lines)
        first_line = np.zeros(len(event_index), dtype=bool)
        first_line[np.cumsum(lines) - lines] = True
        line_owner = owner[event_index]
        line_day = day[event_index]
        forced_line = first_line & forced[event_index]
    else:
        event_index = np.arange(len(owner))
        line_owner, line_day, forced_line = owner, day, forced

    m = len(line_owner)
    use_secondary = (chunk["secondary"][line_owner] >= 0) & (rng.random(m) < chunk["secondary_weight"][line_owner])
    segment = np.where(use_secondary, chunk["secondary"][line_owner], chunk["primary"][line_owner])
    drifted = rng.random(m) < config.drift * line_day / config.days
    source = rng.random(m)
    staple = source < config.staples_share
    favourite = ~staple & (source < config.staples_share + config.favourites_share)
    segments = world.segment_preferences.shape[0]
    group = np.where(staple, 2 * segments, segment * 2 + drifted)
    preferences = np.concatenate([
        np.stack([world.segment_preferences, world.segment_drifted], axis=1).reshape(-1, world.segment_preferences.shape[1]),
        world.staples[None, :],
    ])
    if flatten:
        preferences = (1 - flatten) * preferences + flatten / preferences.shape[1]
        preferences[:, world.target_category] = 0.0
    category = _sample_grouped(rng, group, np.cumsum(preferences, axis=1))
    category[favourite] = chunk["favourites"][line_owner[favourite], rng.integers(0, 3, int(favourite.sum()))]
    # Adopters keep buying the target category after their first purchase of it.
    adoption_day = chunk["adoption_day"][line_owner]
    repeat = (adoption_day >= 0) & (line_day > adoption_day) & (rng.random(m) < ADOPTER_REPEAT)
    category[repeat | forced_line] = world.target_category
    return {
        "owner": line_owner,
        "event_index": event_index,
        "day": line_day,
        "seconds": seconds[event_index],
        "segment": segment,
        "category": category,
        "forced": forced_line,
    }


def _timestamps(config: GeneratorConfig, day: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    base = np.datetime64(datetime.combine(config.start_date, datetime.min.time()), "s")
    return base + (day * 86400 + seconds).astype("timedelta64[s]")


def _labels(codes: np.ndarray, names, null: np.ndarray | None = None) -> pa.Array:
    """names[codes] as a dictionary-encoded Arrow column (null where `null`); DuckDB decodes it into
    the varchar column on insert. Millions of Python string objects per chunk were most of the
    generator's time."""
    indices = pa.array(codes.astype(np.int32), mask=null)
    return pa.DictionaryArray.from_arrays(indices, pa.array(list(names), pa.string()))


def _order_lines(config: GeneratorConfig, world: World, rng: np.random.Generator, chunk: dict, first_order_id: int) -> tuple[pa.Table, int]:
    primary = chunk["primary"]
    rate = world.segment_order_rate[primary] * chunk["activity"]
    # The adopter's first purchase of the target category, and the upgraded customers' extra orders.
    adopters = np.flatnonzero(chunk["adoption_day"] >= 0)
    upgraded = np.flatnonzero(chunk["upgrade_day"] >= 0)
    upgrade_days = np.maximum(chunk["end_day"][upgraded] - chunk["upgrade_day"][upgraded], 0)
    extra_counts = rng.poisson(rate[upgraded] * (UPGRADE_RATE - 1) * upgrade_days / 30.0)
    extra_owner = np.repeat(upgraded, extra_counts)
    extra_day = chunk["upgrade_day"][extra_owner] + (rng.random(len(extra_owner)) * upgrade_days.repeat(extra_counts)).astype(np.int64)
    events = _events(config, world, rng, chunk, rate, world.segment_basket[primary], flatten=0.0, extra=[
        (adopters, chunk["adoption_day"][adopters], chunk["conversion_seconds"][adopters, 1], True),
        (extra_owner, extra_day, rng.integers(6 * 3600, 22 * 3600, len(extra_owner)), False),
    ])
    m = len(events["owner"])
    quantity = 1 + rng.poisson(0.6, m)
    upgrade_day = chunk["upgrade_day"][events["owner"]]
    price = (world.category_price[events["category"]] * world.segment_price_level[events["segment"]]
             * chunk["price_level"][events["owner"]] * np.where((upgrade_day >= 0) & (events["day"] >= upgrade_day), UPGRADE_PRICE, 1.0)
             * np.exp(rng.normal(0, 0.2, m)))
    amount = np.round(quantity * price, 2)
    is_return = (rng.random(m) < 0.01) & ~events["forced"]
    quantity = np.where(is_return, -quantity, quantity)
    amount = np.where(is_return, -amount, amount)
    null_category = (rng.random(m) < 0.003) & ~events["forced"]
    category = _labels(events["category"], world.category_names, null_category)
    department = _labels(world.category_departments[events["category"]], DEPARTMENTS, null_category)
    table = pa.table({
        "customer_id": pa.array(chunk["customers"]["customer_id"][events["owner"]], pa.int64()),
        "order_id": pa.array(first_order_id + events["event_index"], pa.int64()),
        "ordered_at": pa.array(_timestamps(config, events["day"], events["seconds"]), pa.timestamp("s")),
        "category": category,
        "department": department,
        "quantity": pa.array(quantity, pa.int32()),
        "amount": pa.array(amount, pa.float64()),
    })
    orders = int(events["event_index"].max()) + 1 if m else 0
    return table, first_order_id + orders


def _visits(config: GeneratorConfig, world: World, rng: np.random.Generator, chunk: dict) -> pa.Table:
    primary = chunk["primary"]
    rate = world.segment_order_rate[primary] * world.segment_visit_rate[primary] * np.sqrt(chunk["activity"])
    events = _events(config, world, rng, chunk, rate, None, flatten=0.3)
    return pa.table({
        "customer_id": pa.array(chunk["customers"]["customer_id"][events["owner"]], pa.int64()),
        "visited_at": pa.array(_timestamps(config, events["day"], events["seconds"]), pa.timestamp("s")),
        "category": _labels(events["category"], world.category_names),
    })


def _engagements(config: GeneratorConfig, world: World, rng: np.random.Generator, chunk: dict) -> pa.Table:
    # Campaign engagements (email/push clicks) are recorded at department level.
    rate = np.full(len(chunk["primary"]), 0.8) * (chunk["activity"] > 0)
    events = _events(config, world, rng, chunk, rate, None, flatten=0.2)
    return pa.table({
        "customer_id": pa.array(chunk["customers"]["customer_id"][events["owner"]], pa.int64()),
        "engaged_at": pa.array(_timestamps(config, events["day"], events["seconds"]), pa.timestamp("s")),
        "category": _labels(world.category_departments[events["category"]], DEPARTMENTS),
    })


RAW_TABLE_COLUMNS = {
    "customers": """customer_id bigint, signup_date date, gender varchar, age_band varchar, income_band varchar,
        education varchar, occupation varchar, street varchar, city varchar, state varchar, zip varchar""",
    "order_lines": """customer_id bigint, order_id bigint, ordered_at timestamp, category varchar, department varchar,
        quantity integer, amount double""",
    "visits": "customer_id bigint, visited_at timestamp, category varchar",
    "engagements": "customer_id bigint, engaged_at timestamp, category varchar",
    "opt_outs": "customer_id bigint, opted_out_at timestamp",
    "planted_segments": "customer_id bigint, segment_id integer, secondary_segment_id integer, secondary_weight double",
    "planted_conversions": "conversion_name varchar, customer_id bigint, converted_at timestamp, conversion_value double",
    "generator_runs": "generated_at timestamp, config varchar, customers bigint, order_lines bigint, seconds double",
}
# New tables are written under this prefix in `raw`, committed chunk by chunk, and renamed over the
# old ones in one final transaction. One transaction around all the inserts would be all-or-nothing
# too, but DuckDB keeps its uncommitted rows in memory: 6 GiB at 1M customers, 60 at 10M.
STAGING_PREFIX = "__generating_"


def _drop_staging(con) -> None:
    for (name,) in con.execute(
        "select table_name from information_schema.tables where table_schema = 'raw' and starts_with(table_name, ?)",
        [STAGING_PREFIX],
    ).fetchall():
        con.execute(f'drop table if exists raw."{name}"')


def _swap_in_staging(con) -> None:
    """Replace everything in `raw` by the staged tables, all or nothing."""
    with transaction(con):
        for name, kind in con.execute(
            "select table_name, table_type from information_schema.tables where table_schema = 'raw'"
        ).fetchall():
            if not name.startswith(STAGING_PREFIX):
                con.execute(f'drop {"view" if kind == "VIEW" else "table"} raw."{name}" cascade')
        for name in RAW_TABLE_COLUMNS:
            con.execute(f"alter table raw.{STAGING_PREFIX}{name} rename to {name}")


def generate_data(
    db_path: Path,
    customers: int = 20_000,
    days: int = 365,
    seed: int = 7,
    segments: int = 12,
    progress: Callable[[str], None] | None = print,
    **overrides,
) -> dict[str, int]:
    """Replace the `raw` schema of `db_path` with generated tables; return row counts.

    All or nothing: the new tables are staged and renamed over the old ones at the end, so on any
    failure the previous raw tables are left as they were. Memory is bounded by one chunk of
    `chunk_customers` customers whatever the total. Models built by dbt (other schemas) are not touched.
    """
    config = GeneratorConfig(customers=customers, days=days, seed=seed, segments=segments, **overrides)
    config.validate()
    rng = np.random.default_rng(seed)
    world = build_world(config, rng)
    say = progress or (lambda message: None)
    started = time.perf_counter()
    counts = {"customers": 0, "order_lines": 0, "visits": 0, "engagements": 0, "opt_outs": 0}
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    with connection(Path(db_path)) as con:
        con.execute("create schema if not exists raw")
        _drop_staging(con)  # left by a run that was killed
        for name, columns in RAW_TABLE_COLUMNS.items():
            con.execute(f"create table raw.{STAGING_PREFIX}{name} ({columns})")
    try:
        _write_chunks(Path(db_path), config, world, seed, counts, say, started)
        with connection(Path(db_path)) as con:
            _swap_in_staging(con)
    except BaseException:
        with connection(Path(db_path)) as con:
            _drop_staging(con)
        raise
    counts["seconds"] = round(time.perf_counter() - started, 2)
    return counts


def _planted_conversions(config: GeneratorConfig, chunk: dict) -> pa.Table:
    days = [chunk["response_day"], chunk["adoption_day"], chunk["upgrade_day"]]
    names, owners, timestamps, values = [], [], [], []
    for k, day in enumerate(days):
        who = np.flatnonzero(day >= 0)
        names.append(np.full(len(who), k, dtype=np.int32))
        owners.append(chunk["customers"]["customer_id"][who])
        timestamps.append(_timestamps(config, day[who], chunk["conversion_seconds"][who, k]))
        values.append(chunk["conversion_value"][who, k])
    return pa.table({
        "conversion_name": _labels(np.concatenate(names), CONVERSION_KINDS),
        "customer_id": pa.array(np.concatenate(owners), pa.int64()),
        "converted_at": pa.array(np.concatenate(timestamps), pa.timestamp("s")),
        "conversion_value": pa.array(np.concatenate(values), pa.float64()),
    })


def _write_chunks(db_path: Path, config: GeneratorConfig, world: World, seed: int, counts: dict, say, started: float) -> None:
    next_order_id = 1
    for first in range(0, config.customers, config.chunk_customers):
        n = min(config.chunk_customers, config.customers - first)
        chunk_rng = np.random.default_rng([seed, first])
        chunk = _customers_chunk(config, world, chunk_rng, first + 1, n)
        chunk["conversion_value"] = _conversion_values(world, chunk, np.random.default_rng([seed, first, VALUE_STREAM]))
        customers_table = pa.table({
            "customer_id": pa.array(chunk["customers"]["customer_id"], pa.int64()),
            "signup_date": pa.array(chunk["customers"]["signup_date"], pa.date32()),
            **{name: pa.array(chunk["customers"][name], pa.string()) for name in DEMOGRAPHIC_VALUES},
            **{name: pa.array(chunk["customers"][name], pa.string()) for name in ("street", "city", "state", "zip")},
        })
        order_lines, next_order_id = _order_lines(config, world, chunk_rng, chunk, next_order_id)
        visits = _visits(config, world, chunk_rng, chunk)
        engagements = _engagements(config, world, chunk_rng, chunk)
        opted_out = chunk_rng.random(n) < 0.01
        opt_outs = pa.table({
            "customer_id": pa.array(chunk["customers"]["customer_id"][opted_out], pa.int64()),
            "opted_out_at": pa.array(
                _timestamps(config, chunk_rng.integers(0, config.days, opted_out.sum()), np.zeros(opted_out.sum(), np.int64)),
                pa.timestamp("s"),
            ),
        })
        planted = pa.table({
            "customer_id": pa.array(chunk["customers"]["customer_id"], pa.int64()),
            "segment_id": pa.array(chunk["primary"], pa.int32()),
            "secondary_segment_id": pa.array(np.where(chunk["secondary"] >= 0, chunk["secondary"], None), pa.int32()),
            "secondary_weight": pa.array(chunk["secondary_weight"], pa.float64()),
        })
        conversions = _planted_conversions(config, chunk)
        # A connection per chunk: a long-lived one grew by ~50 MB per 100k customers (DuckDB keeps what
        # it wrote cached), 6.9 GiB at 10M; closing it after each chunk keeps the peak flat.
        with connection(db_path) as con:
            for name, table in (
                ("customers", customers_table), ("order_lines", order_lines), ("visits", visits),
                ("engagements", engagements), ("opt_outs", opt_outs), ("planted_segments", planted),
                ("planted_conversions", conversions),
            ):
                with registered(con, "generated_chunk", table):
                    con.execute(f"insert into raw.{STAGING_PREFIX}{name} select * from generated_chunk")
                if name in counts:
                    counts[name] += table.num_rows
        done = first + n
        elapsed = time.perf_counter() - started
        say(
            f"  generated {done:,}/{config.customers:,} customers, {counts['order_lines']:,} order lines "
            f"({done / elapsed:,.0f} customers/s, ETA {elapsed / done * (config.customers - done):.0f}s)"
        )
    seconds = time.perf_counter() - started
    with connection(db_path) as con:
        con.execute(
            f"insert into raw.{STAGING_PREFIX}generator_runs values (current_timestamp, ?, ?, ?, ?)",
            [str({k: str(v) for k, v in asdict(config).items()}), counts["customers"], counts["order_lines"], seconds],
        )



def conversion_cutoff(config: GeneratorConfig) -> date:
    """The first day of the planted conversions' period (`start_date + label_day`): a backtest of
    them is as of this date (`lookalike backtest --as-of`), so nothing from the period feeds it."""
    from datetime import timedelta

    return config.start_date + timedelta(days=int(config.days * (1 - config.label_fraction)))


def planted_holdouts(config: GeneratorConfig) -> tuple[date, list[tuple[str, str, str | None]]]:
    """(as_of, [(name, converters_sql, population_sql)]): the three planted conversions as backtest
    holdouts, defined as the module docstring recommends (SQL over the raw tables)."""
    cutoff = conversion_cutoff(config)
    after = f"converted_at >= timestamp '{cutoff}'"

    def converters(kind: str) -> str:
        return f"select customer_id from raw.planted_conversions where conversion_name = '{kind}' and {after}"

    earlier_adopters = ("select customer_id from raw.planted_conversions where conversion_name = 'category_adoption' "
                        f"and converted_at < timestamp '{cutoff}'")
    return cutoff, [
        ("segment_response", converters("segment_response"), None),
        # Earlier adopters already bought the category: they are not candidates.
        ("category_adoption", converters("category_adoption"),
         f"select customer_id from raw.customers where customer_id not in ({earlier_adopters})"),
        ("high_value_next", converters("high_value_next"), None),
    ]


def planted_value_holdouts(config: GeneratorConfig) -> tuple[date, list[tuple[str, str, str | None, str]]]:
    """`planted_holdouts` with each kind's values: (as_of, [(name, converters_sql, population_sql, value_sql)]),
    value_sql = the converters' conversion_value (a value-based holdout: backtest value captured)."""
    cutoff, holdouts = planted_holdouts(config)
    return cutoff, [
        (name, converters, population,
         f"select customer_id, conversion_value as value from raw.planted_conversions where conversion_name = '{name}' "
         f"and converted_at >= timestamp '{cutoff}'")
        for name, converters, population in holdouts
    ]
