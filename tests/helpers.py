"""Shared test helpers (plain functions, no fixtures): drive the CLI in-process, read a warehouse
back with SQL, copy a built warehouse to mutate, build a warehouse once for every xdist worker,
and build planted-cluster warehouses.

Tests import from here (`from tests.helpers import run_cli`); the fixtures live in conftest.py,
which nothing imports.

Planted-cluster warehouses (the serving-layer tests: index, expand, publish) have known answers:
every customer belongs to one of SEGMENTS planted clusters (`segment_id` in customer_features),
vectors are L2-normalised, so exact neighbours and cluster membership are known without the
model layer.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from click.testing import CliRunner

from lookalike_cli.cli.main import main
from lookalike_cli.settings import Settings

# The shared generated warehouse (conftest.generated_warehouse).
GENERATED_CUSTOMERS = 3000
GENERATED_SEED = 11
# The shared ads warehouse (conftest.ads_warehouse_built): generated ad logs with planted intents.
GENERATED_ADS = 1500
ADS_BUDGET = 2000.0
ADS_BID_WEIGHTS = "revenue=1,margin=0.5"

SEGMENTS = 12
DIM = 32
MODEL_VERSION = "test-model-v1"


# --- the CLI and real warehouses -------------------------------------------------------

def run_cli(settings: Settings, *args: str, expect_exit: int | None = 0):
    """Invoke the `lookalike` CLI in-process against the given warehouse; assert the exit code."""
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "--db", str(settings.db_path),
            "--serving-db", str(settings.serving_db_path),
            "--onnx-dir", str(settings.onnx_dir),
            "--index-dir", str(settings.index_dir),
            *args,
        ],
        catch_exceptions=False,
    )
    if expect_exit is not None:
        assert result.exit_code == expect_exit, f"exit {result.exit_code}: {result.output}"
    return result


def cli_error(settings: Settings, *args: str) -> str:
    """The message of a command that must fail like a user error: exit 1, one `Error: ...` line
    as its last output (progress lines may come before it), no traceback."""
    result = run_cli(settings, *args, expect_exit=1)
    lines = result.output.splitlines()
    assert "Traceback" not in result.output, result.output
    assert [line for line in lines if line.startswith("Error: ")] == lines[-1:], result.output
    return lines[-1].removeprefix("Error: ")


def make_settings(folder: Path, name: str = "warehouse") -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    return Settings.resolve(
        db=folder / f"{name}.duckdb",
        serving_db=folder / f"{name}_serving.duckdb",
        onnx_dir=folder / "onnx",
        index_dir=folder / "indexes",
    )


def query(settings: Settings, sql: str, params=None) -> list[tuple]:
    """Rows of a SQL query on the warehouse, opened read-only."""
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def scalar(settings: Settings, sql: str, params=None):
    return query(settings, sql, params)[0][0]


def serving_connection(settings: Settings) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the serving file (published audiences, backtests, diagnostics)."""
    return duckdb.connect(str(settings.serving_db_path), read_only=True)


def copy_warehouse(source: Settings, folder: Path, name: str = "copy") -> Settings:
    """A private copy of a built warehouse (database, serving file, models, indexes, reports) to mutate.
    Copying into the same folder and name again restores the copy (and keeps dbt's parse state there)."""
    target = make_settings(folder, name)
    shutil.copy(source.db_path, target.db_path)
    if source.serving_db_path.exists():
        from lookalike_cli.audiences.publish import parquet_dir, relink_views

        shutil.copy(source.serving_db_path, target.serving_db_path)
        # The serving file's members and attributes are Parquet files beside it, named by absolute path in its views.
        shutil.rmtree(parquet_dir(target.serving_db_path), ignore_errors=True)
        if parquet_dir(source.serving_db_path).exists():
            shutil.copytree(parquet_dir(source.serving_db_path), parquet_dir(target.serving_db_path))
            relink_views(target.serving_db_path)
    for attribute in ("onnx_dir", "index_dir"):
        src = getattr(source, attribute)
        if src.exists():
            shutil.copytree(src, getattr(target, attribute), dirs_exist_ok=True)
    reports = source.db_path.parent / "reports"  # `lookalike ads bid`'s curve and report, beside the warehouse
    if reports.exists() and reports != target.db_path.parent / "reports":
        shutil.copytree(reports, target.db_path.parent / "reports", dirs_exist_ok=True)
    return target


