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

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookalike_cli.errors import ParameterError
from lookalike_cli.model.features import CATEGORICAL_COLUMNS, DENSE_COLUMNS, dense_matrix, dense_shares, log1p_dense
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


def load_raw_features(con: duckdb.DuckDBPyConnection, ids: np.ndarray | None = None,
                      scale: tuple[np.ndarray, np.ndarray] | None = None) -> RawFeatures:
    """Every customer's raw features, or only `ids`' (a sample, a candidate pool: memory stays bounded
    at any population size). Columns (categorical vocabularies included) are the same either way;
    the z-scores use `scale` (a previous load's `.scale`) when given, else the loaded rows' own."""
    require_table(con, "customer_features", FEATURES_HINT)
    available = table_columns(con, "customer_features")
    dense_columns = [c for c in DENSE_COLUMNS if c in available]
    categorical_columns = [c for c in CATEGORICAL_COLUMNS if c in available]
    where = "" if ids is None else "where customer_id in (select customer_id from _raw_feature_ids)"
    wanted = pa.table({"customer_id": pa.array(np.asarray([] if ids is None else ids, np.int64))})
    with registered(con, "_raw_feature_ids", wanted):
        table = con.sql(
            f"select customer_id, {', '.join(dense_columns + categorical_columns)}, category_ids, category_shares "
            f"from customer_features {where} order by customer_id"
        ).to_arrow_table()
    categories = con.sql("select category_id, category from categories order by category_id").fetchall()
    n_categories = max([c[0] for c in categories], default=-1) + 1
    category_names = {cid: name for cid, name in categories}

    dense = log1p_dense(dense_matrix(table, dense_columns)).astype(np.float64)
    # The matrix is built and z-scored in float32 (what it is stored as): a candidate pool of a few
    # hundred thousand customers x hundreds of columns in float64 spent seconds in copies alone.
    blocks, names = [dense.astype(np.float32)], list(dense_columns)
    for column in categorical_columns:
        values = table.column(column).combine_chunks().fill_null("unknown").cast("string")
        # The vocabulary of the whole table, so a subset has the same columns as a full load.
        vocabulary = sorted(r[0] for r in con.execute(
            f"select distinct coalesce(cast({column} as varchar), 'unknown') from customer_features").fetchall())
        codes = pc.index_in(values, value_set=pa.array(vocabulary, pa.string())).to_numpy(zero_copy_only=False)
        onehot = np.zeros((table.num_rows, len(vocabulary)), dtype=np.float32)
        onehot[np.arange(table.num_rows), codes.astype(np.int64)] = 1.0
        blocks.append(onehot)
        names += [f"{column}={v}" for v in vocabulary]
    blocks.append(dense_shares(table, n_categories))
    names += [f"category:{category_names.get(i, i)}" for i in range(n_categories)]
    matrix = np.hstack(blocks)
    del blocks
    # Column statistics accumulate in float64 (a float32 sum over millions of rows drifts).
    scale = scale if scale is not None else (matrix.mean(axis=0, dtype=np.float64), matrix.std(axis=0, dtype=np.float64))
    matrix -= scale[0].astype(np.float32)
    matrix /= np.where(scale[1] > 1e-9, scale[1], 1.0).astype(np.float32)
    np.clip(matrix, -CLIP, CLIP, out=matrix)

    def column(name: str) -> np.ndarray:
        return dense[:, dense_columns.index(name)] if name in dense_columns else np.zeros(table.num_rows)

    # The classic RFM ranking: recent, frequent, big spenders first (equal weights on z-scores).
    activity = zscore(np.column_stack([-column("recency_days"), column("order_count"), column("total_spend")])).sum(axis=1)
    return RawFeatures(ids=table.column("customer_id").to_numpy().astype(np.int64), matrix=matrix, names=names,
                       activity=activity, spend=np.expm1(column("total_spend")),
                       lines=np.expm1(column("order_line_count" if "order_line_count" in dense_columns else "order_count")),
                       shares=sparse_shares(table, n_categories), scale=scale)


def sparse_shares(table: pa.Table, n_categories: int):
    """The category_ids/category_shares lists as a CSR matrix (memory grows with purchases, not categories)."""
    from scipy import sparse

    ids, shares = table.column("category_ids").combine_chunks(), table.column("category_shares").combine_chunks()
    rows = pc.list_parent_indices(ids).to_numpy()
    columns = pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(shares).to_numpy(zero_copy_only=False).astype(np.float32)
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


def check_excludable(con: duckdb.DuckDBPyConnection, columns: tuple[str, ...]) -> None:
    """Every listed column must be a customer_features column (customer_id is not a feature)."""
    require_table(con, "customer_features", FEATURES_HINT)
    valid = [c for c in table_columns(con, "customer_features") if c != "customer_id"]
    unknown = [c for c in columns if c not in valid]
    if unknown:
        raise ParameterError(f"{{exclude_features}} {', '.join(unknown)}: not a column of customer_features. "
                             f"Valid columns: {', '.join(valid)}.", "exclude_features")
