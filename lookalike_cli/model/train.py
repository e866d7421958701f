"""Train the two-tower encoder on `similarity_pairs` and export it (seed 000, sections 4-5).

Offline training, online serving: the encoder reads `training_features` (features as of
feature_end_date) and learns to predict the similarity of behaviour AFTER that date (the
labels of `similarity_pairs`); `lookalike score` then applies it to `customer_features`, the
same features as of now.

Loss = L1 between cos(e_a, e_b) and the pair's label, early stopping on the valid split's
MAE, test MAE reported in the manifest. Only the customers that appear in a pair are read
into memory (a semi-join in DuckDB), as Arrow, encoded once.

The sampled pairs are few per customer (~6-12 at the default sampling), yet a batch holds 512 x 512
customer pairs whose labels follow from the same label-window vectors the SQL labels are computed
from (int_customer_label_vectors: cosine of per-category counts). So the L1 is also taken over every
other pair of the batch (TrainOptions.in_batch), with labels computed here exactly as
similarity_pairs computes its column; valid and test pairs are never among them.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.progress import Progress, quiet
from lookalike_cli.settings import writable_folder
from lookalike_cli.model.config import LABEL_COLUMNS, SCHEDULES, TrainOptions, label_expression, label_inputs, label_signals
from lookalike_cli.model.manifest import data_fingerprint, warehouse_id
from lookalike_cli.model.features import FeatureSpec, encode, fit_spec
from lookalike_cli.model.locations import embed_locations, load_location_lookup
from lookalike_cli.model.tower import CustomerTower, TowerConfig, pair_cosine
from lookalike_cli.warehouse.connection import require_table, table_columns, table_exists

SPLITS = ("train", "valid", "test")
LABEL_VECTORS = "int_customer_label_vectors"


@dataclass
class LabelVectors:
    """Each customer's label-window vectors (rows aligned with Dataset.inputs), one block per signal:
    unit rows (cosine labels) or 0/1 rows (jaccard), and whether the customer has the signal at all."""

    kind: str  # "cosine" | "jaccard"
    blocks: list[tuple[torch.Tensor, torch.Tensor]]  # (vectors [N, K_signal], has [N] bool)

    def grid(self, rows_a: torch.Tensor, rows_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels [n_a, n_b], defined [n_a, n_b]) of every (a, b) pair, as similarity_pairs defines them:
        cosine clamped to 1 (similarity_combined: the mean of the signals both customers have), Jaccard of the sets."""
        total, count = torch.zeros(len(rows_a), len(rows_b)), torch.zeros(len(rows_a), len(rows_b))
        for vectors, has in self.blocks:
            a, b = vectors[rows_a], vectors[rows_b]
            both = (has[rows_a][:, None] & has[rows_b][None, :]).to(a.dtype)
            shared = a @ b.T
            if self.kind == "jaccard":
                value = shared / (a.sum(1)[:, None] + b.sum(1)[None, :] - shared).clamp(min=1.0)
            else:
                value = shared.clamp(max=1.0)
            total, count = total + value * both, count + both
        return total / count.clamp(min=1.0), count > 0


@dataclass
class Dataset:
    """Encoded inputs of every customer in a pair, and the pairs as row indices into them."""

    spec: FeatureSpec
    inputs: dict[str, torch.Tensor]
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # split -> (rows_a, rows_b, label)
    fingerprint: str
    label_vectors: LabelVectors | None = None  # None: no int_customer_label_vectors, sampled pairs only


def load_label_vectors(con: duckdb.DuckDBPyConnection, label: str, ids: np.ndarray) -> LabelVectors | None:
    """The label-window vectors of the customers `ids` (ascending), dense per signal; None without the table."""
    if not table_exists(con, LABEL_VECTORS):
        return None
    signals, kind = label_signals(label)
    con.register("_label_customers", pa.table({"customer_id": pa.array(ids, pa.int64())}))
    try:
        blocks = []
        for signal in signals:
            # Each signal's own categories (engagements may be coarser than order categories).
            rows = con.sql(
                f"""select customer_id, dense_rank() over (order by category) - 1 as position, weight
                    from {LABEL_VECTORS} where signal = '{signal}' and weight > 0
                      and customer_id in (select customer_id from _label_customers)""").to_arrow_table()
            customers = rows.column("customer_id").to_numpy().astype(np.int64)
            positions = rows.column("position").to_numpy().astype(np.int64)
            weights = rows.column("weight").to_numpy().astype(np.float64)
            width = int(positions.max()) + 1 if len(positions) else 1
            vectors = np.zeros((len(ids), width), dtype=np.float64)
            vectors[np.searchsorted(ids, customers), positions] = 1.0 if kind == "jaccard" else weights
            if kind == "cosine":
                norms = np.linalg.norm(vectors, axis=1, keepdims=True)
                vectors = vectors / np.where(norms > 0, norms, 1.0)
            blocks.append((torch.from_numpy(vectors.astype(np.float32)), torch.from_numpy(vectors.any(axis=1))))
    finally:
        con.unregister("_label_customers")
    return LabelVectors(kind, blocks)


