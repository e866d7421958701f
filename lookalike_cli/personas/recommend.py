"""Item recommendations on a customer-persona-item graph, after the GPLR paper (`shared/seeds/002_*`).

The paper's first application of personas: add the (propagated) personas as nodes between
customers and items, and train a LightGCN-family recommender on the tripartite graph.

1. Interactions: distinct (customer, item) pairs from the order lines (returns and null items
   left out), the item being any column of the order-line table (`category` by default; on
   Complete Journey also `product_id`). The time windows are the warehouse's (`int_time_windows`):
   with `window="feature"` the model learns from the feature window [data start, feature_end_date)
   and is evaluated on the items customers buy in the label window after it (the natural held-out
   set); `window="serving"` learns from everything before as_of_date and has no held-out set.
2. Graph: customers and items (edge per purchased pair) and, for `persona-lightgcn`, the personas
   of `customer_personas` (an edge from each customer to its top `persona_edges` personas, weighted
   by their probabilities, scaled by `persona_weight`). Symmetric normalisation D^-1/2 A D^-1/2.
3. Models: `popularity` (items by how many customers bought them), `mf` (matrix factorisation,
   BPR loss), `lightgcn` (LightGCN on customer-item, He et al. 2020: embeddings propagated over
   `layers` hops with no weights or non-linearities, layer mean, BPR) and `persona-lightgcn`
   (the same LightGCN on customer-persona-item: the paper's LGCN3). All share one training loop.
4. Metrics on the held-out window: NDCG@K and F1@K (precision, recall) per customer, averaged
   over the customers who bought at least one new item there; items a customer bought in the
   training window are neither recommended nor counted (unless `include_purchased`).
5. Output: `customer_recommendations` (customer_id, rank, item, score, model_version), top K per
   customer of `customer_features` (every customer), replaces the table in the serving file BI tools
   read (atomic swap, `publish_tables`), beside `recommendation_runs` and `recommendation_metrics`
   (appended, one row per run / model x K).
   Every input is checked before anything is trained or written, so an error leaves the previous
   recommendations as they were.
6. Customers without a purchase in the training window (cold start: no orders yet, or first orders
   after it) are not nodes of the training graph: they get the training window's most popular items.
   Their personas' ranking was tried and did no better (one run on 20k generated customers, data seed 7,
   personas labelled before the held-out window: held-out NDCG@10 0.091 from the propagated persona
   embeddings, 0.095 from what the customers of their personas bought, 0.107 from popularity, over the
   261 cold customers who bought later).

Propagation is sparse matrix products (torch CSR) and training, negative sampling, scoring and
metrics are vectorised over batches of customers.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.progress import Progress, quiet
from lookalike_cli.warehouse.connection import connect_serving, connection, table_columns, table_exists

RECOMMENDATIONS_TABLE = "customer_recommendations"
RUNS_TABLE = "recommendation_runs"
METRICS_TABLE = "recommendation_metrics"
PERSONAS_TABLE = "customer_personas"
POPULATION_TABLE = "customer_features"
MODELS = ("persona-lightgcn", "lightgcn", "mf", "popularity")
WINDOWS = ("feature", "serving")
EVAL_KS = (5, 10, 20)
# Adam learning rates, chosen on generated data (seed 5, 10k customers; not the benchmark's seed 11): MF overfits
# within 4 epochs at 0.02 (held-out NDCG@10 0.222 at its best validation epoch vs 0.240 at 0.005); LightGCN is
# best at 0.02 with ~10 steps an epoch.
DEFAULT_LR = {"mf": 0.005, "lightgcn": 0.02, "persona-lightgcn": 0.02}
WINDOWS_HINT = "Build the warehouse first: `lookalike build` (it makes int_time_windows and customer_features)."
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

RUNS_DDL = f"""
create table if not exists {RUNS_TABLE} (
    model_version varchar primary key,
    created_at timestamp not null,
    model varchar not null,
    item_column varchar,
    source_table varchar,
    window_kind varchar,
    train_start date,
    train_end date,
    test_end date,
    customers bigint,
    items bigint,
    train_interactions bigint,
    persona_edges bigint,
    cold_start_customers bigint,
    k integer,
    parameters json,
    train_seconds double,
    total_seconds double
)"""
METRICS_DDL = f"""
create table if not exists {METRICS_TABLE} (
    model_version varchar not null,
    model varchar not null,
    k integer not null,
    ndcg double,
    f1 double,
    "precision" double,
    recall double,
    customers_evaluated bigint
)"""
RECOMMENDATIONS_DDL = f"""
create or replace table {RECOMMENDATIONS_TABLE} (
    customer_id bigint not null,
    rank integer not null,
    item varchar not null,
    score double not null,
    model_version varchar not null
)"""


@dataclass(frozen=True)
class RecommendOptions:
    model: str = "persona-lightgcn"
    item_column: str = "category"
    order_lines_table: str = "raw.order_lines"
    window: str = "feature"
    k: int = 10
    dim: int = 64
    layers: int = 3
    epochs: int = 60               # at most; early stopping on the validation pairs usually stops sooner
    batch_size: int = 0            # 0 = auto: about 10 steps an epoch, between 128 and 1,048,576 pairs
    lr: float | None = None        # None = the model's default (DEFAULT_LR)
    reg: float = 1e-4
    validation_share: float = 0.1  # training pairs held out to pick the epoch (0 = train on all, no early stopping)
    eval_every: int = 2            # epochs between validation checks
    patience: int = 3              # checks without improvement before stopping
    personas_table: str = PERSONAS_TABLE
    persona_edges: int = 1         # each customer links to its top-n personas
    persona_weight: float = 1.0    # weight of a customer's persona edges (all of them together) vs 1 per item
    include_purchased: bool = False
    min_item_customers: int = 1
    seed: int = 0
    threads: int = 0               # torch intra-op threads while training and scoring; 0 = torch's default
    # With window="feature": after the held-out evaluation, train again on everything before as_of_date
    # (the serving window) for the epoch count validation chose, and publish that model's top K. Serving
    # never uses a window that stops before the latest data (DESIGN.md): the evaluated model would miss
    # the last quarter's purchases. False publishes the evaluated model itself.
    refit: bool = True

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ParameterError(f"Unknown {{model}} {self.model!r}; choose one of {', '.join(MODELS)}.", "model")
        if self.window not in WINDOWS:
            raise ParameterError(f"Unknown {{window}} {self.window!r}; choose one of {', '.join(WINDOWS)}.", "window")
        for name in ("order_lines_table", "personas_table"):
            if not IDENTIFIER.match(getattr(self, name)):
                raise ParameterError(f"{{{name}}} {getattr(self, name)!r} is not a table name (table or schema.table).", name)
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", self.item_column):
            raise ParameterError(f"{{item_column}} {self.item_column!r} is not a column name.", "item_column")
        checks = [("k", self.k >= 1, "at least 1"), ("dim", self.dim >= 1, "at least 1"), ("layers", self.layers >= 0, "0 or more"),
                  ("epochs", self.epochs >= 1, "at least 1"), ("batch_size", self.batch_size >= 0, "0 (auto) or more"),
                  ("lr", self.lr is None or self.lr > 0, "positive"), ("reg", self.reg >= 0, "0 or more"),
                  ("validation_share", 0 <= self.validation_share < 1, "in [0, 1)"), ("eval_every", self.eval_every >= 1, "at least 1"),
                  ("patience", self.patience >= 1, "at least 1"),
                  ("persona_edges", self.persona_edges >= 1, "at least 1"), ("persona_weight", self.persona_weight > 0, "positive"),
                  ("min_item_customers", self.min_item_customers >= 1, "at least 1"),
                  ("threads", self.threads >= 0, "0 (torch's default) or more")]
        for name, ok, what in checks:
            if not ok:
                raise ParameterError(f"{{{name}}} must be {what}, got {getattr(self, name)}.", name)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.model, 0.02)

    @property
    def uses_personas(self) -> bool:
        return self.model == "persona-lightgcn"


@dataclass
class Interactions:
    """Customer x item interactions of one split. Rows are customers with a training interaction."""
    customer_ids: np.ndarray        # int64 ascending: row i is customer_ids[i]
    items: np.ndarray               # item labels (str), column j is items[j]
    train: sp.csr_matrix            # (customers, items) 1 where bought in the training window
    test: sp.csr_matrix | None      # (customers, items) 1 where bought in the held-out window (None: no held-out window)
    windows: dict                   # train_start, train_end, test_end (dates; test_end None without a held-out window)
    source: str
    item_column: str
    test_new_only: bool = True      # test holds only items not bought in the training window

    @property
    def shape(self) -> tuple[int, int]:
        return self.train.shape


@dataclass
class Fitted:
    model: str
    user_vectors: np.ndarray        # (customers, d) float32
    item_vectors: np.ndarray        # (items, d) float32
    seconds: float
    persona_edges: int = 0
    losses: list[float] = field(default_factory=list)
    epoch: int = 0                  # the epoch these embeddings are from (the best on validation)
    validation: list[tuple[int, float]] = field(default_factory=list)  # (epoch, validation NDCG@10) per check


@dataclass
class RecommendResult:
    model_version: str
    metrics: list[dict]             # one row per model x K (popularity always; mf and lightgcn with compare)
    recommendations: pa.Table
    summary: dict
    warnings: list[str]


# --------------------------------------------------------------------------- data


def _time_bounds(con, window: str) -> dict:
    if not table_exists(con, "int_time_windows"):
        raise LookalikeError(f"Table int_time_windows not found in the warehouse. {WINDOWS_HINT}")
    start, feature_end, label_end, as_of = con.execute(
        "select data_start_at, feature_end_at, label_end_at, as_of_at from int_time_windows").fetchall()[0]
    if window == "feature":
        return {"train_start": start, "train_end": feature_end, "test_end": label_end}
    return {"train_start": start, "train_end": as_of, "test_end": None}


def check_source(con, table: str, item_column: str) -> list[str]:
    """The order-line table's columns, after checking it has customer_id, ordered_at and the item column."""
    if not table_exists(con, table):
        raise ParameterError(f"Table {table} not found in the warehouse: load data with `lookalike generate-data` or "
                             "`lookalike load-sample completejourney`, or name your order-line table with {order_lines_table}.",
                             "order_lines_table")
    columns = table_columns(con, table)
    lowered = {c.lower() for c in columns}
    if item_column.lower() not in lowered:
        raise ParameterError(f"{{item_column}} {item_column!r} not found in {table} (columns: {', '.join(columns)}); "
                             "choose one of them.", "item_column")
    missing = [c for c in ("customer_id", "ordered_at") if c not in lowered]
    if missing:
        raise LookalikeError(f"{table} has no {' or '.join(missing)} column: the recommender reads customer_id, ordered_at "
                             "and the item column of the order lines.")
    return columns


