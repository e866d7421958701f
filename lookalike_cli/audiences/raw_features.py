"""Raw `customer_features` as one standardised matrix, with no model in between.

Used where an answer must not depend on the encoder: the blend's non-embedding components, the
backtest baselines (cosine to the seed centroid, seed-vs-population classifiers, activity, spend and
RFM rankings) and the explanations of what sets an audience apart (standardised mean differences
per feature).

Columns: log1p of the dense numerics, one-hot categoricals (`gender=F`), and the per-category
order-line shares (`category:<name>`), each z-scored over the population and clipped to
+-CLIP so a rare category bought by a handful of customers cannot dominate a cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.model.features import CATEGORICAL_COLUMNS, DENSE_COLUMNS, dense_matrix, log1p_dense
from lookalike_cli.warehouse.connection import registered, require_table, table_columns

CLIP = 10.0
FEATURES_HINT = "Build it with `lookalike build`."


@dataclass
class RawFeatures:
    ids: np.ndarray          # int64, ascending
    matrix: np.ndarray       # float32 [N, F], z-scored and clipped
    names: list[str]
    activity: np.ndarray     # float64 [N]: RFM score (recent, frequent, high spend = high)
    spend: np.ndarray        # float64 [N]: total spend in the feature window
    lines: np.ndarray        # float64 [N]: order-line count in the feature window (order count without the column)
    shares: object           # scipy CSR float32 [N, n_categories]: category order-line shares as stored (sparse)
    scale: tuple             # (mean, std) of the columns before z-scoring: load another subset on the same scale

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of `ids` (every id must be present)."""
        return np.searchsorted(self.ids, ids)