@dataclass
class TrainResult:
    tower: CustomerTower
    spec: FeatureSpec
    options: TrainOptions
    metrics: dict[str, float]
    fingerprint: str


def load_dataset(con: duckdb.DuckDBPyConnection, label: str, location: str, n_buckets: int = 4096,
                 progress: Progress = quiet) -> Dataset:
    for table in ("training_features", "similarity_pairs", "categories"):
        require_table(con, table, "Build the marts with `lookalike build`.")
    if label not in LABEL_COLUMNS:
        raise ParameterError(f"{{label}} must be one of {', '.join(LABEL_COLUMNS)}, got {label!r}.", "label")
    columns = table_columns(con, "similarity_pairs")
    for column in label_inputs(label):
        if column not in columns:
            raise LookalikeError(f"similarity_pairs has no column {column}. Rebuild the marts with `lookalike dbt build`.")
    expression = label_expression(label)
    pairs = con.sql(
        f"""select customer_id_a, customer_id_b, label, split
            from (select *, {expression} as label from similarity_pairs)
            where label is not null order by customer_id_a, customer_id_b"""
    ).to_arrow_table()
    if pairs.num_rows == 0:
        raise LookalikeError(f"similarity_pairs has no rows with a {label} label: nothing to train on.")
    features = con.sql(
        """select f.* from training_features f
           where f.customer_id in (select customer_id_a from similarity_pairs union select customer_id_b from similarity_pairs)
           order by f.customer_id"""
    ).to_arrow_table()
    n_categories = con.execute("select coalesce(max(category_id) + 1, 0) from categories").fetchall()[0][0]
    spec = fit_spec(features, n_categories=n_categories, location=location, n_buckets=n_buckets)
    if location == "sentence":
        embed_locations(con, progress=progress)
        lookup = load_location_lookup(con)
    else:
        lookup = None
    inputs = {k: torch.from_numpy(v) for k, v in encode(features, spec, lookup).items()}

    ids = features.column("customer_id").to_numpy()
    split = pairs.column("split").to_numpy(zero_copy_only=False)
    rows_a = np.searchsorted(ids, pairs.column("customer_id_a").to_numpy())
    rows_b = np.searchsorted(ids, pairs.column("customer_id_b").to_numpy())
    labels = pairs.column("label").to_numpy().astype(np.float32)
    by_split = {}
    for name in SPLITS:
        mask = split == name
        if not mask.any():
            raise LookalikeError(f"similarity_pairs has no {name!r} rows with a {label} label.")
        by_split[name] = (torch.from_numpy(rows_a[mask]), torch.from_numpy(rows_b[mask]), torch.from_numpy(labels[mask]))
    return Dataset(spec=spec, inputs=inputs, pairs=by_split, fingerprint=data_fingerprint(con, label),
                   label_vectors=load_label_vectors(con, label, ids.astype(np.int64)))


def gather(inputs: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[rows] for k, v in inputs.items()}


@torch.no_grad()
def mean_absolute_error(tower: CustomerTower, data: Dataset, split: str, batch_size: int = 8192) -> float:
    tower.eval()
    rows_a, rows_b, labels = data.pairs[split]
    total = 0.0
    for i in range(0, len(labels), batch_size):
        cos = pair_cosine(tower, gather(data.inputs, rows_a[i : i + batch_size]), gather(data.inputs, rows_b[i : i + batch_size]))
        total += (cos - labels[i : i + batch_size]).abs().sum().item()
    return total / len(labels)


