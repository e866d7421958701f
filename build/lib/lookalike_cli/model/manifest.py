"""Model manifests: finding, reading and checking them, without importing torch or ONNX Runtime.

A manifest (`<name>.json` beside `<name>.onnx`) makes scoring self-contained: config, feature
spec, label, metrics, and where the model was trained (warehouse file and training-data
fingerprint), so a model trained on another warehouse is refused instead of used silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lookalike_cli.errors import LookalikeError
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


def check_trained_here(manifest_path: Path, manifest: dict, db_path: Path, con) -> None:
    """Refuse a model trained on another warehouse: its file and its training data both differ from this one's.

    The same file with rebuilt data (new orders since training) is fine: the model still encodes
    this warehouse's features, and `lookalike train` refreshes it when wanted.
    """
    training = manifest.get("training", {})
    trained_on = training.get("warehouse")
    if not trained_on or Path(trained_on) == Path(db_path):
        return
    tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    if not {"training_features", "similarity_pairs"} <= tables:
        return
    if data_fingerprint(con, manifest["label"]) == training.get("data_fingerprint"):
        return  # a copy of the warehouse it was trained on
    raise LookalikeError(
        f"Model {manifest_path.name} was trained on another warehouse ({trained_on}, training-data fingerprint "
        f"{training.get('data_fingerprint')}), not {db_path}. Run `lookalike train` on this warehouse, or point "
        f"--onnx-dir at its own models (default: {Path(db_path).stem}_models/ beside it)."
    )
