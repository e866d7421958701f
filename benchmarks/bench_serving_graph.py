"""The exported graph's two arrangements against the sgemm limit, in one run.

The same trained function exported as the training form (CustomerTower: ~40 small operators and
one wide concatenated input) and as the serving form `export` writes (tower.ServingTower:
preprocessing folded into three first-layer GEMMs). Both run through `Encoder.run` (2,048-row
slices, one single-threaded session per CPU); the limit is torch's sgemm rate at the encoder's
layer shapes (benchmarks/run.py), all interleaved, best of each.

    python -m benchmarks.bench_serving_graph --customers 65536 --rounds 8
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort

import torch

from benchmarks.bench_scoring import rate, synthetic_inputs
from benchmarks.results import markdown_table, write_section
from benchmarks.run import encoder_flops, sgemm_gflops
from lookalike_cli.model.export import export_model, export_onnx, load_tower
from lookalike_cli.model.features import CATEGORICAL_COLUMNS, DENSE_COLUMNS, FeatureSpec
from lookalike_cli.model.scoring import Encoder
from lookalike_cli.model.train import TrainOptions, TrainResult, build_tower


def default_shaped_model(folder: Path, seed: int) -> Path:
    """An untrained encoder shaped like `lookalike train`'s default export: 3 layers, word location, 300
    categories, shares z-scored in the graph (train's default, whose clip the serving form rearranges)."""
    vocab = {c: [f"v{i}" for i in range(5)] for c in CATEGORICAL_COLUMNS}
    spec = FeatureSpec(list(DENSE_COLUMNS), list(CATEGORICAL_COLUMNS), vocab, n_categories=300, location="word",
                       dense_mean=[2.0] * len(DENSE_COLUMNS), dense_std=[1.5] * len(DENSE_COLUMNS))
    options = TrainOptions(layers=3, location="word", seed=seed)
    torch.manual_seed(seed)
    shares = torch.from_numpy(synthetic_inputs(spec, 5000, seed + 1)["shares"])
    tower = build_tower(spec, options, shares).eval()
    return export_model(TrainResult(tower=tower, spec=spec, options=options, metrics={}, fingerprint="synthetic"), folder, "bench_serving")


def cpu_rate(session, inputs: dict[str, np.ndarray], rows: int = 2048, calls: int = 4) -> float:
    """Customers per CPU second of one single-threaded session: what the run costs, whatever else the machine runs."""
    feed = {k: v[:rows] for k, v in inputs.items()}
    start = time.thread_time()
    for _ in range(calls):
        session.run(None, feed)
    return rows * calls / (time.thread_time() - start)


@click.command()
@click.option("--customers", type=click.IntRange(1), default=65_536, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=8, show_default=True, help="Interleaved rounds, best of each.")
@click.option("--write/--no-write", default=True, show_default=True, help="Write the table to benchmarks/RESULTS.md.")
def main(customers: int, rounds: int, write: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        manifest = default_shaped_model(Path(folder), seed=0)
        serving = Encoder(manifest)
        training = Encoder(manifest)
        export_onnx(load_tower(manifest), serving.spec, Path(folder) / "training_form.onnx", serving_form=False)
        # The same session settings as Encoder's; only the graph differs.
        options = ort.SessionOptions()
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        options.intra_op_num_threads = 1
        training.session = ort.InferenceSession(str(Path(folder) / "training_form.onnx"), options, providers=["CPUExecutionProvider"])
        inputs = synthetic_inputs(serving.spec, customers, seed=0)
        cosine = (serving.run(inputs) * training.run(inputs)).sum(axis=1).min()
        shapes, flops = encoder_flops(serving.manifest["config"])
        engines = {"training form (CustomerTower)": training.run, "serving form (ServingTower, exported)": serving.run}
        sessions = {"training form (CustomerTower)": training.session, "serving form (ServingTower, exported)": serving.session}
        limit, speeds, cpu = 0.0, {name: 0.0 for name in engines}, {name: 0.0 for name in engines}
        for _ in range(rounds):
            limit = max(limit, sgemm_gflops(shapes, 8192) * 1e9 / flops)
            for name, run in engines.items():
                speeds[name] = max(speeds[name], rate(run, inputs, 8192, 1)[0])
                cpu[name] = max(cpu[name], cpu_rate(sessions[name], inputs))
    base, cpu_base = speeds["training form (CustomerTower)"], cpu["training form (CustomerTower)"]
    rows = [[name, speed, speed / limit, speed / base, cpu[name], cpu[name] / cpu_base] for name, speed in speeds.items()]
    body = (f"Untrained 3-layer word model shaped like train's default (300 categories, shares z-scored), {customers:,} synthetic customers, batch 8192, {rounds} interleaved "
            f"rounds with the sgemm limit ({limit:,.0f} customers/s for {flops:,} FLOPs per customer), best of each. "
            f"Min cosine serving vs training form: {cosine:.7f}.\n\n"
            "The last two columns are customers per CPU second of one single-threaded session on 2,048 rows "
            "(thread CPU time: what the graph costs, robust to other processes on a shared machine).\n\n"
            + markdown_table(["graph", "customers/s (2 cores)", "ORT fp32 / sgemm limit", "vs training form",
                              "customers / CPU s (1 thread)", "CPU cost ratio vs training form"], rows))
    print(body)
    if write:
        write_section("serving_graph", "Exported graph: training form vs serving form", body,
                      f"python -m benchmarks.bench_serving_graph --customers {customers} --rounds {rounds}")


if __name__ == "__main__":
    main()
