"""Score customers with an exported model: ONNX Runtime over Arrow batches.

`score_relation` is the one scoring path. The dbt Python model
`lookalike_cli/warehouse/dbt_project/python_models/customer_embeddings.py` returns it to dbt
(`lookalike dbt run -s customer_embeddings`, `lookalike build`); the CLI's `lookalike score`
prepares what the model needs (location vectors, the int8 file) and streams it into the same
table in this process, without dbt's start-up (seconds: at 1M customers more than the scoring).
Validation happens before the first batch, so a mismatch between the warehouse and the
manifest fails fast, and either way the previous table is kept.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TypeVar

import numpy as np
import pyarrow as pa

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.progress import Progress
from lookalike_cli.vectors import to_column
from lookalike_cli.model.manifest import (OUTPUT_NAME, check_trained_here, check_version, find_manifest, load_manifest,
                                         verified_model_file)
from lookalike_cli.model.features import FeatureSpec, check_columns, encode

DEFAULT_BATCH_SIZE = 8192
EMBEDDINGS_TABLE = "customer_embeddings"
# Scored batches computed ahead of the writer: one is enough to overlap DuckDB's write of a batch
# with the reading, encoding and scoring of the next; more only holds memory (4 MiB a batch).
PREFETCH_BATCHES = 2
# Rows per ONNX Runtime call when a batch is split across worker threads: small enough that a
# layer's activations stay in a core's L2 cache, large enough that per-call overhead is noise.
SUB_BATCH_ROWS = 2048


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
QUANTIZE_MODES = ("none", "int8")


class Encoder:
    """One exported model loaded into ONNX Runtime, fed from Arrow batches.

    Parallel over rows, not within operators: each batch is cut into SUB_BATCH_ROWS slices run
    by `threads` workers (default: every CPU this process may use), each calling a
    single-threaded session. ONNX Runtime's own intra-op threading splits each of the graph's
    ~40 small operators across cores and waits for all of them after each one; on 2 cores
    data parallelism scored 1.15-1.2x faster (benchmarks/run.py, score stage).
    """

    def __init__(self, manifest_path: Path, quantize: str = "none", threads: int | None = None):
        import onnxruntime as ort

        self.manifest_path = Path(manifest_path)
        self.manifest = load_manifest(self.manifest_path)
        self.spec = FeatureSpec.from_dict(self.manifest["features"])
        self.dim = int(self.manifest["output"]["shape"][1])
        self.model_version = self.manifest["model_version"]
        if quantize not in QUANTIZE_MODES:
            raise ParameterError(f"{{quantize}} must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}.", "quantize")
        if quantize != "none" and quantize not in self.manifest["quantized"]:
            raise LookalikeError(f"{self.manifest_path.name} has no {quantize} model yet: run `lookalike score --quantize {quantize}`.")
        onnx_path = verified_model_file(self.manifest_path, self.manifest, quantize)
        options = ort.SessionOptions()
        # Values below float32's normal range (a share of 1e-39) make the CPU's FMA units take a
        # microcode assist per operand: one customer batch with ~1% such values ran the first layer
        # 1.4x slower. Flushing them to zero changes no output above 1e-38.
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        options.intra_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidProtobuf, ...) for an unloadable graph
            raise LookalikeError(f"ONNX Runtime cannot load model file {onnx_path} ({str(exc).splitlines()[0][:300]}). "
                                 f"Export it again with `lookalike train --name {self.manifest.get('name', self.manifest_path.stem)}`.") from exc
        self.workers = max(1, threads or available_cpus())
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="lookalike-score") if self.workers > 1 else None
        self.sentence_lookup: dict[str, np.ndarray] | None = None

    def check(self, columns: list[str], con=None) -> None:
        """Fail before scoring when the warehouse cannot feed this model."""
        check_columns(columns, self.spec.required_columns)
        if self.spec.location == "sentence":
            from lookalike_cli.model.locations import load_location_lookup

            self.sentence_lookup = load_location_lookup(con)

    def embed(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        return self.run(encode(batch, self.spec, self.sentence_lookup))

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The network on already-encoded inputs: (rows, dim) float32 embeddings."""
        rows = len(next(iter(inputs.values())))
        if self._pool is None or rows <= SUB_BATCH_ROWS:
            return self.session.run([OUTPUT_NAME], inputs)[0]
        out = np.empty((rows, self.dim), dtype=np.float32)

        def run_slice(start: int) -> None:
            stop = start + SUB_BATCH_ROWS
            out[start:stop] = self.session.run([OUTPUT_NAME], {k: v[start:stop] for k, v in inputs.items()})[0]

        # list() waits for every slice and re-raises the first error.
        list(self._pool.map(run_slice, range(0, rows, SUB_BATCH_ROWS)))
        return out

    def score_batches(self, reader: pa.RecordBatchReader, progress: Progress | None = None, total: int | None = None) -> Iterator[pa.RecordBatch]:
        done, start, last_report = 0, time.perf_counter(), 0.0
        for batch in reader:
            if batch.num_rows == 0:
                continue
            vectors = self.embed(batch)
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("customer_id").cast(pa.int64()),
                    to_column(vectors),
                    pa.array(np.full(batch.num_rows, self.model_version, dtype=object), pa.string()),
                ],
                names=["customer_id", "embedding", "model_version"],
            )
            done += batch.num_rows
            elapsed = time.perf_counter() - start
            # At most one line every 2 s (and the last one): millions of rows are hundreds of batches.
            if progress and (elapsed - last_report >= 2.0 or done == total):
                last_report = elapsed
                rate = done / max(elapsed, 1e-9)
                eta = f", ETA {(total - done) / rate:.0f}s" if total else ""
                of_total = f"/{total:,}" if total else ""
                progress(f"  scored {done:,}{of_total} customers ({rate:,.0f}/s{eta})")

    def output_schema(self) -> pa.Schema:
        return pa.schema([("customer_id", pa.int64()), ("embedding", pa.list_(pa.float32(), self.dim)), ("model_version", pa.string())])


