"""Model manifests: finding, reading and checking them, without importing torch or ONNX Runtime.

A manifest (`<name>.json` beside `<name>.onnx`) makes scoring self-contained: config, feature
spec, label, metrics, and where the model was trained (warehouse file and training-data
fingerprint), so a model trained on another warehouse is refused instead of used silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.model.config import label_expression

MANIFEST_FORMAT = 1
# Not "embedding": the word-location Embedding op already owns that value name in the graph.
OUTPUT_NAME = "customer_embedding"


def load_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LookalikeError(f"Cannot read model manifest {path}: {exc}") from exc
    if manifest.get("format_version") != MANIFEST_FORMAT:
        raise LookalikeError(
            f"Manifest {path} has format version {manifest.get('format_version')!r}, this lookalike reads "
            f"version {MANIFEST_FORMAT}. Retrain with `lookalike train` to export a current model."
        )
    return manifest


def customer_manifests(onnx_dir: Path) -> list[Path]:
    """Customer-encoder manifests in onnx_dir, oldest first (other models, e.g. the ads encoder, are skipped)."""
    found = []
    for path in Path(onnx_dir).glob("*.json"):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "kind" not in manifest and "model_version" in manifest:
            found.append((manifest.get("created_at", ""), path.stat().st_mtime, path))
    return [path for *_, path in sorted(found)]


def find_manifest(onnx_dir: Path, model: str | None = None) -> Path:
    """The manifest of `model` (a name or a path), or the most recently exported one in onnx_dir."""
    onnx_dir = Path(onnx_dir)
    if model:
        path = Path(model) if model.endswith(".json") else onnx_dir / f"{model}.json"
        if not path.exists():
            raise LookalikeError(f"No model manifest {path}. Train one with `lookalike train --name {Path(model).stem}`.")
        return path
    manifests = customer_manifests(onnx_dir)
    if not manifests:
        raise LookalikeError(f"No exported model in {onnx_dir}. Train one with `lookalike train`.")
    load_manifest(manifests[-1])
    return manifests[-1]


def check_version(manifest_path: Path, version: str, expected: str | None) -> None:
    if expected and expected != version:
        raise LookalikeError(
            f"Model {manifest_path.name} is version {version}, but version "
            f"{expected} was requested. Export that version again or drop the version pin."
        )


def data_fingerprint(con, label: str) -> str:
    """A hash of the exact rows trained on (training_features, similarity_pairs), so a manifest says which data made it."""
    parts = con.execute(
        f"""select (select count(*) || ':' || coalesce(sum(hash(f)::hugeint), 0) from training_features f),
                   (select count(*) || ':' || coalesce(sum(hash(customer_id_a, customer_id_b, {label_expression(label)}, split))::hugeint, 0)
                    from similarity_pairs)"""
    ).fetchall()[0]
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


WAREHOUSE_ID_TABLE = "lookalike_warehouse"


def warehouse_id(con, create: bool = False) -> str | None:
    """This warehouse's identity: a random id written once (by the first `lookalike train`) and kept by copies.

    A copy of the file (a backup, a scratch backtest, a moved warehouse) is the same lineage and
    keeps the id; a warehouse built separately gets its own.
    """
    exists = con.execute("select count(*) from information_schema.tables where table_name = ? and table_schema = 'main'",
                         [WAREHOUSE_ID_TABLE]).fetchall()[0][0]
    if not exists:
        if not create:
            return None
        con.execute(f"create table {WAREHOUSE_ID_TABLE} as select cast(uuid() as varchar) as warehouse_id, now() as created_at")
    return con.execute(f"select warehouse_id from {WAREHOUSE_ID_TABLE} limit 1").fetchall()[0][0]


def check_trained_here(manifest_path: Path, manifest: dict, db_path: Path, con) -> None:
    """Refuse a model trained on another warehouse (another lineage: its warehouse id differs from this one's).

    The same warehouse with rebuilt data (new orders since training), or a copy of it, is fine:
    the model still encodes this warehouse's features, and `lookalike train` refreshes it when wanted.
    """
    training = manifest.get("training", {})
    trained_id, here = training.get("warehouse_id"), warehouse_id(con)
    if not trained_id or not here or trained_id == here:
        return
    raise ParameterError(
        f"Model {manifest_path.name} was trained on another warehouse ({training.get('warehouse')}, warehouse id "
        f"{trained_id}, training-data fingerprint {training.get('data_fingerprint')}), not {db_path} (id {here}). "
        f"Run `lookalike train` on this warehouse, or point the models folder ({{onnx_dir}}) at its own models "
        f"(default: {Path(db_path).stem}_models/ beside it).", "onnx_dir"
    )
