"""Arrow batches of `customer_features` -> the numpy inputs of the encoder.

The encoder's ONNX graph takes the raw columns, so everything here is a cheap, exact
re-coding that any scorer can reproduce from the manifest alone:

- `dense`       float32 [N, n_dense]   raw values in DENSE_COLUMNS order (the graph applies
                                        log1p and the z-score with constants it carries)
- `categorical` int64   [N, n_cat]     vocabulary code + 1 per column, 0 = unseen value
- `shares`      float32 [N, n_categories] the sparse category_ids/category_shares lists densified
- `location`    int64   [N, n_tokens]  hashed location_area tokens (location = "word"), or
                float32 [N, 384]       the sentence vector of location_area ("sentence")

Strings are re-coded once per distinct value (dictionary encoding), never per row.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.model.config import LOCATION_MODES

DENSE_COLUMNS = (
    "order_count", "order_line_count", "total_quantity", "total_spend", "avg_order_value",
    "avg_lines_per_order", "return_line_count", "distinct_categories", "active_months",
    "orders_per_month", "recency_days", "tenure_days", "visit_count", "engagement_count",
    "recent_order_count", "recent_spend",
)
CATEGORICAL_COLUMNS = ("gender", "age_band", "income_band", "education", "occupation")
LOCATION_COLUMN = "location_area"
SHARE_COLUMNS = ("category_ids", "category_shares")

# Described in the manifest so any scorer can reproduce the token ids without this module.
TOKEN_PATTERN = r"[a-z0-9]+"
HASH_FUNCTION = "1 + crc32(utf8(token)) % n_buckets over re.findall(TOKEN_PATTERN, lower(location_area)), zip codes also as 'zip3:' + first 3 digits; 0 pads"


@dataclass
class FeatureSpec:
    """Everything needed to turn `customer_features` rows into encoder inputs."""

    dense_columns: list[str]
    categorical_columns: list[str]
    vocabularies: dict[str, list[str]]
    n_categories: int
    location: str = "none"
    n_buckets: int = 4096
    n_tokens: int = 8
    sentence_dim: int = 384
    dense_mean: list[float] = field(default_factory=list)
    dense_std: list[float] = field(default_factory=list)

    @property
    def required_columns(self) -> list[str]:
        columns = ["customer_id", *self.dense_columns, *self.categorical_columns, *SHARE_COLUMNS]
        return columns + ([LOCATION_COLUMN] if self.location != "none" else [])

    @property
    def input_names(self) -> list[str]:
        return ["dense", "categorical", "shares"] + (["location"] if self.location != "none" else [])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        return cls(**data)


def fit_spec(features: pa.Table, n_categories: int, location: str = "none", n_buckets: int = 4096) -> FeatureSpec:
    """Vocabularies and normalisation constants from the customers the model is trained on."""
    if location not in LOCATION_MODES:
        raise ParameterError(f"{{location}} must be one of {', '.join(LOCATION_MODES)}, got {location!r}.", "location")
    location_columns = [LOCATION_COLUMN] if location != "none" else []
    check_columns(features.schema.names, [*DENSE_COLUMNS, *CATEGORICAL_COLUMNS, *SHARE_COLUMNS, *location_columns])
    vocabularies = {}
    for column in CATEGORICAL_COLUMNS:
        values = pc.unique(features[column].combine_chunks().fill_null("unknown")).to_pylist()
        vocabularies[column] = sorted(values)
    logged = log1p_dense(dense_matrix(features, DENSE_COLUMNS))
    std = logged.std(axis=0)
    return FeatureSpec(
        dense_columns=list(DENSE_COLUMNS),
        categorical_columns=list(CATEGORICAL_COLUMNS),
        vocabularies=vocabularies,
        n_categories=n_categories,
        location=location,
        n_buckets=n_buckets,
        dense_mean=logged.mean(axis=0).astype(float).tolist(),
        # A constant column (e.g. no engagements data) gets std 1 so it maps to 0, not NaN.
        dense_std=np.where(std > 1e-6, std, 1.0).astype(float).tolist(),
    )


def check_columns(available: list[str], required: list[str], table: str = "customer_features") -> None:
    missing = [c for c in required if c not in available]
    if missing:
        raise LookalikeError(
            f"{table} is missing column(s) {', '.join(missing)} that the model needs. "
            "Rebuild the marts with `lookalike dbt build`, or retrain with `lookalike train` on the current schema."
        )


def log1p_dense(raw: np.ndarray) -> np.ndarray:
    # Counts and money are heavy-tailed; log1p of the clipped value is what the graph computes too.
    return np.log1p(np.clip(raw, 0.0, None))


def dense_matrix(batch: pa.Table | pa.RecordBatch, columns) -> np.ndarray:
    return np.column_stack(
        [batch.column(c).cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False) for c in columns]
    ).astype(np.float32)


def categorical_codes(batch: pa.Table | pa.RecordBatch, spec: FeatureSpec) -> np.ndarray:
    codes = []
    for column in spec.categorical_columns:
        vocab = pa.array(spec.vocabularies[column], pa.string())
        index = pc.index_in(batch.column(column).cast(pa.string()), value_set=vocab)
        codes.append(pc.add(index, 1).fill_null(0).to_numpy(zero_copy_only=False))
    return np.column_stack(codes).astype(np.int64)


def dense_shares(batch: pa.Table | pa.RecordBatch, n_categories: int) -> np.ndarray:
    """Scatter the sparse (category_ids, category_shares) lists into a dense [N, n_categories] matrix."""
    ids = batch.column("category_ids")
    shares = batch.column("category_shares")
    if isinstance(ids, pa.ChunkedArray):
        ids, shares = ids.combine_chunks(), shares.combine_chunks()
    out = np.zeros((len(ids), n_categories), dtype=np.float32)
    rows = pc.list_parent_indices(ids).to_numpy()
    flat_ids = pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    flat_shares = pc.list_flatten(shares).to_numpy(zero_copy_only=False)
    if flat_ids.size and (flat_ids.max() >= n_categories or flat_ids.min() < 0):
        raise LookalikeError(
            f"customer_features.category_ids holds category_id {int(flat_ids.max())}, but the model knows "
            f"{n_categories} categories: the categories table changed since training. Retrain with `lookalike train`."
        )
    out[rows, flat_ids] = flat_shares
    return out


def location_tokens(text: str, n_buckets: int, n_tokens: int) -> list[int]:
    tokens = re.findall(TOKEN_PATTERN, text.lower())
    tokens += ["zip3:" + t[:3] for t in tokens if t.isdigit() and len(t) == 5]
    ids = [1 + zlib.crc32(t.encode("utf-8")) % n_buckets for t in tokens][:n_tokens]
    return ids + [0] * (n_tokens - len(ids))


# Each batch re-codes its distinct areas, and the same few thousand areas come back in every
# batch: remembered, a batch's Python work is one lookup per distinct value instead of a regex
# and a hash per token. Bounded, so an unusual warehouse with millions of areas cannot grow it.
@lru_cache(maxsize=1 << 16)
def cached_location_tokens(text: str, n_buckets: int, n_tokens: int) -> tuple[int, ...]:
    return tuple(location_tokens(text, n_buckets, n_tokens))


def distinct_codes(column: pa.Array | pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """The distinct strings of a column and, per row, the index of its value among them."""
    encoded = pc.dictionary_encode(column.cast(pa.string()).fill_null(""))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.unify_dictionaries().combine_chunks() if encoded.num_chunks else pa.array([], pa.dictionary(pa.int32(), pa.string()))
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def word_location(batch: pa.Table | pa.RecordBatch, spec: FeatureSpec) -> np.ndarray:
    values, index = distinct_codes(batch.column(LOCATION_COLUMN))
    table = np.array([cached_location_tokens(v, spec.n_buckets, spec.n_tokens) for v in values], dtype=np.int64)
    return table.reshape(-1, spec.n_tokens)[index]


def sentence_location(batch: pa.Table | pa.RecordBatch, lookup: dict[str, np.ndarray], dim: int) -> np.ndarray:
    values, index = distinct_codes(batch.column(LOCATION_COLUMN))
    missing = [v for v in values if v and v not in lookup]
    if missing:
        raise LookalikeError(
            f"location_embeddings has no vector for {len(missing)} location_area value(s), e.g. {missing[0]!r}. "
            "Run `lookalike embed-locations` first (`lookalike score` does it for you)."
        )
    zero = np.zeros(dim, dtype=np.float32)  # no address: the model learned what "no location" means
    table = np.stack([lookup.get(v, zero) if v else zero for v in values]) if values else np.zeros((0, dim), np.float32)
    return table.astype(np.float32)[index]


def encode(batch: pa.Table | pa.RecordBatch, spec: FeatureSpec, sentence_lookup: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The encoder's inputs for one batch, keyed by ONNX input name."""
    inputs = {
        "dense": dense_matrix(batch, spec.dense_columns),
        "categorical": categorical_codes(batch, spec),
        "shares": dense_shares(batch, spec.n_categories),
    }
    if spec.location == "word":
        inputs["location"] = word_location(batch, spec)
    elif spec.location == "sentence":
        if sentence_lookup is None:
            raise LookalikeError("This model uses sentence location embeddings but none were loaded.")
        inputs["location"] = sentence_location(batch, sentence_lookup, spec.sentence_dim)
    return inputs