def zscore(values: np.ndarray, scale: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    mean, std = scale if scale is not None else (values.mean(axis=0), values.std(axis=0))
    return (values - mean) / np.where(std > 1e-9, std, 1.0)


@dataclass
class Layout:
    """The raw-feature columns of one warehouse: dense numerics, categoricals with the whole table's
    vocabularies, then one share column per category (always last: blend scores them sparse)."""
    dense_columns: list[str]
    categorical_columns: list[str]
    vocabularies: dict[str, list[str]]
    n_categories: int
    names: list[str]

    @property
    def head_width(self) -> int:
        """Columns before the category shares."""
        return len(self.names) - self.n_categories

    def select(self) -> str:
        """The columns to read: numerics with nulls as 0, categoricals as their 0-based vocabulary
        position (computed by DuckDB: string matching in Python cost more than the whole read)."""
        dense = [f"coalesce(cast({c} as double), 0) as {c}" for c in self.dense_columns]
        codes = []
        for column in self.categorical_columns:
            vocabulary = ", ".join("'" + value.replace("'", "''") + "'" for value in self.vocabularies[column])
            codes.append(f"list_position([{vocabulary}], coalesce(cast({column} as varchar), 'unknown')) - 1 as {column}")
        return ", ".join(["customer_id", *dense, *codes, "category_ids", "category_shares"])


def raw_layout(con: duckdb.DuckDBPyConnection) -> Layout:
    require_table(con, "customer_features", FEATURES_HINT)
    available = table_columns(con, "customer_features")
    dense_columns = [c for c in DENSE_COLUMNS if c in available]
    categorical_columns = [c for c in CATEGORICAL_COLUMNS if c in available]
    categories = con.sql("select category_id, category from categories order by category_id").fetchall()
    n_categories = max([c[0] for c in categories], default=-1) + 1
    category_names = {cid: name for cid, name in categories}
    # The vocabulary of the whole table, so a subset has the same columns as a full load.
    vocabularies = {column: sorted(r[0] for r in con.execute(
        f"select distinct coalesce(cast({column} as varchar), 'unknown') from customer_features").fetchall())
        for column in categorical_columns}
    names = list(dense_columns) + [f"{c}={v}" for c in categorical_columns for v in vocabularies[c]]
    names += [f"category:{category_names.get(i, i)}" for i in range(n_categories)]
    return Layout(dense_columns, categorical_columns, vocabularies, n_categories, names)


def dense_head(table: pa.Table | pa.RecordBatch, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(log1p numerics float64, [numerics, one-hots] float32 before z-scoring) of these rows."""
    dense = log1p_dense(dense_matrix(table, layout.dense_columns)).astype(np.float64)
    # Built in float32 (what the matrix is stored as): a candidate pool of a few hundred thousand
    # customers x hundreds of columns in float64 spent seconds in copies alone.
    head = np.zeros((table.num_rows, layout.head_width), dtype=np.float32)
    head[:, : len(layout.dense_columns)] = dense
    at = len(layout.dense_columns)
    rows = np.arange(table.num_rows)
    for column in layout.categorical_columns:
        codes = table.column(column).to_numpy()
        head[rows, at + codes.astype(np.int64)] = 1.0
        at += len(layout.vocabularies[column])
    return dense, head


def zscore_in_place(matrix: np.ndarray, scale: tuple[np.ndarray, np.ndarray], columns: slice = slice(None)) -> np.ndarray:
    """`matrix` (float32) z-scored with `scale`'s columns `columns` and clipped to +-CLIP, in place."""
    matrix -= scale[0][columns].astype(np.float32)
    matrix /= np.where(scale[1][columns] > 1e-9, scale[1][columns], 1.0).astype(np.float32)
    np.clip(matrix, -CLIP, CLIP, out=matrix)
    return matrix


def load_raw_features(con: duckdb.DuckDBPyConnection, ids: np.ndarray | None = None,
                      scale: tuple[np.ndarray, np.ndarray] | None = None) -> RawFeatures:
    """Every customer's raw features, or only `ids`' (a sample, a candidate pool: memory stays bounded
    at any population size). Columns (categorical vocabularies included) are the same either way;
    the z-scores use `scale` (a previous load's `.scale`) when given, else the loaded rows' own."""
    layout = raw_layout(con)
    where = "" if ids is None else "where customer_id in (select customer_id from _raw_feature_ids)"
    wanted = pa.table({"customer_id": pa.array(np.asarray([] if ids is None else ids, np.int64))})
    with registered(con, "_raw_feature_ids", wanted):
        table = con.sql(f"select {layout.select()} from customer_features {where}").to_arrow_table()
    # Sorted here rather than in SQL: DuckDB sorting the list columns cost more than the whole read.
    order = np.argsort(table.column("customer_id").to_numpy(), kind="stable")
    if (np.diff(order) != 1).any():
        table = table.take(pa.array(order))
    dense, head = dense_head(table, layout)
    shares = sparse_shares(table, layout.n_categories)
    matrix = np.empty((table.num_rows, len(layout.names)), dtype=np.float32)
    matrix[:, : layout.head_width] = head
    del head
    matrix[:, layout.head_width :] = shares.toarray() if table.num_rows else 0.0
    # Column statistics accumulate in float64 (a float32 sum over millions of rows drifts).
    scale = scale if scale is not None else (matrix.mean(axis=0, dtype=np.float64), matrix.std(axis=0, dtype=np.float64))
    zscore_in_place(matrix, scale)
    dense_columns = layout.dense_columns

    def column(name: str) -> np.ndarray:
        return dense[:, dense_columns.index(name)] if name in dense_columns else np.zeros(table.num_rows)

    # The classic RFM ranking: recent, frequent, big spenders first (equal weights on z-scores).
    activity = zscore(np.column_stack([-column("recency_days"), column("order_count"), column("total_spend")])).sum(axis=1)
    return RawFeatures(ids=table.column("customer_id").to_numpy().astype(np.int64), matrix=matrix, names=layout.names,
                       activity=activity, spend=np.expm1(column("total_spend")),
                       lines=np.expm1(column("order_line_count" if "order_line_count" in dense_columns else "order_count")),
                       shares=shares, scale=scale)


def population_batches(con: duckdb.DuckDBPyConnection, scale: tuple[np.ndarray, np.ndarray], batch_rows: int = 131_072
                       ) -> Iterator[tuple[np.ndarray, np.ndarray, object]]:
    """Every customer_features row in stored order, `batch_rows` at a time: (ids, head, shares) with `head` the
    z-scored, clipped columns before the category shares (float32, as load_raw_features has them) and
    `shares` the category shares as stored (CSR float32): a whole population in bounded memory, its
    hundreds of mostly-zero share columns never made dense."""
    layout = raw_layout(con)
    if len(scale[0]) != len(layout.names):
        raise LookalikeError("customer_features changed columns since the blend was fitted; run expand again.")
    reader = con.sql(f"select {layout.select()} from customer_features").to_arrow_reader(batch_rows)
    for batch in reader:
        _, head = dense_head(batch, layout)
        yield (batch.column("customer_id").to_numpy().astype(np.int64), zscore_in_place(head, scale, slice(0, layout.head_width)),
               sparse_shares(batch, layout.n_categories))


def sparse_shares(table: pa.Table, n_categories: int):
    """The category_ids/category_shares lists as a CSR matrix (memory grows with purchases, not categories)."""
    from scipy import sparse

    ids, shares = table.column("category_ids"), table.column("category_shares")
    if isinstance(ids, pa.ChunkedArray):
        ids, shares = ids.combine_chunks(), shares.combine_chunks()
    rows = pc.list_parent_indices(ids).to_numpy()
    columns = pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(shares).to_numpy(zero_copy_only=False).astype(np.float32)
    if columns.size and (columns.max() >= n_categories or columns.min() < 0):
        raise LookalikeError(
            f"customer_features.category_ids holds category_id {int(columns.max())}, but the categories table has "
            f"{n_categories} categories: rebuild the marts with `lookalike dbt build`.")
    return sparse.csr_matrix((values, (rows, columns)), shape=(table.num_rows, n_categories))


# The category share columns come from one column family: excluding either list column drops them all.
CATEGORY_FAMILY = ("category_ids", "category_shares")


def source_column(name: str) -> str:
    """The customer_features column a raw feature comes from: `gender=F` -> gender, `category:Beer` -> category_shares."""
    return "category_shares" if name.startswith("category:") else name.split("=", 1)[0]


def without_columns(raw: RawFeatures, columns: tuple[str, ...]) -> RawFeatures:
    """`raw` with the matrix columns (and their names and scale) of the listed customer_features columns
    left out: what the blend's raw components see under `exclude_features`. The backtest baselines'
    inputs (activity, spend, lines, shares) are not narrowed."""
    from dataclasses import replace

    dropped = {"category_shares" if c in CATEGORY_FAMILY else c for c in columns}
    keep = np.array([source_column(n) not in dropped for n in raw.names], dtype=bool)
    return replace(raw, matrix=raw.matrix[:, keep], names=[n for n, k in zip(raw.names, keep) if k],
                   scale=(raw.scale[0][keep], raw.scale[1][keep]))


def with_columns(raw: RawFeatures, names: list[str] | tuple[str, ...]) -> RawFeatures:
    """`raw` with only the matrix columns named in `names` (in `raw`'s order), their names and scale."""
    from dataclasses import replace

    wanted = set(names)
    keep = np.array([n in wanted for n in raw.names], dtype=bool)
    return replace(raw, matrix=raw.matrix[:, keep], names=[n for n, k in zip(raw.names, keep) if k],
                   scale=(raw.scale[0][keep], raw.scale[1][keep]))


def screened_categories(raw: RawFeatures, seed_ids: np.ndarray, limit: int, weights: np.ndarray | None = None
                        ) -> list[str] | None:
    """The names of the `limit` category share columns that set the seed apart most: largest |mean z-score|
    over the seed rows (value-weighted when `weights` is given), ties to the earlier column. None when there
    are no more than `limit` categories. The columns the seed neither over- nor under-buys carry little
    evidence for a seed-vs-population ranking, and every fitted component's cost grows with the columns."""
    share_columns = np.array([i for i, n in enumerate(raw.names) if n.startswith("category:")], dtype=np.int64)
    if len(share_columns) <= limit:
        return None
    rows = raw.rows(seed_ids)
    block = raw.matrix[rows][:, share_columns].astype(np.float64)
    difference = np.abs(block.mean(axis=0) if weights is None or not np.any(weights) else np.average(block, axis=0, weights=weights))
    chosen = np.sort(np.argsort(-difference, kind="stable")[:limit])
    return [raw.names[i] for i in share_columns[chosen]]


def check_excludable(con: duckdb.DuckDBPyConnection, columns: tuple[str, ...]) -> None:
    """Every listed column must be a customer_features column (customer_id is not a feature)."""
    require_table(con, "customer_features", FEATURES_HINT)
    valid = [c for c in table_columns(con, "customer_features") if c != "customer_id"]
    unknown = [c for c in columns if c not in valid]
    if unknown:
        raise ParameterError(f"{{exclude_features}} {', '.join(unknown)}: not a column of customer_features. "
                             f"Valid columns: {', '.join(valid)}.", "exclude_features")