def build_once_and_copy(shared: Path, name: str, build: Callable[[Settings], None], private: Path,
                        file_name: str = "warehouse") -> Settings:
    """A private copy (in `private`) of the warehouse `build` makes in `shared`, built once by
    whichever process gets here first (the xdist workers of one run share `shared`).

    The builder holds an exclusive lock the others wait on, and marks the build done; a failed
    build leaves no mark, so the next process builds again (in a fresh folder) and reports its own
    error rather than copying half a warehouse.
    """
    shared.mkdir(parents=True, exist_ok=True)
    done = shared / f"{name}.done"  # holds the folder of the finished build
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the build raises
        if not done.exists():
            settings = make_settings(Path(tempfile.mkdtemp(prefix=f"{name}_", dir=shared)), file_name)
            build(settings)
            done.write_text(str(settings.db_path.parent))
        source = make_settings(Path(done.read_text()), file_name)
    return copy_warehouse(source, private, file_name)


# --- planted-cluster warehouses (no dbt, no model) --------------------------------------

def planted_vectors(customers: int, dim: int = DIM, segments: int = SEGMENTS, noise: float = 0.9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(segment per customer, normalised vectors): segment centre + isotropic noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(segments, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    segment = rng.integers(0, segments, size=customers)
    vectors = centres[segment] + rng.normal(scale=noise / np.sqrt(dim), size=(customers, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return segment, vectors.astype(np.float32)


def embeddings_table(ids: np.ndarray, vectors: np.ndarray, model_version: str = MODEL_VERSION) -> pa.Table:
    flat = pa.array(vectors.reshape(-1), pa.float32())
    return pa.table({
        "customer_id": pa.array(ids, pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        "model_version": pa.array([model_version] * len(ids)),
    })


def build_planted_warehouse(path: Path, customers: int = 6000, opt_outs: int = 30, seed: int = 0) -> dict:
    """A warehouse file with customer_embeddings, customer_features (incl. a list column) and raw.opt_outs."""
    segment, vectors = planted_vectors(customers, seed=seed)
    ids = np.arange(1, customers + 1, dtype=np.int64) * 10  # ids are not row numbers
    rng = np.random.default_rng(seed + 1)
    con = duckdb.connect(str(path))
    con.register("embeddings", embeddings_table(ids, vectors))
    con.execute("create table customer_embeddings as select customer_id, embedding::float[%d] as embedding, model_version from embeddings" % vectors.shape[1])
    features = pa.table({
        "customer_id": pa.array(ids, pa.int64()),
        "segment_id": pa.array(segment, pa.int32()),
        "total_spend": pa.array(rng.gamma(2.0, 100.0, customers)),
        "gender": pa.array(rng.choice(["f", "m", "unknown"], customers)),
        "category_ids": pa.array([[int(s), int(s) + 100] for s in segment], pa.list_(pa.int32())),
    })
    con.register("features", features)
    con.execute("create table customer_features as select * from features")
    opted_out = rng.choice(ids, size=opt_outs, replace=False)
    con.execute("create schema raw")
    con.register("opted", pa.table({"customer_id": pa.array(opted_out, pa.int64())}))
    con.execute("create table raw.opt_outs as select * from opted")
    con.close()
    return {"ids": ids, "segment": segment, "vectors": vectors, "opt_outs": opted_out}


def build_dense_seed_warehouse(path: Path, customers: int = 20_000, dim: int = 16, clusters: int = 12,
                               dense_share: float = 0.4, seed: int = 0) -> dict:
    """A warehouse with customer_embeddings and a bare customer_features (cluster_id): cluster 0 holds `dense_share` of the customers, twice as
    tight as the others (the dense region seeds come from); `cluster` per customer is returned, ids are 10 * row."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster = np.where(rng.random(customers) < dense_share, 0, rng.integers(1, clusters, customers))
    spread = np.where(cluster == 0, 0.5, 1.0)[:, None] / np.sqrt(dim)
    vectors = centres[cluster] + rng.normal(size=(customers, dim)) * spread
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(1, customers + 1, dtype=np.int64) * 10
    with duckdb.connect(str(path)) as con:
        con.register("embeddings", embeddings_table(ids, vectors))
        con.execute(f"create table customer_embeddings as select customer_id, embedding::float[{dim}] as embedding, "
                    "model_version from embeddings")
        con.register("features", pa.table({"customer_id": pa.array(ids), "cluster_id": pa.array(cluster, pa.int32())}))
        con.execute("create table customer_features as select * from features")  # publishing reads it
    return {"ids": ids, "cluster": cluster, "vectors": vectors}