def score_relation(relation, con, onnx_dir: str | os.PathLike | None = None, model: str | None = None,
                   quantize: str = "none", expected_version: str | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None) -> pa.RecordBatchReader:
    """Embed every row of a DuckDB relation over customer_features, as a stream of customer_embeddings batches.

    A stream, not a table: DuckDB writes each batch as it is scored, so memory stays at a few
    batches whatever the number of customers (a table of 10M x 128 floats would be 5 GiB).
    Everything that can fail on bad input is checked here, before the first batch is read.
    `progress` (None: no reports) gets a line at most every 2 s.
    """
    from lookalike_cli.settings import Settings

    onnx_dir = Path(onnx_dir) if onnx_dir else Settings.resolve().onnx_dir
    encoder = Encoder(find_manifest(onnx_dir, model or None), quantize=quantize or "none")
    check_version(encoder.manifest_path, encoder.model_version, expected_version)
    encoder.check(relation.columns, con)
    if progress:
        progress(f"scoring with {encoder.manifest_path.name} ({encoder.model_version}, {quantize or 'none'})")
    total = relation.aggregate("count(*)").fetchall()[0][0] if progress else None
    reader = relation.select(", ".join(encoder.spec.required_columns)).to_arrow_reader(batch_size)
    return pa.RecordBatchReader.from_batches(
        encoder.output_schema(), prefetched(encoder.score_batches(reader, progress=progress, total=total), PREFETCH_BATCHES))


T = TypeVar("T")


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """The items of `items`, computed up to `depth` ahead in a background thread.

    Without it scoring's stages take turns: DuckDB asks for a batch and waits while it is read,
    encoded and scored, then writes it while nothing is scored. Errors are re-raised in the
    consumer; a consumer that stops early stops the producer.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop, finished = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(finished)
        except BaseException as exc:  # re-raised by the consumer, with its traceback
            put(_Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close:
                close()

    producer = threading.Thread(target=produce, name="lookalike-score-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            item = ready.get()
            if item is finished:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        producer.join()


@contextmanager
def consumed_in_a_write(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatchReader]:
    """`reader` for a write that consumes it (a `with` around the write and its transaction): if the write
    fails because the stream failed (bad input found mid-way), the stream's own error is raised, not
    DuckDB's wrapper of it."""
    errors: list[BaseException] = []

    def watched() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except BaseException as exc:
            errors.append(exc)
            raise

    try:
        yield pa.RecordBatchReader.from_batches(reader.schema, watched())
    except Exception:
        if errors:
            raise errors[0] from None
        raise


def write_embeddings(con, reader: pa.RecordBatchReader, table: str = EMBEDDINGS_TABLE) -> int:
    """Replace `table` with the rows of a scoring stream in one transaction; returns the row count.

    If the stream fails (bad input found mid-way) the transaction rolls back, so the previous
    table is kept, and the stream's own error is raised, not DuckDB's wrapper of it.
    """
    from lookalike_cli.warehouse.connection import registered, transaction

    with consumed_in_a_write(reader) as stream, transaction(con), registered(con, "scored_customer_batches", stream):
        con.execute(f"create or replace table {table} as select * from scored_customer_batches")
    return con.execute(f"select count(*) from {table}").fetchall()[0][0]


def score(settings, model: str | None = None, quantize: str = "none", model_version: str | None = None,
          echo=None) -> dict:
    """Build customer_embeddings in this process: what the dbt model does, without dbt's start-up.

    Prepares location vectors and the int8 file first. Progress lines go to `echo` (stdout by default)."""
    from lookalike_cli.model.locations import embed_locations
    from lookalike_cli.warehouse.connection import connection

    echo = echo or (lambda line: print(line, flush=True))
    manifest_path = find_manifest(settings.onnx_dir, model)
    manifest = load_manifest(manifest_path)
    check_version(manifest_path, manifest["model_version"], model_version)
    if quantize not in QUANTIZE_MODES:
        raise ParameterError(f"{{quantize}} must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}.", "quantize")
    if quantize != "none" and quantize not in manifest["quantized"]:
        # Lazy: export imports torch (seconds), which scoring with an existing file does not need.
        from lookalike_cli.model.export import quantize_int8

        quantize_int8(manifest_path)
    # Before reading any row: a damaged file fails here, naming it, not inside ONNX Runtime.
    verified_model_file(manifest_path, load_manifest(manifest_path), quantize)
    with connection(settings.db_path) as con:
        check_trained_here(manifest_path, manifest, settings.db_path, con)
        if manifest["features"]["location"] == "sentence":
            embed_locations(con, progress=echo)
        start = time.perf_counter()
        # Read through a second connection to the same database: the first one runs the write.
        reader = con.cursor()
        try:
            stream = score_relation(reader.table("customer_features"), reader, onnx_dir=manifest_path.parent,
                                    model=str(manifest_path), quantize=quantize, expected_version=model_version,
                                    progress=echo)
            rows = write_embeddings(con, stream)
        finally:
            reader.close()
        seconds = time.perf_counter() - start
        version = con.execute(f"select any_value(model_version) from {EMBEDDINGS_TABLE}").fetchall()[0][0]
    return {"customers": rows, "model_version": version, "seconds": seconds, "manifest": str(manifest_path), "quantize": quantize}
