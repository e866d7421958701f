"""The `blend` strategy: similarity to the seed blended with a seed-vs-population propensity,
mixing weights chosen per audience by cross-validation inside the seed.

Three component scores per customer:
- `embedding`: cosine to the seed centroid on the encoder's embeddings (the `centroid` strategy);
- `raw`: cosine to the seed centroid on standardised raw features (`raw_features`: numerics,
  demographics, category shares), which keeps signal a small encoder can blur;
- `propensity`: a positive-unlabelled logistic regression, seed (labelled) vs unlabelled
  population, on the embeddings and raw features side by side, strongly regularised (a seed is
  often ~100 customers against hundreds of features). A class-prior correction (Elkan-Noto:
  divide by c = P(labelled | positive)) is monotone, so it cannot change a ranking and is not applied.

Each component is turned into a percentile against a reference sample of the population (so a
customer's blended score does not depend on who else is scored: a candidate pool and the whole
population rank the same customers the same way), and the blend is a weighted mean of the
percentiles. Which weights? Self-validation: the seed (and the unlabelled sample) are split into
FOLDS folds; for each fold every component is fitted without it, and each candidate weighting
in WEIGHT_GRID is scored by the AUC of the held-out seeds against the held-out unlabelled
customers. The default weighting (raw similarity + propensity, half each) is kept unless another
beats it by more than SWITCH_MARGIN; the evidence (AUC of every weighting, the weights used) is
stored with the audience. Seeds too small to validate (< MIN_VALIDATION_SEEDS) get the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lookalike_cli.index import normalise

COMPONENTS = ("embedding", "raw", "propensity")
# Candidate weightings (embedding, raw, propensity): each alone, each pair, all three.
WEIGHT_GRID = (
    (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
    (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5),
    (1 / 3, 1 / 3, 1 / 3),
)
EQUAL = WEIGHT_GRID[-1]
# Kept unless self-validation finds a clearly better weighting. Raw similarity + propensity: the
# embedding cosine alone was the weakest component on both planted segments and Complete Journey
# (the embeddings still enter through the propensity model's inputs).
DEFAULT_WEIGHTS = (0.0, 0.5, 0.5)
FOLDS = 3
SWITCH_MARGIN = 0.02  # held-out AUC a weighting must gain over DEFAULT_WEIGHTS to replace it
MIN_VALIDATION_SEEDS = 30
PROPENSITY_C = 0.0003     # inverse L2 strength; one value for every audience (see docs/BACKTESTS.md)
REFERENCE_SIZE = 20_000   # population customers the percentiles are measured against


@dataclass
class BlendInputs:
    """Aligned rows for a set of customers: L2-normalised embeddings and standardised raw features."""
    embeddings: np.ndarray
    raw: np.ndarray

    def take(self, rows: np.ndarray) -> "BlendInputs":
        return BlendInputs(self.embeddings[rows], self.raw[rows])

    def joint(self) -> np.ndarray:
        # Unit embeddings scaled to the raw features' per-column variance (~1), so the
        # regularisation treats both blocks alike.
        return np.hstack([self.embeddings * np.sqrt(self.embeddings.shape[1]), self.raw])

    def __len__(self) -> int:
        return len(self.embeddings)


def cosine_to_centroid(rows: np.ndarray, seed_rows: np.ndarray) -> np.ndarray:
    centre = seed_rows.mean(axis=0)
    norms = np.linalg.norm(rows, axis=1) * max(float(np.linalg.norm(centre)), 1e-12)
    return rows @ centre / np.maximum(norms, 1e-12)


@dataclass
class FittedComponents:
    embedding_centre: np.ndarray
    raw_centre: np.ndarray
    propensity: object
    references: list[np.ndarray] = field(default_factory=list)  # sorted component scores of the reference sample

    def raw_scores(self, inputs: BlendInputs) -> np.ndarray:
        """[n, 3] component scores (embedding cosine, raw cosine (0 without raw features), propensity logit).

        In float64 and rounded, so a customer scores the same whether scored alone, in a pool or in
        the whole population (matrix products of different shapes differ in the last float32 bits,
        enough to move a customer past its own entry in the reference sample)."""
        scores = np.column_stack([
            cosine_to_centroid(inputs.embeddings.astype(np.float64), self.embedding_centre[None, :]),
            cosine_to_centroid(inputs.raw.astype(np.float64), self.raw_centre[None, :]) if inputs.raw.shape[1]
            else np.zeros(len(inputs)),
            self.propensity.decision_function(inputs.joint().astype(np.float64)),
        ])
        return np.round(scores, 9)

    def percentiles(self, inputs: BlendInputs) -> np.ndarray:
        scores = self.raw_scores(inputs)
        return np.column_stack([
            np.searchsorted(reference, scores[:, i], side="right") / max(len(reference), 1)
            for i, reference in enumerate(self.references)
        ])


def fit_components(seeds: BlendInputs, unlabelled: BlendInputs, reference: BlendInputs, random_seed: int) -> FittedComponents:
    from sklearn.linear_model import LogisticRegression

    x = np.vstack([seeds.joint(), unlabelled.joint()]).astype(np.float64)  # lbfgs converts float32 anyway, slower
    y = np.r_[np.ones(len(seeds)), np.zeros(len(unlabelled))]
    model = LogisticRegression(C=PROPENSITY_C, max_iter=1000, class_weight="balanced", random_state=random_seed).fit(x, y)
    fitted = FittedComponents(normalise(seeds.embeddings.mean(axis=0, keepdims=True))[0], seeds.raw.mean(axis=0), model)
    fitted.references = [np.sort(column) for column in fitted.raw_scores(reference).T]
    return fitted


def auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.r_[positives, negatives])
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class Blend:
    components: FittedComponents
    weights: tuple[float, float, float]
    evidence: dict

    def score(self, inputs: BlendInputs) -> np.ndarray:
        return self.components.percentiles(inputs) @ np.array(self.weights)


def fit_blend(seeds: BlendInputs, unlabelled: BlendInputs, random_seed: int = 0) -> Blend:
    """Self-validate the weightings inside the seed, then fit every component on the whole seed."""
    from threadpoolctl import threadpool_limits

    # Small fits: one BLAS thread is several times faster than oversubscribed threads on a busy machine.
    with threadpool_limits(1):
        return _fit_blend(seeds, unlabelled, random_seed)


def _fit_blend(seeds: BlendInputs, unlabelled: BlendInputs, random_seed: int) -> Blend:
    rng = np.random.default_rng(random_seed)
    reference = unlabelled.take(rng.permutation(len(unlabelled))[:REFERENCE_SIZE])
    # Without raw features (a zero-width block) only the embedding components can be weighted.
    grid = [w for w in WEIGHT_GRID if seeds.raw.shape[1] or w[1] == 0.0]
    weights = DEFAULT_WEIGHTS if seeds.raw.shape[1] else (0.5, 0.0, 0.5)
    evidence: dict = {"components": list(COMPONENTS), "folds": 0, "unlabelled": int(len(unlabelled))}
    if len(seeds) >= MIN_VALIDATION_SEEDS and len(unlabelled) >= 2 * FOLDS:
        seed_fold = rng.permutation(len(seeds)) % FOLDS
        unlabelled_fold = rng.permutation(len(unlabelled)) % FOLDS
        matrix = np.array(grid).T  # [3, n_weightings]
        aucs = []
        for fold in range(FOLDS):
            fitted = fit_components(seeds.take(np.flatnonzero(seed_fold != fold)),
                                    unlabelled.take(np.flatnonzero(unlabelled_fold != fold)), reference, random_seed)
            held_seeds = fitted.percentiles(seeds.take(np.flatnonzero(seed_fold == fold))) @ matrix
            held_unlabelled = fitted.percentiles(unlabelled.take(np.flatnonzero(unlabelled_fold == fold))) @ matrix
            aucs.append([auc(held_seeds[:, j], held_unlabelled[:, j]) for j in range(matrix.shape[1])])
        mean_auc = np.mean(aucs, axis=0)
        best = int(np.argmax(mean_auc))
        # Shrink towards the default: another weighting must win by a clear margin, since a small
        # seed's cross-validated AUCs are noisy (a smaller margin chose worse weights on Complete Journey).
        default = grid.index(weights)
        weights = grid[best] if mean_auc[best] > mean_auc[default] + SWITCH_MARGIN else weights
        evidence.update(folds=FOLDS, validation_auc={
            "/".join(f"{w:.2f}" for w in weighting): round(float(a), 4) for weighting, a in zip(grid, mean_auc)
        })
    components = fit_components(seeds, unlabelled, reference, random_seed)
    evidence["weights"] = dict(zip(COMPONENTS, (round(w, 3) for w in weights)))
    return Blend(components, weights, evidence)
