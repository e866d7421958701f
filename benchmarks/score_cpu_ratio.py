"""CPU-second ratio of `lookalike score` end to end to the network alone, same customers, one run.

    python -m benchmarks.score_cpu_ratio <source tree> <warehouse.duckdb> <onnx dir> <model name>

<source tree> is the checkout whose `lookalike score` runs (e.g. this branch, or main for the old path);
the network alone is always this checkout's Encoder. The command rewrites customer_embeddings.

On an oversubscribed machine wall time measures the scheduler; CPU seconds (user+sys of every thread
and child) measure the work, and on an idle 2-core machine wall ~= CPU / 2 for both.
"""
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
import duckdb

from lookalike_cli.model.features import encode
from lookalike_cli.model.scoring import Encoder


def main(tree: str, db: str, onnx_dir: Path, model: str) -> None:
    env = dict(os.environ, PYTHONPATH=tree, LOOKALIKE_DB=db, LOOKALIKE_ONNX_DIR=str(onnx_dir),
               LOOKALIKE_SERVING_DB=db + '.serving', LOOKALIKE_INDEX_DIR=str(onnx_dir.parent / 'idx'))
    def e2e():
        before = resource.getrusage(resource.RUSAGE_CHILDREN); w = time.perf_counter()
        subprocess.run([sys.executable, '-m', 'lookalike_cli.cli.main', 'score', '--model', model], env=env, cwd=tree, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, time.perf_counter() - w
    enc = Encoder(onnx_dir / f'{model}.json')
    with duckdb.connect(db, read_only=True) as con:
        batches = list(con.table('customer_features').select(', '.join(enc.spec.required_columns)).to_arrow_reader(8192))
    inputs = [encode(b, enc.spec) for b in batches]
    n = sum(b.num_rows for b in batches)
    def network():
        c, w = time.process_time(), time.perf_counter()
        for x in inputs: enc.run(x)
        return time.process_time() - c, time.perf_counter() - w
    results = {'network': [], 'e2e': []}
    for _ in range(2):
        results['network'].append(network()); results['e2e'].append(e2e())
    for k, v in results.items():
        print(k, ' '.join(f'cpu {c:.1f}s wall {w:.1f}s' for c, w in v))
    net = min(c for c, _ in results['network']); end = min(c for c, _ in results['e2e'])
    print(f'{tree}: {n:,} customers; network {net:.1f} CPU s, lookalike score {end:.1f} CPU s -> ratio {net / end:.3f}')


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4])
