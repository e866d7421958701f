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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LookalikeError(f"Cannot read model manifest {path} ({exc}). Export the model again with "
                             f"`lookalike train --name {Path(path).stem}`.") from exc
    if not isinstance(manifest, dict):
        raise LookalikeError(f"Model manifest {path} is not a JSON object. Export the model again with "
                             f"`lookalike train --name {Path(path).stem}`.")
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


def verified_model_file(manifest_path: Path, manifest: dict, quantize: str = "none") -> Path:
    """The ONNX file a manifest names, refused unless its bytes hash to what the manifest recorded.

    Checked before ONNX Runtime sees the file: ORT's error for a truncated graph is a protobuf parse
    failure, which inside the dbt scoring model became a traceback. Manifests written before a hash was
    recorded (the int8 file of older exports) are loaded unchecked."""
    manifest_path = Path(manifest_path)
    name = manifest.get("name", manifest_path.stem)
    if quantize == "none":
        file_name, expected = manifest.get("onnx_file"), manifest.get("onnx_sha256")
        rebuild = f"lookalike train --name {name}"
    else:
        file_name, expected = manifest.get("quantized", {}).get(quantize), manifest.get("quantized_sha256", {}).get(quantize)
        rebuild = f"lookalike train --name {name} --quantize {quantize}"
    if not file_name:
        raise LookalikeError(f"Model manifest {manifest_path} names no {'' if quantize == 'none' else quantize + ' '}ONNX file. "
                             f"Export the model again with `lookalike train --name {name}`.")
    path = manifest_path.parent / file_name
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError as exc:
        raise LookalikeError(f"Model file {path} (named by {manifest_path.name}) is missing. Rebuild it: `{rebuild}`.") from exc
    if expected and digest != expected:
        raise LookalikeError(
            f"Model file {path} does not match its manifest {manifest_path.name} (sha256 {digest[:12]}, the manifest says "
            f"{expected[:12]}): it is truncated, corrupt or from another export. Rebuild it: `{rebuild}`."
        )
    return path