def load_interactions(db_path: Path, item_column: str = "category", order_lines_table: str = "raw.order_lines",
                      window: str = "feature", include_purchased: bool = False, min_item_customers: int = 1,
                      progress: Progress = quiet) -> Interactions:
    """Distinct (customer, item) pairs of the training window and, for `window="feature"`, of the held-out window.

    Items are those bought by at least `min_item_customers` customers in the training window (a
    model cannot rank an item it never saw); customers are those with a training interaction.
    Held-out pairs are the new items only (not bought in the training window) unless `include_purchased`.
    """
    started = time.perf_counter()
    with connection(db_path, read_only=True) as con:
        columns = {c.lower() for c in check_source(con, order_lines_table, item_column)}
        bounds = _time_bounds(con, window)
        returns = " and ".join(f"coalesce({c}, 0) >= 0" for c in ("quantity", "amount") if c in columns) or "true"
        test_end = bounds["test_end"] or bounds["train_end"]
        con.execute(f"""
            create temp table rec_pairs as
            select customer_id, item, min(ordered_at) < $train_end as in_train, max(ordered_at) >= $train_end as in_test
            from (
                select cast(customer_id as bigint) as customer_id, cast({item_column} as varchar) as item, cast(ordered_at as timestamp) as ordered_at
                from {order_lines_table}
                where {item_column} is not null and customer_id is not null and {returns}
            )
            where ordered_at >= $train_start and ordered_at < $test_end
            group by customer_id, item
        """, {"train_start": bounds["train_start"], "train_end": bounds["train_end"], "test_end": test_end})
        con.execute("""
            create temp table rec_items as
            select item, cast(row_number() over (order by item) - 1 as integer) as item_id
            from (select item from rec_pairs where in_train group by item having count(*) >= $min)
        """, {"min": min_item_customers})
        items = con.sql("select item from rec_items order by item_id").to_arrow_table().column("item").to_numpy(zero_copy_only=False)
        pairs = con.sql("""
            select p.customer_id, i.item_id, p.in_train, p.in_test
            from rec_pairs p join rec_items i using (item)
        """).to_arrow_table()
    if len(items) == 0:
        raise LookalikeError(f"No {item_column} was bought in the training window "
                             f"({bounds['train_start'].date()} .. {bounds['train_end'].date()}) of {order_lines_table}: nothing to learn from.")
    customer = pairs.column("customer_id").to_numpy()
    item = pairs.column("item_id").to_numpy().astype(np.int64)
    in_train = pairs.column("in_train").to_numpy(zero_copy_only=False)
    in_test = pairs.column("in_test").to_numpy(zero_copy_only=False)
    ids = np.unique(customer[in_train])
    rows = np.searchsorted(ids, customer)
    known = (rows < len(ids)) & (ids[np.minimum(rows, len(ids) - 1)] == customer)
    shape = (len(ids), len(items))

    def matrix(mask: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix((np.ones(int(mask.sum()), np.float32), (rows[mask], item[mask])), shape=shape)
        m.sum_duplicates()
        m.sort_indices()
        return m

    train = matrix(known & in_train)
    test = None
    if bounds["test_end"] is not None:
        test = matrix(known & in_test & (~in_train if not include_purchased else True))
    windows = {"train_start": bounds["train_start"].date(), "train_end": (bounds["train_end"]).date(),
               "test_end": bounds["test_end"].date() if bounds["test_end"] is not None else None}
    progress(f"Interactions: {train.nnz:,} (customer, {item_column}) pairs of {len(ids):,} customers x {len(items):,} items "
             f"from {order_lines_table}, {windows['train_start']} .. {windows['train_end']} (exclusive)"
             + (f"; held out {test.nnz:,} {'new ' if not include_purchased else ''}pairs up to {windows['test_end']} (exclusive)"
                if test is not None else "") + f" ({time.perf_counter() - started:.1f}s)")
    return Interactions(ids, items, train, test, windows, order_lines_table, item_column, test_new_only=not include_purchased)


def load_persona_edges(db_path: Path, customer_ids: np.ndarray, table: str = PERSONAS_TABLE, top: int = 1,
                       weight: float = 1.0) -> sp.csr_matrix:
    """(customers, personas) weights: each customer's top `top` personas of `table` by probability,
    renormalised to sum to `weight`. Rows of customers missing from the table are empty."""
    with connection(db_path, read_only=True) as con:
        if not table_exists(con, table):
            raise no_personas_error(table)
        columns = {c.lower() for c in table_columns(con, table)}
        missing = {"customer_id", "persona_id", "probability", "persona_rank"} - columns
        if missing:
            raise LookalikeError(f"{table} has no {', '.join(sorted(missing))} column(s): re-run `lookalike personas propagate`.")
        edges = con.sql(f"select customer_id, persona_id, probability from {table} where persona_rank <= $top and probability > 0",
                        params={"top": top}).to_arrow_table()
    if edges.num_rows == 0:
        raise LookalikeError(f"{table} is empty: run `lookalike personas propagate`.")
    customer = edges.column("customer_id").to_numpy()
    personas, column = np.unique(edges.column("persona_id").to_numpy(), return_inverse=True)
    rows = np.searchsorted(customer_ids, customer)
    known = (rows < len(customer_ids)) & (customer_ids[np.minimum(rows, len(customer_ids) - 1)] == customer)
    if not known.any():
        raise LookalikeError(f"No customer of {table} has an interaction in the training window: re-run "
                             "`lookalike personas propagate` on this warehouse.")
    matrix = sp.csr_matrix((edges.column("probability").to_numpy()[known], (rows[known], column[known])),
                           shape=(len(customer_ids), len(personas)))
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    return (sp.diags(weight / np.where(totals > 0, totals, 1.0)) @ matrix).tocsr()


# --------------------------------------------------------------------------- models


def normalised_adjacency(train: sp.csr_matrix, personas: sp.csr_matrix | None = None) -> "BipartiteAdjacency":
    """D^-1/2 A D^-1/2 of the graph customers | items | personas. Every edge joins a customer to an item or a
    persona, so A = [[0, B], [B^T, 0]] with B = [train | personas] and only B (customers x (items + personas))
    is stored, normalised by both sides' degrees."""
    block = train if personas is None or not personas.shape[1] else sp.hstack([train, personas], format="csr")
    block = block.astype(np.float32)
    customer_degree = np.asarray(block.sum(axis=1)).ravel()
    other_degree = np.asarray(block.sum(axis=0)).ravel()

    def inverse_sqrt(degree):
        return sp.diags((1.0 / np.sqrt(np.where(degree > 0, degree, 1.0))).astype(np.float32))

    normalised = (inverse_sqrt(customer_degree) @ block @ inverse_sqrt(other_degree)).tocsr().astype(np.float32)
    normalised.sort_indices()
    return BipartiteAdjacency(normalised)


class BipartiteAdjacency:
    """A @ x for A = [[0, B], [B^T, 0]] (x: customers' rows, then the other side's), without forming A.

    The two halves take the two cache-friendly paths: the customers' half B @ x_other gathers rows of the
    small other side (torch's embedding_bag, multi-threaded), the other side's half B^T @ x_customers scatters
    each customer's row into it (scipy's CSC product). One CSR product of the whole A instead gathers the
    customers' rows at random for every item row: 5.5-6.2x slower on the 1M-customer generated graph (15M pairs,
    one thread, same process; benchmarks/bench_recommend.py --propagation)."""

    def __init__(self, block: sp.csr_matrix):
        self.block = block
        self.n_customers, self.n_other = block.shape
        self.shape = (self.n_customers + self.n_other,) * 2
        self._indices = torch.from_numpy(block.indices.astype(np.int64))
        self._offsets = torch.from_numpy(block.indptr[:-1].astype(np.int64))
        self._weights = torch.from_numpy(block.data)
        self._transposed = block.T  # CSC: its product walks the customers' rows

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        customers, other = x[:self.n_customers], x[self.n_customers:]
        out = torch.empty_like(x)
        out[:self.n_customers] = torch.nn.functional.embedding_bag(self._indices, other, self._offsets, mode="sum",
                                                                    per_sample_weights=self._weights)
        out[self.n_customers:] = torch.from_numpy(np.asarray(self._transposed @ customers.detach().numpy(), np.float32))
        return out

    def dense(self) -> np.ndarray:
        """The full symmetric matrix (for tests on small graphs)."""
        return sp.bmat([[None, self.block], [self.block.T, None]]).toarray()


def auto_batch_size(interactions: int) -> int:
    """About 10 steps an epoch: every step propagates over the whole graph, so fewer, larger batches
    cost less per epoch (2.6x less at 10k customers than ~40 steps) for about the same accuracy per epoch.
    The floor is low so that small data still takes ~10 steps an epoch (a floor of 2,048 left 1,000 pairs
    with one Adam step an epoch: MF had barely moved from its initialisation after 15 epochs). The cap,
    2^20 pairs (~1.5 GiB of gathered d=64 embeddings and their gradients), still gives ~13 steps an epoch at
    1M customers (13.5M pairs); the earlier cap of 2^18 made that 52 whole-graph propagations an epoch."""
    return int(min(1_048_576, max(128, 2 ** math.ceil(math.log2(max(interactions / 10, 1))))))


def split_validation(train: sp.csr_matrix, share: float, rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(fit pairs, validation pairs): a random `share` of each customer's pairs, never a customer's only pair."""
    coo = train.tocoo()
    held = rng.random(coo.nnz) < share
    counts = np.diff(train.indptr)
    held &= counts[coo.row] > 1
    def part(mask):
        return sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=train.shape)
    return part(~held), part(held)


def fit(data: Interactions, options: RecommendOptions, personas: sp.csr_matrix | None = None,
        progress: Progress = quiet, checkpoint: Callable[[int, Fitted], None] | None = None) -> Fitted:
    """Train `options.model` on `data.train` (and the persona edges for persona-lightgcn).

    With `validation_share` > 0 a random share of the training pairs is held out of the graph and
    the loss; every `eval_every` epochs NDCG@10 on them is measured and the best epoch's embeddings
    are kept (training stops after `patience` checks without improvement). The same rule for every
    model, so none is compared at a hand-picked epoch. `checkpoint(epoch, fitted)` sees each check."""
    started = time.perf_counter()
    n_users, n_items = data.shape
    if options.model == "popularity":
        popularity = np.asarray(data.train.sum(axis=0)).ravel().astype(np.float32)
        return Fitted("popularity", np.ones((n_users, 1), np.float32), popularity[:, None], time.perf_counter() - started)

    use_personas = options.model == "persona-lightgcn"
    if use_personas and personas is None:
        raise LookalikeError("persona-lightgcn needs persona edges (load_persona_edges).")
    layers = 0 if options.model == "mf" else options.layers
    generator = torch.Generator().manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    train, validation = data.train, None
    if options.validation_share > 0:
        train, validation = split_validation(data.train, options.validation_share, np.random.default_rng(options.seed + 7919))
        validation_data = Interactions(data.customer_ids, data.items, train, validation, data.windows, data.source, data.item_column)
    n_personas = personas.shape[1] if use_personas else 0
    n_nodes = n_users + n_items + n_personas
    adjacency = normalised_adjacency(train, personas if use_personas else None) if layers else None
    weights = torch.nn.Parameter(torch.randn(n_nodes, options.dim, generator=generator) * 0.1)
    optimiser = torch.optim.Adam([weights], lr=options.learning_rate)

    coo = train.tocoo()
    users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    positive_keys = np.sort(users * n_items + items)
    batch = options.batch_size or auto_batch_size(len(users))
    losses: list[float] = []
    history: list[tuple[int, float]] = []

    def snapshot(epoch: int) -> Fitted:
        with torch.no_grad():
            final = (propagate(adjacency, weights, layers) if layers else weights).numpy().copy()
        return Fitted(options.model, np.ascontiguousarray(final[:n_users]), np.ascontiguousarray(final[n_users:n_users + n_items]),
                      time.perf_counter() - started, int(personas.nnz) if use_personas else 0, list(losses), epoch, list(history))

    best, best_score, stale = None, -1.0, 0
    for epoch in range(1, options.epochs + 1):
        order = rng.permutation(len(users))
        total = 0.0
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            u, i = users[rows], items[rows]
            j = sample_negatives(u, n_items, positive_keys, rng)
            final = propagate(adjacency, weights, layers) if layers else weights
            u_t, i_t, j_t = (torch.from_numpy(x) for x in (u, i + n_users, j + n_users))
            eu, ei, ej = final[u_t], final[i_t], final[j_t]
            bpr = torch.nn.functional.softplus(-((eu * ei).sum(1) - (eu * ej).sum(1))).mean()
            ego = weights[u_t].square().sum() + weights[i_t].square().sum() + weights[j_t].square().sum()
            loss = bpr + options.reg * 0.5 * ego / len(rows)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(bpr.detach()) * len(rows)
        losses.append(total / len(order))
        if epoch % options.eval_every and epoch != options.epochs:
            continue
        current = snapshot(epoch)
        if validation is not None:
            score = next(m["ndcg"] for m in evaluate(current, validation_data, ks=(10,)))
            history.append((epoch, score))
            current.validation = list(history)
            improved = score > best_score
            best, best_score, stale = (current, score, 0) if improved else (best, best_score, stale + 1)
        else:
            best = current
        progress(f"  {options.model} epoch {epoch}/{options.epochs}: BPR loss {losses[-1]:.4f}"
                 + (f", validation NDCG@10 {history[-1][1]:.4f}" if validation is not None else "")
                 + f" ({time.perf_counter() - started:.1f}s)")
        if checkpoint is not None:
            checkpoint(epoch, current)
        if validation is not None and stale >= options.patience:
            progress(f"  {options.model}: stopped at epoch {epoch}, keeping epoch {best.epoch} (validation NDCG@10 {best_score:.4f})")
            break
    best.seconds = time.perf_counter() - started
    best.validation = list(history)
    return best


def propagate(adjacency, weights, layers: int):
    """LightGCN: the mean of E, AE, A^2 E, ... (A symmetric, so the backward pass is A times the gradient)."""
    out, acc = weights, weights
    for _ in range(layers):
        out = _SymmetricProduct.apply(adjacency, out)
        acc = acc + out
    return acc / (layers + 1)


class _SymmetricProduct(torch.autograd.Function):
    """A @ x for a symmetric sparse A; the gradient is A @ grad (torch's own sparse backward is ~3x slower)."""

    @staticmethod
    def forward(ctx, adjacency, x):
        ctx.adjacency = adjacency
        return adjacency @ x

    @staticmethod
    def backward(ctx, grad):
        return None, ctx.adjacency @ grad


def sample_negatives(users: np.ndarray, n_items: int, positive_keys: np.ndarray, rng: np.random.Generator,
                     rounds: int = 3) -> np.ndarray:
    """A random item per user, redrawn (up to `rounds` times) where the user bought it."""
    negatives = rng.integers(0, n_items, len(users))
    for _ in range(rounds):
        keys = users * n_items + negatives
        found = np.searchsorted(positive_keys, keys)
        bought = (found < len(positive_keys)) & (positive_keys[np.minimum(found, len(positive_keys) - 1)] == keys)
        if not bought.any():
            break
        negatives[bought] = rng.integers(0, n_items, int(bought.sum()))
    return negatives


# --------------------------------------------------------------------------- ranking and metrics


def top_k(fitted: Fitted, train: sp.csr_matrix, k: int, exclude_purchased: bool = True, chunk: int = 8192,
          rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(items (n, k) int64, scores (n, k) float32) per customer row; -1 / -inf pads when fewer than k items are left."""
    rows = np.arange(train.shape[0]) if rows is None else rows
    k = min(k, train.shape[1])
    items_t = torch.from_numpy(fitted.item_vectors)
    all_items, all_scores = np.empty((len(rows), k), np.int64), np.empty((len(rows), k), np.float32)
    with torch.no_grad():
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            scores = torch.from_numpy(fitted.user_vectors[part]) @ items_t.T
            if exclude_purchased:
                bought = train[part].tocoo()
                scores[torch.from_numpy(bought.row.astype(np.int64)), torch.from_numpy(bought.col.astype(np.int64))] = -torch.inf
            values, indices = torch.topk(scores, k, dim=1)
            indices[torch.isinf(values)] = -1
            all_items[start:start + len(part)] = indices.numpy()
            all_scores[start:start + len(part)] = values.numpy()
    return all_items, all_scores


def evaluate(fitted: Fitted, data: Interactions, ks: tuple[int, ...] = EVAL_KS, only: np.ndarray | None = None) -> list[dict]:
    """NDCG@K, F1@K, precision@K and recall@K on the held-out window, mean over customers with a held-out
    item (and `only[row]` true, when given: e.g. the customers with few training items)."""
    if data.test is None:
        return []
    counts = np.diff(data.test.indptr)
    rows = np.flatnonzero((counts > 0) & (only if only is not None else True))
    if len(rows) == 0:
        return []
    depth = min(max(ks), data.shape[1])
    ranked, _ = top_k(fitted, data.train, depth, exclude_purchased=data.test_new_only, rows=rows)
    test = data.test.tocoo()
    keys = np.sort(test.row.astype(np.int64) * data.shape[1] + test.col)
    probe = rows[:, None].astype(np.int64) * data.shape[1] + ranked
    found = np.searchsorted(keys, probe)
    hits = (ranked >= 0) & (found < len(keys)) & (keys[np.minimum(found, len(keys) - 1)] == probe)
    discounts = 1.0 / np.log2(np.arange(2, depth + 2))
    relevant = counts[rows]
    metrics = []
    for k in ks:
        kk = min(k, depth)
        dcg = (hits[:, :kk] * discounts[:kk]).sum(axis=1)
        ideal = np.cumsum(discounts[:kk])[np.minimum(relevant, kk) - 1]
        found_k = hits[:, :kk].sum(axis=1)
        precision, recall = found_k / k, found_k / relevant
        f1 = np.where(found_k > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        metrics.append({"model": fitted.model, "k": k, "ndcg": float(np.mean(dcg / ideal)), "f1": float(f1.mean()),
                        "precision": float(precision.mean()), "recall": float(recall.mean()), "customers_evaluated": len(rows)})
    return metrics


def recommendations_table(fitted: Fitted, data: Interactions, k: int, model_version: str, exclude_purchased: bool) -> pa.Table:
    return _ranked(fitted, data.train, data.customer_ids, data.items, k, model_version, exclude_purchased)


def cold_start_table(data: Interactions, cold_ids: np.ndarray, k: int, model_version: str) -> pa.Table:
    """Top k for customers outside the training graph: the training window's most popular items."""
    popularity = fit(data, RecommendOptions(model="popularity"))
    popular = Fitted("popularity", np.ones((len(cold_ids), 1), np.float32), popularity.item_vectors, 0.0)
    nothing_bought = sp.csr_matrix((len(cold_ids), len(data.items)), dtype=np.float32)
    return _ranked(popular, nothing_bought, cold_ids, data.items, k, model_version, False)


def _ranked(fitted: Fitted, train: sp.csr_matrix, customer_ids: np.ndarray, item_labels: np.ndarray, k: int,
            model_version: str, exclude_purchased: bool) -> pa.Table:
    items, scores = top_k(fitted, train, k, exclude_purchased)
    valid = items >= 0
    per_customer = valid.sum(axis=1)
    ranks = np.broadcast_to(np.arange(1, items.shape[1] + 1, dtype=np.int32), items.shape)[valid]
    labels = pa.array(item_labels, pa.string())
    return pa.table({
        "customer_id": pa.array(np.repeat(customer_ids, per_customer), pa.int64()),
        "rank": pa.array(ranks, pa.int32()),
        "item": labels.take(pa.array(items[valid])),
        "score": pa.array(scores[valid].astype(np.float64), pa.float64()),
        "model_version": pa.array(np.full(int(valid.sum()), model_version, dtype=object), pa.string()),
    })


# --------------------------------------------------------------------------- the command


def load_population(db_path: Path) -> np.ndarray:
    """Every customer (customer_features, sorted ids): each gets recommendations, with or without a training purchase."""
    with connection(db_path, read_only=True) as con:
        if not table_exists(con, POPULATION_TABLE):
            raise LookalikeError(f"Table {POPULATION_TABLE} not found in the warehouse. {WINDOWS_HINT}")
        ids = con.sql(f"select distinct cast(customer_id as bigint) as customer_id from {POPULATION_TABLE} "
                      "where customer_id is not null").to_arrow_table().column("customer_id").to_numpy()
    return np.sort(ids)


def check_inputs(db_path: Path, options: RecommendOptions) -> None:
    """Every check that does not need the interactions, before any work (a bad input writes nothing)."""
    options.validate()
    with connection(db_path, read_only=True) as con:
        check_source(con, options.order_lines_table, options.item_column)
        for table in ("int_time_windows", POPULATION_TABLE):
            if not table_exists(con, table):
                raise LookalikeError(f"Table {table} not found in the warehouse. {WINDOWS_HINT}")
        if options.uses_personas and not table_exists(con, options.personas_table):
            raise no_personas_error(options.personas_table)


def no_personas_error(table: str) -> ParameterError:
    return ParameterError(f"Table {table} not found: {{model}} 'persona-lightgcn' needs personas. Run `lookalike personas label` "
                          "and `lookalike personas propagate` first (or choose {model} 'lightgcn').", "model")


def recommend(db_path: Path, serving_path: Path | None, options: RecommendOptions | None = None, compare: bool = False,
              progress: Progress = quiet, **overrides) -> RecommendResult:
    """Train `options.model`, evaluate it (and popularity; mf and lightgcn too with `compare`) on the held-out
    window, and replace `customer_recommendations` in the serving file (None: compute only, write nothing)."""
    started = time.perf_counter()
    options = replace(options or RecommendOptions(), **overrides)
    check_inputs(db_path, options)
    data = load_interactions(db_path, options.item_column, options.order_lines_table, options.window,
                             options.include_purchased, options.min_item_customers, progress)
    n_users, n_items = data.shape
    if options.k > n_items:
        raise ParameterError(f"{{k}} {options.k} is larger than the {n_items:,} items ({options.item_column}) of the training window: "
                             f"choose {{k}} {n_items} or less.", "k")
    cold_ids = np.setdiff1d(load_population(db_path), data.customer_ids)
    personas = None
    warnings = []
    if options.uses_personas:
        personas = load_persona_edges(db_path, data.customer_ids, options.personas_table, options.persona_edges, options.persona_weight)
        covered = int((np.diff(personas.indptr) > 0).sum())
        progress(f"Persona edges: {personas.nnz:,} to {personas.shape[1]} personas from {options.personas_table} "
                 f"({covered:,} of {n_users:,} customers)")
        if covered < n_users:
            warnings.append(f"{n_users - covered:,} customers have no row in {options.personas_table} (propagated on another "
                            "population?): they get no persona edge.")
        if data.test is not None:
            before = data.windows["train_end"] - timedelta(days=1)
            warnings.append(f"held-out metrics of {options.model} are optimistic if {options.personas_table} was labelled and "
                            f"propagated on features that include the held-out window (customer_features are as of as_of_date). "
                            f"For an honest comparison: lookalike build --vars '{{as_of_date: {before}}}', personas label, "
                            "personas propagate, then lookalike build again (as benchmarks/bench_recommend.py does).")
    progress(f"Training {options.model} on {n_users:,} customers x {n_items:,} items ({options.window} window)")
    previous_threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        fitted = fit(data, options, personas, progress)
        model_version = f"{options.model}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-s{options.seed}"
        metrics = [{**row, "model_version": model_version} for row in evaluate(fitted, data)]
        if data.test is not None:
            baselines = ["popularity"] + (["mf", "lightgcn"] if compare else [])
            for baseline in [b for b in baselines if b != options.model]:
                progress(f"Training baseline {baseline} on the same split")
                other = fit(data, replace(options, model=baseline), None, progress)
                metrics.extend({**row, "model_version": model_version} for row in evaluate(other, data))
        published, published_data, published_cold = fitted, data, cold_ids
        if options.refit and data.test is not None and serving_path is not None:
            published_data, published = refit_on_serving(db_path, options, fitted, progress)
            published_cold = np.setdiff1d(load_population(db_path), published_data.customer_ids)
        table = recommendations_table(published, published_data, options.k, model_version, not options.include_purchased)
        if len(published_cold):
            table = pa.concat_tables([table, cold_start_table(published_data, published_cold, options.k, model_version)])
        cold_ids = published_cold
    finally:
        torch.set_num_threads(previous_threads)
    refitted = published is not fitted
    # The evaluation split's windows and sizes; customers / cold_start_customers / rows describe the published table.
    summary = {"model_version": model_version, "model": options.model, "customers": published_data.shape[0], "items": n_items,
               "published_window": "serving" if refitted else options.window,
               "train_interactions": int(data.train.nnz), "held_out_interactions": int(data.test.nnz) if data.test is not None else 0,
               "persona_edges": fitted.persona_edges, "cold_start_customers": len(cold_ids), "rows": table.num_rows,
               "train_seconds": round(fitted.seconds, 2),
               **{key: str(value) if value is not None else None for key, value in data.windows.items()}}
    summary["total_seconds"] = round(time.perf_counter() - started, 2)
    if serving_path is not None:
        publish_recommendations(serving_path, table, options, summary, metrics)
        progress(f"Published {RECOMMENDATIONS_TABLE} ({table.num_rows:,} rows: top {options.k} for {summary['customers'] + len(cold_ids):,} customers, "
                 f"{len(cold_ids):,} of them without a training purchase, who get the most popular items), "
                 f"{RUNS_TABLE} and {METRICS_TABLE} to {serving_path}")
    return RecommendResult(model_version, metrics, table, summary, warnings)


def refit_on_serving(db_path: Path, options: RecommendOptions, evaluated: Fitted,
                     progress: Progress = quiet) -> tuple["Interactions", Fitted]:
    """The evaluated setup trained again on the serving window (every purchase before as_of_date) for the
    epoch validation picked, without a validation split: what gets published."""
    serving_options = replace(options, window="serving", validation_share=0.0, epochs=max(1, evaluated.epoch or options.epochs))
    data = load_interactions(db_path, options.item_column, options.order_lines_table, "serving",
                             options.include_purchased, options.min_item_customers, progress)
    personas = (load_persona_edges(db_path, data.customer_ids, options.personas_table, options.persona_edges, options.persona_weight)
                if options.uses_personas else None)
    progress(f"Training {options.model} again on the serving window ({data.shape[0]:,} customers, "
             f"{serving_options.epochs} epochs, as validation chose) for the published recommendations")
    return data, fit(data, serving_options, personas, progress)


def publish_recommendations(serving_path: Path, table: pa.Table, options: RecommendOptions, summary: dict, metrics: list[dict]) -> None:
    """Replace customer_recommendations and append the run and its metrics, in one atomic swap of the serving file."""
    from lookalike_cli.audiences.publish import insert_rows, publish_tables

    parameters = {key: value for key, value in asdict(options).items() if key not in ("model", "item_column", "order_lines_table", "window", "k")}
    run = pa.Table.from_pylist([{
        "model_version": summary["model_version"], "created_at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "model": options.model, "item_column": options.item_column, "source_table": options.order_lines_table,
        "window_kind": options.window if summary["published_window"] == options.window else f"{options.window}, published from serving",
        "train_start": summary["train_start"], "train_end": summary["train_end"],
        "test_end": summary["test_end"], "customers": summary["customers"], "items": summary["items"],
        "train_interactions": summary["train_interactions"], "persona_edges": summary["persona_edges"],
        "cold_start_customers": summary["cold_start_customers"], "k": options.k,
        "parameters": json.dumps(parameters, sort_keys=True), "train_seconds": summary["train_seconds"],
        "total_seconds": summary["total_seconds"],
    }])
    metric_rows = pa.Table.from_pylist(metrics) if metrics else None

    def write(con) -> None:
        con.execute(RECOMMENDATIONS_DDL)
        con.register("incoming_recommendations", table)
        try:
            con.execute(f"insert into {RECOMMENDATIONS_TABLE} select customer_id, rank, item, score, model_version "
                        "from incoming_recommendations order by customer_id, rank")
        finally:
            con.unregister("incoming_recommendations")
        insert_rows(con, RUNS_TABLE, run, RUNS_DDL)
        if metric_rows is not None:
            insert_rows(con, METRICS_TABLE, metric_rows, METRICS_DDL)

    publish_tables(serving_path, write)


def read_recommendations(serving_path: Path, limit_customers: int = 3) -> pa.Table:
    """The recommendations of the first `limit_customers` customers, for printing."""
    if not Path(serving_path).exists():
        raise LookalikeError(f"No serving file at {serving_path}: run `lookalike recommend` first.")
    with connect_serving(serving_path) as con:
        if not table_exists(con, RECOMMENDATIONS_TABLE):
            raise LookalikeError(f"No {RECOMMENDATIONS_TABLE} in {serving_path}: run `lookalike recommend` first.")
        return con.sql(f"""
            select * from {RECOMMENDATIONS_TABLE}
            where customer_id in (select distinct customer_id from {RECOMMENDATIONS_TABLE} order by customer_id limit $n)
            order by customer_id, rank
        """, params={"n": limit_customers}).to_arrow_table()
