"""Personas and segments: quality on generated data (known answers) and on Complete Journey.

Generated data: labels propagated from a 5% diversity-and-uncertainty sample vs labelling
customers directly with the same zero-shot labeller (agreement of top personas on a random
sample of unlabelled customers, against the majority-class baseline), and segments vs the
planted segments (adjusted Rand index). Complete Journey: segment profiles and metrics.

    python -m benchmarks.bench_personas --customers 3000 --workdir /tmp/bench_personas
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import duckdb
import numpy as np

from benchmarks.results import markdown_table, write_section
from lookalike_cli.cli import main
from lookalike_cli.personas import ZeroShotLabeller, load_personas, read_profiles
from lookalike_cli.settings import Settings


def cli(settings: Settings, *args: str) -> None:
    main.main(["--db", str(settings.db_path), "--onnx-dir", str(settings.onnx_dir), "--index-dir", str(settings.index_dir), *args],
              standalone_mode=False)


def prepare(folder: Path, load: list[str], epochs: int) -> Settings:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    settings = Settings.resolve(db=folder / "w.duckdb", onnx_dir=folder / "onnx", index_dir=folder / "indexes")
    cli(settings, *load)
    cli(settings, "build")
    cli(settings, "train", "--name", "bench", "--epochs", str(epochs), "--seed", "1")
    cli(settings, "score", "--model", "bench")
    return settings


def seconds(start: float) -> float:
    return round(time.perf_counter() - start, 1)


def agreement(settings: Settings, sample_size: int) -> tuple[float, float, int]:
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        rows = con.execute("""
            select customer_id, persona_id from customer_personas where persona_rank = 1 and not is_labelled
            order by hash(customer_id) limit ?""", [sample_size]).fetchall()
        personas = load_personas(con)
        ids = np.array([r[0] for r in rows])
        texts = read_profiles(con, ids)
    direct = ZeroShotLabeller(personas).label(ids, texts).probabilities.argmax(axis=1)
    direct_ids = np.array([personas[i].persona_id for i in direct])
    propagated = np.array([r[1] for r in rows])
    return float(np.mean(direct_ids == propagated)), float(np.bincount(direct_ids).max() / len(ids)), len(ids)


def planted_ari(settings: Settings) -> float:
    from sklearn.metrics import adjusted_rand_score

    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        pairs = con.execute("select s.segment_id, p.segment_id from customer_segments s join raw.planted_segments p using (customer_id)").fetchall()
    return float(adjusted_rand_score(*zip(*pairs)))


def quality(settings: Settings) -> dict:
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        table = con.sql("select * from segment_quality").to_arrow_table()
    return table.to_pylist()[0]


def profiles_markdown(settings: Settings) -> str:
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        table = con.sql("select * from segment_profiles order by segment_id").to_arrow_table()
    return markdown_table(table.column_names, [list(r.values()) for r in table.to_pylist()])


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--agreement-sample", type=int, default=600)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_personas"))
    parser.add_argument("--skip-completejourney", action="store_true")
    args = parser.parse_args()

    sections = []
    generated = prepare(args.workdir / "generated", ["generate-data", "--customers", str(args.customers), "--seed", "11"], args.epochs)
    start = time.perf_counter()
    cli(generated, "personas", "label", "--fraction", "0.05")
    label_seconds = seconds(start)
    start = time.perf_counter()
    cli(generated, "personas", "propagate")
    propagate_seconds = seconds(start)
    agree, majority, sampled = agreement(generated, args.agreement_sample)
    rows = []
    for label, options in (("personas, k auto (4..15)", []), ("personas + embeddings, k auto (4..15)", ["--with-embeddings"]),
                           ("personas, k = 12 (planted)", ["--k", "12"]), ("personas + embeddings, k = 12 (planted)", ["--k", "12", "--with-embeddings"])):
        start = time.perf_counter()
        cli(generated, "segment", *options)
        q = quality(generated)
        rows.append([label, q["k"], round(planted_ari(generated), 3), q["silhouette"], q["calinski_harabasz"], q["davies_bouldin"],
                     q["stability_ari_mean"], seconds(start)])
    sections.append(
        f"Generated data, {args.customers:,} customers (seed 11, 12 planted segments), two-tower model {args.epochs} epochs.\n\n"
        f"- Labelling 5% ({int(np.ceil(0.05 * args.customers))} customers, zero-shot, diversity+uncertainty): {label_seconds}s; "
        f"propagation to everyone: {propagate_seconds}s.\n"
        f"- Propagated top persona vs labelling directly (zero-shot) on {sampled} random unlabelled customers: "
        f"**{agree:.1%} agreement** (majority-class baseline {majority:.1%}, chance {1 / 10:.0%}).\n\n"
        + markdown_table(["segment inputs", "k", "ARI vs planted", "silhouette", "Calinski-Harabasz", "Davies-Bouldin",
                          "stability ARI (5 seeds)", "seconds"], rows)
    )
    if not args.skip_completejourney:
        cj = prepare(args.workdir / "completejourney", ["load-sample", "completejourney"], args.epochs)
        cli(cj, "personas", "label", "--fraction", "0.05")
        cli(cj, "personas", "propagate")
        cli(cj, "segment")
        q = quality(cj)
        sections.append(
            f"Complete Journey (2,469 households), 5% labelled zero-shot, `lookalike segment` (k auto): k = {q['k']}, "
            f"silhouette {q['silhouette']:.3f}, Calinski-Harabasz {q['calinski_harabasz']:,.1f}, Davies-Bouldin "
            f"{q['davies_bouldin']:.3f}, stability ARI {q['stability_ari_mean']:.3f} (min {q['stability_ari_min']:.3f}).\n\n"
            + profiles_markdown(cj)
        )
    write_section("personas", "Personas and segments (GPLR: label 5%, propagate, segment)", "\n\n".join(sections),
                  f"python -m benchmarks.bench_personas --customers {args.customers} --epochs {args.epochs}")


if __name__ == "__main__":
    main_bench()
