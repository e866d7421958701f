"""`lookalike ads train-embedding`: train the ad encoder on co-click pairs, export it to ONNX,
score every ad into `ad_embeddings`.

Loss (paper eq. 6): -I * log sigmoid(s * f(Ai).f(Aj)) for co-clicked pairs weighted by the
interactive metric I, and -w_neg * log sigmoid(-s * f(Ai).f(Aj)) for sampled non-co-clicked pairs.
The embeddings are unit vectors, so the dot product is a cosine in [-1, 1] and sigmoid of it
could never pass 0.73; the fixed scale s (logit_scale, 5) lets the loss reach near zero.
w_neg is the mean positive I, the paper's advice that negatives weigh like an average positive.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F

from lookalike_cli.ads.model import AdEncoder, EncoderConfig, TokenizerSpec, tokenize
from lookalike_cli.threads import single_thread
from lookalike_cli.errors import LookalikeError
from lookalike_cli.files import remove_stale_temp_files, replaced, write_text_atomically
from lookalike_cli.model.export import artifact_identity, export_graph
from lookalike_cli.vectors import to_column
from lookalike_cli.warehouse.connection import connection, replace_tables, require_table
from lookalike_cli.progress import Progress, quiet

MANIFEST_KIND = "ad_encoder"
OUTPUT_NAME = "ad_embedding"  # not "embedding": that is the token table initialiser's name
BUILD_HINT = "Build the ads models first: `lookalike ads build` (after `lookalike generate-data --ads` or `load-sample completejourney --ads`)."


@dataclass(frozen=True)
class EmbeddingOptions:
    epochs: int = 12
    batch_size: int = 512
    learning_rate: float = 3e-3
    logit_scale: float = 5.0
    seed: int = 0
    threads: int = 1
    token_dim: int = 64
    hidden: int = 128
    dim: int = 64
    buckets: int = 16384


@dataclass
class AdTexts:
    ad_ids: np.ndarray
    texts: list[str]
    product_types: list[str | None]

    def positions(self, ids: np.ndarray) -> np.ndarray:
        order = np.argsort(self.ad_ids)
        found = np.searchsorted(self.ad_ids, ids, sorter=order)
        return order[np.clip(found, 0, len(order) - 1)]


@dataclass
class PairSet:
    index_a: np.ndarray
    index_b: np.ndarray
    label: np.ndarray
    metric: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def read_ad_texts(con) -> AdTexts:
    require_table(con, "stg_ads", BUILD_HINT)
    frame = con.execute("select ad_id, ad_text, product_type from stg_ads order by ad_id").df()
    if frame.empty:
        raise LookalikeError("stg_ads is empty: load ads first (`lookalike generate-data --ads`).")
    return AdTexts(frame["ad_id"].to_numpy(np.int64), frame["ad_text"].fillna("").tolist(),
                   [None if pd.isna(v) else v for v in frame["product_type"]])


def read_pairs(con, ads: AdTexts, period: str, exclude: pd.DataFrame | None = None) -> tuple[PairSet, pd.DataFrame]:
    require_table(con, "ad_pairs", BUILD_HINT)
    frame = con.execute(
        "select ad_id_a, ad_id_b, label, interactive_metric from ad_pairs where period = ? order by ad_id_a, ad_id_b", [period]
    ).df()
    if exclude is not None and not frame.empty:
        # Held-out pairs are the ones the training period never showed, in either label.
        seen = exclude[["ad_id_a", "ad_id_b"]].assign(seen=True)
        frame = frame.merge(seen, on=["ad_id_a", "ad_id_b"], how="left")
        frame = frame[frame["seen"].isna()].drop(columns="seen")
    pairs = PairSet(ads.positions(frame["ad_id_a"].to_numpy(np.int64)), ads.positions(frame["ad_id_b"].to_numpy(np.int64)),
                    frame["label"].to_numpy(np.int64), frame["interactive_metric"].to_numpy(np.float32))
    return pairs, frame


def pair_loss(emb_a: torch.Tensor, emb_b: torch.Tensor, label: torch.Tensor, metric: torch.Tensor,
              logit_scale: float, negative_weight: float) -> torch.Tensor:
    logits = logit_scale * (emb_a * emb_b).sum(dim=-1)
    positive = -metric * F.logsigmoid(logits)
    negative = -negative_weight * F.logsigmoid(-logits)
    return torch.where(label > 0, positive, negative).mean()


def new_encoder(options: EmbeddingOptions) -> AdEncoder:
    torch.manual_seed(options.seed)
    return AdEncoder(EncoderConfig(buckets=options.buckets, token_dim=options.token_dim, hidden=options.hidden, dim=options.dim))


def train_encoder(token_ids: np.ndarray, pairs: PairSet, options: EmbeddingOptions, progress: Progress = quiet) -> tuple[AdEncoder, list[float]]:
    if not (pairs.label > 0).any():
        raise LookalikeError(
            "No co-clicked ad pairs in the training period: lower the dbt var ads_min_coclick_support "
            "or load more history (ad_pairs has no label 1 rows with period 'train')."
        )
    torch.set_num_threads(options.threads)
    model = new_encoder(options)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    negative_weight = float(pairs.metric[pairs.label > 0].mean())
    ids = torch.from_numpy(token_ids)
    a, b = torch.from_numpy(pairs.index_a), torch.from_numpy(pairs.index_b)
    label, metric = torch.from_numpy(pairs.label), torch.from_numpy(pairs.metric)
    generator = torch.Generator().manual_seed(options.seed)
    losses: list[float] = []
    for epoch in range(options.epochs):
        order = torch.randperm(len(pairs), generator=generator)
        total, batches = 0.0, 0
        model.train()
        for start in range(0, len(pairs), options.batch_size):
            batch = order[start:start + options.batch_size]
            loss = pair_loss(model(ids[a[batch]]), model(ids[b[batch]]), label[batch], metric[batch],
                             options.logit_scale, negative_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        losses.append(total / max(batches, 1))
        progress(f"  epoch {epoch + 1}/{options.epochs}: loss {losses[-1]:.4f}")
    model.eval()
    return model, losses


def embed_torch(model: AdEncoder, token_ids: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    with torch.no_grad():
        parts = [model(torch.from_numpy(token_ids[i:i + batch_size])).numpy() for i in range(0, len(token_ids), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.config.dim), np.float32)


def pair_auc(scores: np.ndarray, label: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(label > 0)) < 2:
        return float("nan")
    return float(roc_auc_score(label > 0, scores))


def cosine_pairs(vectors, pairs: PairSet) -> np.ndarray:
    """Row-wise cosine of pair members (dense unit vectors or sparse L2-normalised rows)."""
    a, b = vectors[pairs.index_a], vectors[pairs.index_b]
    if hasattr(a, "multiply"):
        return np.asarray(a.multiply(b).sum(axis=1)).ravel()
    return (a * b).sum(axis=1)


def tfidf_vectors(texts: list[str]):
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Words and character trigrams side by side (each part unit length, the whole scaled back to
    # unit length): the same evidence the encoder sees, weighted by rarity instead of co-clicks.
    words = TfidfVectorizer(analyzer="word", sublinear_tf=True).fit_transform(texts)
    grams = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 3), sublinear_tf=True).fit_transform(texts)
    return sp.hstack([words, grams]).tocsr() * np.float32(np.sqrt(0.5))


def evaluate_embeddings(vectors: dict[str, object], pairs: PairSet) -> dict[str, float]:
    return {name: pair_auc(cosine_pairs(v, pairs), pairs.label) for name, v in vectors.items()}


# --------------------------------------------------------------------------- export and scoring


def export_encoder(model: AdEncoder, tokenizer: TokenizerSpec, options: EmbeddingOptions, metrics: dict,
                   onnx_dir: Path, name: str, sample_ids: np.ndarray) -> Path:
    onnx_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = onnx_dir / f"{name}.onnx"
    example = torch.from_numpy(sample_ids[:4])
    model.eval()
    remove_stale_temp_files(onnx_dir)  # of an export killed before its swap
    # Each file written beside its target and moved in when whole, the manifest last: a kill leaves the previous
    # encoder, or at worst a new graph under the old manifest, which its onnx_sha256 refuses.
    with replaced(onnx_path, ".onnx") as onnx_tmp, replaced(onnx_dir / f"{name}.pt") as weights_tmp:
        export_graph(model, {"token_ids": example}, {"token_ids": {0: "batch", 1: "tokens"}}, onnx_tmp)
        torch.save(model.state_dict(), weights_tmp)
        parity = float(np.abs(embed_onnx(onnx_tmp, sample_ids) - embed_torch(model, sample_ids)).max())
        identity = {**artifact_identity(name, onnx_tmp), "onnx_file": onnx_path.name}
    manifest = {
        "kind": MANIFEST_KIND,
        **identity,
        "input": {"name": "token_ids", "dtype": "int64", "shape": ["batch", "tokens"],
                  "encoding": "lookalike_cli.ads.model.tokenize with `tokenizer`: lower-cased [a-z0-9]+ words as 'w:<word>' "
                              "and char n-grams of '#<word>#' as 'c:<gram>', crc32 mod (buckets-1) + 1, 0 = padding"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", model.config.dim], "l2_normalised": True},
        "tokenizer": tokenizer.to_dict(),
        "config": model.config.to_dict(),
        "training": {"options": asdict(options), "loss": "-I log sigmoid(s e_a.e_b) (co-clicked); -w_neg log sigmoid(-s e_a.e_b) (negatives)"},
        "metrics": {**metrics, "onnx_vs_torch_max_abs_diff": parity},
    }
    path = onnx_dir / f"{name}.json"
    write_text_atomically(path, json.dumps(manifest, indent=2) + "\n")  # a kill mid-write keeps the previous manifest
    return path


def load_manifest(onnx_dir: Path, name: str) -> dict:
    path = onnx_dir / f"{name}.json"
    if not path.exists():
        raise LookalikeError(f"Ad encoder manifest {path} not found: run `lookalike ads train-embedding --name {name}` first.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LookalikeError(f"Ad encoder manifest {path} is not valid JSON ({exc}): retrain with `lookalike ads train-embedding`.") from exc
    if manifest.get("kind") != MANIFEST_KIND:
        raise LookalikeError(f"{path} is not an ad encoder manifest (kind {manifest.get('kind')!r}): pass an ads model name.")
    onnx_path = path.with_name(manifest["onnx_file"])
    if not onnx_path.exists() or hashlib.sha256(onnx_path.read_bytes()).hexdigest() != manifest["onnx_sha256"]:
        raise LookalikeError(f"{onnx_path} is missing or does not match its manifest's sha256: retrain with `lookalike ads train-embedding`.")
    manifest["path"] = str(path)
    return manifest


def embed_onnx(onnx_path: Path, token_ids: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    parts = [session.run(None, {"token_ids": token_ids[i:i + batch_size]})[0] for i in range(0, len(token_ids), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def embeddings_table(ad_ids: np.ndarray, vectors: np.ndarray, model_version: str) -> pa.Table:
    return pa.table({
        "ad_id": pa.array(ad_ids, type=pa.int64()),
        "embedding": to_column(vectors),
        "model_version": pa.array([model_version] * len(ad_ids), type=pa.string()),
    })


def score_ads(db_path: Path, onnx_dir: Path, name: str, progress: Progress = quiet) -> int:
    """ONNX Runtime embeds every ad of stg_ads; ad_embeddings is replaced in one transaction."""
    manifest = load_manifest(onnx_dir, name)
    with connection(db_path, read_only=True) as con:
        ads = read_ad_texts(con)
    tokenizer = TokenizerSpec(**manifest["tokenizer"])
    vectors = embed_onnx(Path(manifest["path"]).with_name(manifest["onnx_file"]), tokenize(ads.texts, tokenizer))
    with connection(db_path) as con:
        replace_tables(con, {"ad_embeddings": embeddings_table(ads.ad_ids, vectors, manifest["model_version"])})
    progress(f"Scored {len(ads.ad_ids):,} ads into ad_embeddings ({manifest['model_version']}).")
    return len(ads.ad_ids)


@single_thread
def train_ad_embedding(db_path: Path, onnx_dir: Path, name: str = "ads_encoder", options: EmbeddingOptions = EmbeddingOptions(),
                       progress: Progress = quiet) -> dict:
    """Train on the train-period pairs, report held-out AUCs, export, and score ad_embeddings."""
    started = time.perf_counter()
    with connection(db_path, read_only=True) as con:
        ads = read_ad_texts(con)
        train_pairs, train_frame = read_pairs(con, ads, "train")
        test_pairs, _ = read_pairs(con, ads, "test", exclude=train_frame)
    tokenizer = TokenizerSpec(buckets=options.buckets)
    token_ids = tokenize(ads.texts, tokenizer)
    progress(f"Training the ad encoder on {len(train_pairs):,} pairs ({int((train_pairs.label > 0).sum()):,} co-clicked) "
             f"over {len(ads.ad_ids):,} ads ...")
    untrained = embed_torch(new_encoder(options), token_ids)
    model, losses = train_encoder(token_ids, train_pairs, options, progress)
    trained = embed_torch(model, token_ids)
    aucs = evaluate_embeddings({"trained": trained, "untrained": untrained, "tfidf": tfidf_vectors(ads.texts)}, test_pairs)
    metrics = {
        "heldout_pairs": len(test_pairs),
        "heldout_positive_pairs": int((test_pairs.label > 0).sum()),
        "train_pairs": len(train_pairs),
        "auc_trained": aucs["trained"], "auc_untrained": aucs["untrained"], "auc_tfidf": aucs["tfidf"],
        "final_loss": losses[-1],
    }
    progress(f"Held-out pair AUC: trained {aucs['trained']:.3f}, untrained {aucs['untrained']:.3f}, TF-IDF {aucs['tfidf']:.3f} "
             f"({metrics['heldout_positive_pairs']:,} co-clicked of {len(test_pairs):,} pairs)")
    manifest_path = export_encoder(model, tokenizer, options, metrics, onnx_dir, name, token_ids[:64])
    score_ads(db_path, onnx_dir, name, progress)
    manifest = json.loads(manifest_path.read_text())
    return {"manifest": str(manifest_path), "model_version": manifest["model_version"], "metrics": manifest["metrics"],
            "seconds": round(time.perf_counter() - started, 1)}
