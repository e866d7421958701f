"""`lookalike score --engine spark`: customer_embeddings on Spark, ONNX Runtime inside mapInArrow.

The same Encoder as the DuckDB path (`scoring.Encoder`, `features.encode`) runs in every
Python worker. The model travels as broadcast bytes (manifest + .onnx), is written once per
worker process to a temp folder and loaded once (cached by model version), so the executors
need nothing but the `lookalike` package and onnxruntime. The table is written under a
temporary name and swapped in only after every partition scored, so a failure keeps the
previous customer_embeddings.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.model.features import check_columns
from lookalike_cli.model.manifest import check_version, find_manifest, load_manifest
from lookalike_cli.model.scoring import QUANTIZE_MODES, Encoder
from lookalike_cli.progress import Progress

EMBEDDINGS_SCHEMA = "customer_id bigint, embedding array<float>, model_version string"

# Per Python worker process: (model_version, onnx file) -> Encoder; a worker scores many partitions.
_WORKER_ENCODERS: dict[tuple[str, str], Encoder] = {}


def model_payload(manifest_path: Path, quantize: str) -> dict:
    """What executors need to score: the manifest and the chosen ONNX file, as bytes."""
    manifest = load_manifest(manifest_path)
    if quantize not in QUANTIZE_MODES:
        raise ParameterError(f"{{quantize}} must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}.", "quantize")
    onnx_file = manifest["onnx_file"] if quantize == "none" else manifest["quantized"][quantize]
    return {
        "manifest_name": manifest_path.name,
        "manifest": manifest_path.read_bytes(),
        "onnx_file": onnx_file,
        "onnx": (manifest_path.parent / onnx_file).read_bytes(),
        "model_version": manifest["model_version"],
        "quantize": quantize,
    }


def worker_encoder(payload: dict) -> Encoder:
    key = (payload["model_version"], payload["onnx_file"])
    if key not in _WORKER_ENCODERS:
        folder = Path(tempfile.mkdtemp(prefix="lookalike_model_"))
        try:
            (folder / payload["manifest_name"]).write_bytes(payload["manifest"])
            (folder / payload["onnx_file"]).write_bytes(payload["onnx"])
            # One ORT thread per worker: Spark already runs one worker per core.
            _WORKER_ENCODERS[key] = Encoder(folder / payload["manifest_name"], quantize=payload["quantize"], threads=1)
        finally:
            # The loaded session holds the graph in memory and nothing reads the files again: without this every
            # run left one model copy per worker in the temp folder, forever.
            shutil.rmtree(folder, ignore_errors=True)
    return _WORKER_ENCODERS[key]


def embeddings_batch(customer_ids: pa.Array, vectors: np.ndarray, model_version: str) -> pa.RecordBatch:
    """The customer_embeddings rows of one batch, typed as Spark's array<float> (a variable-size list)."""
    rows, dim = vectors.shape
    offsets = pa.array(np.arange(0, (rows + 1) * dim, dim, dtype=np.int32))
    return pa.RecordBatch.from_arrays(
        [
            customer_ids.cast(pa.int64()),
            pa.ListArray.from_arrays(offsets, pa.array(vectors.ravel(), pa.float32())),
            pa.array(np.full(rows, model_version, dtype=object), pa.string()),
        ],
        names=["customer_id", "embedding", "model_version"],
    )


def score_partition(batches: Iterator[pa.RecordBatch], payload) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: Arrow batches of customer_features in, embeddings out."""
    encoder = worker_encoder(payload.value)
    for batch in batches:
        if batch.num_rows:
            yield embeddings_batch(batch.column("customer_id"), encoder.embed(batch), encoder.model_version)


def score_spark(settings, model: str | None = None, quantize: str = "none", model_version: str | None = None,
                progress: Progress = print) -> dict:
    """Build the Spark table <schema>.customer_embeddings from <schema>.customer_features."""
    from functools import partial

    from lookalike_cli.model.export import quantize_int8
    from lookalike_cli.model.features import FeatureSpec
    from lookalike_cli.spark.session import replace_table, require_spark_table, schema_name, spark_session

    manifest_path = find_manifest(settings.onnx_dir, model)
    manifest = load_manifest(manifest_path)
    check_version(manifest_path, manifest["model_version"], model_version)
    spec = FeatureSpec.from_dict(manifest["features"])
    if spec.location == "sentence":
        raise LookalikeError(
            f"{manifest_path.name} embeds locations with a sentence encoder, whose location_embeddings "
            "live in the DuckDB warehouse: score it with `lookalike score`, or train it with `lookalike train --location word` (or none) for Spark."
        )
    if quantize != "none" and quantize not in manifest["quantized"]:
        if quantize not in QUANTIZE_MODES:
            raise ParameterError(f"{{quantize}} must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}.", "quantize")
        quantize_int8(manifest_path)
    spark = spark_session(settings, progress=progress)
    schema = schema_name(settings)
    source, target = f"{schema}.customer_features", f"{schema}.customer_embeddings"
    require_spark_table(spark, source, "Build it with `lookalike build --target spark`.")
    features = spark.table(source)
    # Fail on the driver, before any job, when the table cannot feed this model.
    check_columns(features.columns, spec.required_columns)
    features = features.select(*spec.required_columns)
    parallelism = spark.sparkContext.defaultParallelism
    if features.rdd.getNumPartitions() < parallelism:
        features = features.repartition(parallelism)
    payload = spark.sparkContext.broadcast(model_payload(manifest_path, quantize))
    progress(f"Scoring {source} with {manifest_path.name} ({manifest['model_version']}, {quantize}) on Spark ...")
    started = time.perf_counter()
    try:
        scored = features.mapInArrow(partial(score_partition, payload=payload), EMBEDDINGS_SCHEMA)
        replace_table(spark, scored, target)
    finally:
        payload.unpersist()
    seconds = time.perf_counter() - started
    rows = spark.table(target).count()
    progress(f"{target}: {rows:,} customers in {seconds:.1f}s ({rows / max(seconds, 1e-9):,.0f}/s)")
    return {"customers": rows, "model_version": manifest["model_version"], "seconds": seconds,
            "manifest": str(manifest_path), "quantize": quantize, "table": target}

