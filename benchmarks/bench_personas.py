"""Personas and segments: quality on generated data (known answers) and on Complete Journey.

Generated data: labels propagated from a 5% diversity-and-uncertainty sample vs labelling every
customer directly with the same zero-shot labeller (agreement of top personas on the unlabelled
customers, against the majority-class baseline and a neighbour-vote ceiling), over the category
graph and the embedding graph; persona purity within the planted segments; segments on each
input vs the planted segments (adjusted Rand index), against k-means on the raw category shares
in the same run. Complete Journey: segment profiles and metrics.

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
from lookalike_cli.cli.main import main
from lookalike_cli.personas.labels import ZeroShotLabeller, customer_space, load_personas, read_category_shares, read_profiles
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


def direct_labels(settings: Settings) -> tuple[np.ndarray, np.ndarray, list]:
    """(customer ids, direct zero-shot top-persona index per customer, personas): everyone labelled directly."""
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        personas = load_personas(con)
        ids = np.array([r[0] for r in con.execute("select customer_id from customer_personas where persona_rank = 1 order by customer_id").fetchall()])
        texts = read_profiles(con, ids)
    return ids, ZeroShotLabeller(personas).label(ids, texts).probabilities.argmax(axis=1), personas


def propagated_labels(settings: Settings, ids: np.ndarray, personas: list) -> tuple[np.ndarray, np.ndarray]:
    """(top-persona index, is_labelled) per customer of `ids`, from customer_personas."""
    column = {p.persona_id: j for j, p in enumerate(personas)}
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        rows = dict((r[0], (r[1], r[2])) for r in con.execute(
            "select customer_id, persona_id, is_labelled from customer_personas where persona_rank = 1").fetchall())
    return np.array([column[rows[i][0]] for i in ids]), np.array([rows[i][1] for i in ids])


def neighbour_vote(labels: np.ndarray, vectors: np.ndarray, neighbours: int = 10) -> np.ndarray:
    """Each customer's most common label among its k nearest neighbours (itself excluded)."""
    from lookalike_cli.index.search import exact_neighbours

    _, found = exact_neighbours(vectors, vectors, neighbours + 1)
    return np.array([np.bincount(labels[row[row != i][:neighbours]], minlength=labels.max() + 1).argmax()
                     for i, row in enumerate(found)])


def purity(labels: np.ndarray, planted: np.ndarray) -> float:
    """Share of customers whose label is the most common one within their planted segment."""
    return float(sum(np.bincount(labels[planted == s]).max() for s in np.unique(planted)) / len(labels))


def planted(settings: Settings, ids: np.ndarray) -> np.ndarray:
    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        segment = dict(con.execute("select customer_id, segment_id from raw.planted_segments").fetchall())
    return np.array([segment[i] for i in ids])


def planted_ari(settings: Settings) -> float:
    from sklearn.metrics import adjusted_rand_score

    with duckdb.connect(str(settings.db_path), read_only=True) as con:
        pairs = con.execute("select s.segment_id, p.segment_id from customer_segments s join raw.planted_segments p using (customer_id)").fetchall()
    return float(adjusted_rand_score(*zip(*pairs)))


def raw_share_kmeans(settings: Settings, k: int) -> tuple[float, float]:
    """Baseline: k-means straight on the raw category shares (no square root, no PCA). (ARI vs planted, seconds)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from threadpoolctl import threadpool_limits

    ids, root_shares = read_category_shares(settings.db_path)
    start = time.perf_counter()
    with threadpool_limits(1):
        labels = KMeans(k, n_init=5, random_state=0).fit_predict(root_shares.power(2).toarray())
    return float(adjusted_rand_score(labels, planted(settings, ids))), seconds(start)


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
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_personas"))
    parser.add_argument("--skip-completejourney", action="store_true")
    args = parser.parse_args()

    sections = []
    generated = prepare(args.workdir / "generated", ["generate-data", "--customers", str(args.customers), "--seed", "11"], args.epochs)
    label_rows, direct = [], None
    # The defaults last (category graph, 5%): the segment runs below read its customer_personas.
    for graph, fraction in (("embeddings", 0.05), ("categories", 0.01), ("categories", 0.2), ("categories", 0.05)):
        start = time.perf_counter()
        cli(generated, "personas", "label", "--fraction", str(fraction), "--graph", graph)
        label_seconds = seconds(start)
        start = time.perf_counter()
        cli(generated, "personas", "propagate", "--graph", graph)
        propagate_seconds = seconds(start)
        if direct is None:
            ids, direct, personas = direct_labels(generated)
            truth = planted(generated, ids)
        propagated, is_labelled = propagated_labels(generated, ids, personas)
        space_ids, vectors = customer_space(generated.db_path, graph)
        assert np.array_equal(space_ids, ids)
        unlabelled = ~is_labelled
        label_rows.append([
            graph + (" (default)" if graph == "categories" else ""), f"{fraction:.0%} ({int(is_labelled.sum()):,})",
            label_seconds, propagate_seconds,
            f"{np.mean(propagated[unlabelled] == direct[unlabelled]):.1%}",
            f"{np.mean(neighbour_vote(direct, vectors)[unlabelled] == direct[unlabelled]):.1%}",
            f"{np.bincount(direct[unlabelled]).max() / unlabelled.sum():.1%}",
            f"{purity(direct, truth):.3f} / {purity(propagated, truth):.3f}",
        ])
    segment_rows = []
    runs = (("embeddings", ["--inputs", "embeddings"]), ("personas", ["--inputs", "personas"]),
            ("categories+personas", ["--inputs", "categories,personas"]), ("categories+embeddings", ["--inputs", "categories,embeddings"]),
            ("categories (default), k = 12 (planted)", ["--k", "12"]), ("categories (default)", []))
    for label, options in runs:
        start = time.perf_counter()
        cli(generated, "segment", *options)
        q = quality(generated)
        segment_rows.append([label, q["k"], round(planted_ari(generated), 3), q["silhouette"], q["calinski_harabasz"],
                             q["davies_bouldin"], q["stability_ari_mean"], seconds(start)])
    baseline_ari, baseline_seconds = raw_share_kmeans(generated, 12)
    segment_rows.append(["baseline: k-means on raw category shares, k = 12 (planted)", 12, round(baseline_ari, 3), "", "", "", "", baseline_seconds])
    sections.append(
        f"Generated data, {args.customers:,} customers (seed 11, 12 planted segments), two-tower model {args.epochs} epochs.\n\n"
        "Labels: a sample (5% by default) labelled zero-shot (diversity + uncertainty sample), "
        "propagated by random walk with restart (10-NN graph, restart 0.1) over each graph. Agreement = propagated top persona "
        "vs labelling the customer directly (zero-shot), over all the unlabelled customers. Ceiling = "
        "every customer's direct label predicted by the vote of its 10 nearest neighbours' direct labels (everyone labelled). "
        "Purity = share of customers whose top persona is the most common one in their planted segment.\n\n"
        + markdown_table(["graph", "labelled", "label (s)", "propagate (s)", "agreement with direct", "neighbour-vote ceiling",
                          "majority-class baseline", "purity in planted: direct / propagated"], label_rows)
        + f"\n\nSegments (`lookalike segment --inputs ...`, k auto = best silhouette in 4..15, PCA to at most 16 components):\n\n"
        + markdown_table(["segment inputs", "k", "ARI vs planted", "silhouette", "Calinski-Harabasz", "Davies-Bouldin",
                          "stability ARI (5 seeds)", "seconds"], segment_rows)
        + "\n\nDefault segment profiles:\n\n" + profiles_markdown(generated)
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