def build_tower(spec: FeatureSpec, options: TrainOptions, shares: torch.Tensor | None = None) -> CustomerTower:
    if options.layers < 1:
        raise ParameterError("{layers} must be at least 1.", "layers")
    config = TowerConfig(
        n_dense=len(spec.dense_columns),
        cardinalities=[len(spec.vocabularies[c]) + 1 for c in spec.categorical_columns],
        n_categories=spec.n_categories,
        location=spec.location,
        n_buckets=spec.n_buckets,
        word_dim=options.word_dim,
        sentence_dim=spec.sentence_dim,
        layers=options.layers,
        hidden=options.hidden,
        dim=options.dim,
        dense_mean=spec.dense_mean,
        dense_std=spec.dense_std,
    )
    if options.scale_shares and shares is not None:
        mean, std = shares.mean(dim=0), shares.std(dim=0)
        config.share_mean = mean.tolist()
        # A category no training customer bought maps to 0 (std 1), not NaN.
        config.share_std = torch.where(std > 1e-6, std, torch.ones_like(std)).tolist()
    return CustomerTower(config)


def info_nce(grid: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Label-weighted symmetric in-batch InfoNCE over the cosine grid (row i's partner is column i)."""
    logits = grid / temperature
    targets = torch.arange(len(labels))
    per_pair = 0.5 * (F.cross_entropy(logits, targets, reduction="none") + F.cross_entropy(logits.T, targets, reduction="none"))
    weights = labels.clamp(min=0.0)
    return (weights * per_pair).sum() / weights.sum().clamp(min=1e-6)


def contrastive_loss(tower: CustomerTower, inputs_a: dict[str, torch.Tensor], inputs_b: dict[str, torch.Tensor],
                     labels: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosines of the pairs, label-weighted symmetric in-batch InfoNCE) from one forward pass."""
    n = labels.shape[0]
    both = tower(**{k: torch.cat([inputs_a[k], inputs_b[k]]) for k in inputs_a})
    grid = both[:n] @ both[n:].T
    return grid.diagonal(), info_nce(grid, labels, temperature)


def held_out_pairs(data: Dataset) -> sp.csr_matrix:
    """The valid and test pairs as a symmetric 0/1 matrix over dataset rows: the in-batch term never
    trains on them. (Sparse row slicing finds a batch's few held-out cells in well under a millisecond;
    sorted int64 pair keys took 8 ms a batch of 512 x 512.)"""
    n_rows = len(data.inputs["dense"])
    a = torch.cat([data.pairs[s][0] for s in ("valid", "test")]).numpy()
    b = torch.cat([data.pairs[s][1] for s in ("valid", "test")]).numpy()
    ones = np.ones(2 * len(a), dtype=np.float32)
    return sp.coo_matrix((ones, (np.r_[a, b], np.r_[b, a])), shape=(n_rows, n_rows)).tocsr()


def in_batch_l1(grid: torch.Tensor, data: Dataset, rows_a: torch.Tensor, rows_b: torch.Tensor,
                held: sp.csr_matrix) -> torch.Tensor | None:
    """Mean |cos - label| over the batch's other (a, b) pairs with a defined label, valid/test pairs and
    the sampled pairs themselves (the diagonal) left out; None when no pair qualifies."""
    target, defined = data.label_vectors.grid(rows_a, rows_b)
    is_held = torch.from_numpy(held[rows_a.numpy()][:, rows_b.numpy()].toarray() > 0)
    mask = defined & ~is_held & (rows_a[:, None] != rows_b[None, :])
    mask.fill_diagonal_(False)
    count = mask.sum()
    if count == 0:
        return None
    # A float mask, not boolean indexing: the backward pass stays one dense elementwise product.
    return ((grid - target).abs() * mask).sum() / count


def fit(data: Dataset, options: TrainOptions, progress: Progress = quiet) -> TrainResult:
    """Train with AdamW (cosine-decayed learning rate by default); keep the weights of the epoch with the best valid MAE."""
    torch.manual_seed(options.seed)
    torch.set_num_threads(options.threads)
    if options.contrastive < 0 or options.temperature <= 0 or options.in_batch < 0:
        raise ParameterError("{contrastive} and {in_batch} must be >= 0 and {temperature} > 0.",
                             "contrastive", "in_batch", "temperature")
    in_batch = options.in_batch > 0 and data.label_vectors is not None
    if options.in_batch > 0 and data.label_vectors is None:
        progress(f"  no {LABEL_VECTORS} table: training on the sampled pairs only (rebuild with `lookalike build` for the in-batch pairs)")
    held = held_out_pairs(data) if in_batch else None
    tower = build_tower(data.spec, options, data.inputs["shares"])
    optimizer = torch.optim.AdamW(tower.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    rows_a, rows_b, labels = data.pairs["train"]
    shuffle = torch.Generator().manual_seed(options.seed)
    best_mae, best_state, best_epoch, stale = float("inf"), None, 0, 0
    n_batches = (len(labels) + options.batch_size - 1) // options.batch_size
    if options.schedule not in SCHEDULES:
        raise ParameterError(f"{{schedule}} must be one of {', '.join(SCHEDULES)}, got {options.schedule!r}.", "schedule")
    # Cosine decay to 0 over the maximum epochs: big steps early, fine ones near the end.
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs * n_batches)
                 if options.schedule == "cosine" else None)
    for epoch in range(1, options.epochs + 1):
        tower.train()
        order = torch.randperm(len(labels), generator=shuffle)
        running, start = 0.0, time.perf_counter()
        for b in range(n_batches):
            batch = order[b * options.batch_size : (b + 1) * options.batch_size]
            batch_a, batch_b, batch_labels = rows_a[batch], rows_b[batch], labels[batch]
            inputs_a, inputs_b = gather(data.inputs, batch_a), gather(data.inputs, batch_b)
            if options.contrastive > 0 or in_batch:
                n = len(batch)
                both = tower(**{k: torch.cat([inputs_a[k], inputs_b[k]]) for k in inputs_a})
                grid = both[:n] @ both[n:].T  # cosines of every (a, b) pair of the batch
                loss = l1 = (grid.diagonal() - batch_labels).abs().mean()
                if options.contrastive > 0:
                    loss = loss + options.contrastive * info_nce(grid, batch_labels, options.temperature)
                if in_batch:
                    extra = in_batch_l1(grid, data, batch_a, batch_b, held)
                    if extra is not None:
                        loss = loss + options.in_batch * extra
            else:
                cos = pair_cosine(tower, inputs_a, inputs_b)
                loss = l1 = (cos - batch_labels).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            running = l1.item() if b == 0 else 0.95 * running + 0.05 * l1.item()
        valid_mae = mean_absolute_error(tower, data, "valid")
        rate = len(labels) / (time.perf_counter() - start)
        progress(f"  epoch {epoch}/{options.epochs}: train L1 {running:.4f}, valid MAE {valid_mae:.4f} ({rate:,.0f} pairs/s)")
        if valid_mae < best_mae - 1e-5:
            best_mae, best_state, best_epoch, stale = valid_mae, copy.deepcopy(tower.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= options.patience:
                progress(f"  early stop: valid MAE has not improved for {options.patience} epochs")
                break
    tower.load_state_dict(best_state)
    tower.eval()
    metrics = {
        "valid_mae": best_mae,
        "test_mae": mean_absolute_error(tower, data, "test"),
        "best_epoch": best_epoch,
        "train_pairs": len(labels),
        "test_pairs": len(data.pairs["test"][2]),
    }
    return TrainResult(tower=tower, spec=data.spec, options=options, metrics=metrics, fingerprint=data.fingerprint)


def default_name(options: TrainOptions) -> str:
    return f"two_tower_{options.layers}l_{options.location}_d{options.dim}"


def train(db_path: Path, onnx_dir: Path, name: str | None = None, progress: Progress = quiet, **options) -> Path:
    """Train from the warehouse at db_path and export onnx_dir/<name>.onnx + .json; returns the manifest path."""
    from lookalike_cli.model.export import export_model
    from lookalike_cli.warehouse.connection import connection

    opts = TrainOptions(**options)
    folder = writable_folder(Path(onnx_dir), "models")  # fail before training, not after it
    with connection(db_path) as con:
        # Sentence mode may add missing location vectors; the warehouse id is written once.
        lineage = warehouse_id(con, create=True)
        data = load_dataset(con, opts.label, opts.location, opts.n_buckets, progress=progress)
    progress(f"training on {len(data.pairs['train'][2]):,} pairs of {len(data.inputs['dense']):,} customers "
             f"(label {opts.label}, {opts.layers} layers, location {opts.location})")
    result = fit(data, opts, progress=progress)
    manifest = export_model(result, folder, name or default_name(opts), warehouse=db_path, warehouse_id=lineage)
    progress(f"valid MAE {result.metrics['valid_mae']:.4f}, test MAE {result.metrics['test_mae']:.4f}; wrote {manifest}")
    return manifest

