"""The `blend` strategy (expand's default): candidate rankings of the population, from similarity
to the seed to plain activity, mixed with weights the seed itself chooses by cross-validation.

The seed is a set of labelled positives and the rest of the population is unlabelled (PU learning):
whatever ranks held-out seeds above held-out unlabelled customers will, under the usual
"seeds are a random sample of the positives" assumption, rank the hidden positives high too. So no
component is favoured by default: every audience weighs them on its own evidence.

Components, each a score per customer (those whose inputs are missing are left out):
- `embedding`: cosine to the seed centroid on the encoder's embeddings (the `centroid` strategy);
- `raw`: cosine to the seed centroid on standardised raw features (`raw_features`: numerics,
  demographics, category shares), which keeps signal a small encoder can blur;
- `propensity`: a logistic regression, seed vs unlabelled, on the embeddings and raw features side
  by side, strongly regularised (~100 seeds against hundreds of features);
- `propensity_raw`: the same classifier on the raw features only. Whether the embeddings help the
  classifier depends on the data (on Complete Journey they do, on the generated data they add noise
  to the top of the ranking), so the selection is offered both rather than one being fixed;
- `activity`: log order-line count (biggest first), no fitting;
- `rfm`: recency, frequency and spend z-scores, equal weights (the classic RFM ranking);
- `spend`: log total spend;
- `shares_lr`: seed-vs-unlabelled logistic regression on the category shares as stored plus log
  order-line count (scikit-learn's default strength, class-balanced): preference and activity;
- `shares_gbm`: the same inputs and labels, LightGBM (few shallow trees, one thread, deterministic),
  which can find interactions and thresholds the linear model cannot.
A class-prior correction (Elkan-Noto: divide by c = P(labelled | positive)) is monotone, so it cannot
change a ranking and is not applied to the classifiers.

Each component is turned into a percentile against a reference sample of the population (so a
customer's blended score does not depend on who else is scored: a candidate pool and the whole
population rank the same customers the same way), and the blend is a weighted mean of the
percentiles. The weights come from self-validation: the seed (and the unlabelled sample) are split
into FOLDS folds; for each fold every fitted component is refitted without it (on at most
FOLD_UNLABELLED unlabelled customers, for speed), which gives out-of-fold percentiles of every
component for every seed and for SELECTION_UNLABELLED held-out unlabelled customers.
On those, greedy forward selection with replacement (Caruana et al. 2004) adds, STEPS times, the
component that most raises the selection criterion of held-out seeds against held-out unlabelled
customers (a component may be picked again; there is no early stop, so late picks average rather
than chase noise); weights are the selection counts / STEPS. The criterion is top-weighted: the mean
of the AUC against every held-out unlabelled customer and the AUC against the top TOP_SHARE of them
(the ones the blend itself ranks highest). An audience is cut from the top of the ranking (sizes of
1-20% of the population), so a component that finds seeds among the highest-ranked customers is
worth more than one that orders the bottom well; the plain-AUC half keeps the whole ranking sound
for reach curves and large sizes. The selection is repeated on BAGS bootstrap
resamples of the held-out rows and the weights averaged: shrinkage for small seeds, whose AUC
differences are noisy (near-ties share the weight instead of flipping from one to the other).
The evidence (held-out AUC of every component and of the chosen blend, the weights) is stored with
the audience. Seeds too small to validate (< MIN_VALIDATION_SEEDS) get equal weights on every
available component: an uninformed prior, not a choice made on any dataset.

A value-based seed (`BlendInputs.weights`, from `--seed-value-sql`) weighs each seed by its value
everywhere the seed enters: the centroids are weighted means, the classifiers take the values as
sample weights, and the selection maximises the value-weighted AUC of held-out seeds (the chance
that a seed drawn in proportion to its value outranks an unlabelled customer), so the blend
chooses the components that find valuable seeds rather than many seeds.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from lookalike_cli.audiences.raw_features import CLIP
from lookalike_cli.vectors import normalise

COMPONENTS = ("embedding", "raw", "propensity", "propensity_raw", "activity", "rfm", "spend", "shares_lr", "shares_gbm")
STATIC = ("activity", "rfm", "spend")      # no fitting: a function of one customer's features
FOLDS = 3
STEPS = 10            # greedy selection steps: weights in multiples of 1/STEPS per bag
BAGS = 16             # bootstrap resamples of the held-out rows the selection is averaged over
MIN_VALIDATION_SEEDS = 30
TOP_SHARE = 0.2      # the criterion's second half: AUC against the top 20% of held-out unlabelled customers
SELECTION_UNLABELLED = 5_000  # held-out unlabelled customers the selection ranks the seeds against
FOLD_UNLABELLED = 6_000       # most unlabelled customers a fold's classifiers are fitted on (the final fit: all)
PROPENSITY_C = 0.0003     # inverse L2 strength of `propensity`; one value for every audience
SHARES_LR_C = 1.0         # scikit-learn's default: `shares_lr` on unscaled shares + log lines
GBM_PARAMS = dict(n_estimators=40, learning_rate=0.15, num_leaves=7, max_depth=3, min_child_samples=20,
                  subsample=0.8, subsample_freq=1, colsample_bytree=0.5, reg_lambda=5.0, max_bin=63,
                  n_jobs=1, deterministic=True, force_col_wise=True, verbose=-1)
GBM_UNLABELLED = 5_000    # most unlabelled customers one LightGBM fit sees (a random sample beyond)
REFERENCE_SIZE = 20_000   # population customers the percentiles are measured against
SCORE_BLOCK = 16_384      # rows Blend.score turns into float64 at once
FIT_THREADS = min(4, os.cpu_count() or 1)  # the self-validation's fold fits and the final fit, side by side

LINES, ORDERS, RECENCY, SPEND = "order_line_count", "order_count", "recency_days", "total_spend"
SHARE_PREFIX = "category:"


@dataclass
class BlendInputs:
    """Aligned rows for a set of customers: L2-normalised embeddings and standardised raw features.

    `names` and `scale` (the raw columns' names and their (mean, std) before z-scoring, from
    `RawFeatures`) let the activity and preference components find their columns; without them
    only the embedding, raw-cosine and propensity components exist."""
    embeddings: np.ndarray
    raw: np.ndarray
    names: tuple = ()
    scale: tuple | None = None
    cached_preference: np.ndarray | None = field(default=None, repr=False)  # preference(), once computed
    weights: np.ndarray | None = None  # seeds only: value weight per row (None: all alike)

    def take(self, rows: "np.ndarray | slice") -> "BlendInputs":
        cached = None if self.cached_preference is None else self.cached_preference[rows]
        weights = None if self.weights is None else self.weights[rows]
        return BlendInputs(self.embeddings[rows], self.raw[rows], self.names, self.scale, cached, weights)

    def joint(self, embeddings: bool = True) -> np.ndarray:
        # Unit embeddings scaled to the raw features' per-column variance (~1), so the
        # regularisation treats both blocks alike.
        if not embeddings:
            return self.raw
        return np.hstack([self.embeddings * np.sqrt(self.embeddings.shape[1]), self.raw])

    def index(self, name: str) -> int | None:
        return self.names.index(name) if name in self.names else None

    def column(self, name: str, plain: bool = False) -> np.ndarray | None:
        """A raw column, z-scored (default) or back on its stored scale (log1p for numerics)."""
        i = self.index(name)
        if i is None:
            return None
        values = self.raw[:, i].astype(np.float64)
        if plain and self.scale is not None:
            std = self.scale[1][i]
            values = values * (std if std > 1e-9 else 1.0) + self.scale[0][i]
        return values

    def lines_column(self) -> str | None:
        return LINES if LINES in self.names else ORDERS if ORDERS in self.names else None

    def static(self, name: str) -> np.ndarray:
        if name == "activity":
            return self.column(self.lines_column())
        if name == "spend":
            return self.column(SPEND)
        return -self.column(RECENCY) + self.column(ORDERS) + self.column(SPEND)  # rfm

    def preference(self) -> np.ndarray:
        """[n, categories + 1]: category shares as stored and log1p(order lines), for the PU classifiers."""
        if self.cached_preference is None:
            self.cached_preference = self._preference()
        return self.cached_preference

    def _preference(self) -> np.ndarray:
        return self.preference_columns(None)

    def share_columns(self) -> np.ndarray:
        return np.array([i for i, n in enumerate(self.names) if n.startswith(SHARE_PREFIX)], dtype=np.int64)

    def preference_columns(self, wanted: np.ndarray | None) -> np.ndarray:
        """Columns `wanted` (all when None) of preference(), computed for those columns only: the same
        values to the bit (elementwise), without building the whole [n, categories + 1] block."""
        if self.cached_preference is not None:
            return self.cached_preference if wanted is None else self.cached_preference[:, wanted]
        shares = self.share_columns()
        picked = np.arange(len(shares) + 1) if wanted is None else np.asarray(wanted, dtype=np.int64)
        at_shares = np.flatnonzero(picked < len(shares))  # positions in the output that are share columns
        columns = shares[picked[at_shares]]
        out = np.empty((len(self), len(picked)))
        # The shares are written straight into the output when they lead it in order (all of preference(), the
        # trees' sorted features): a [n, categories] float64 temporary and a masked copy cost seconds at
        # thousands of categories. The arithmetic is the same elementwise either way.
        leading = np.array_equal(at_shares, np.arange(len(at_shares)))
        block = out[:, : len(at_shares)] if leading else np.empty((len(self), len(at_shares)))
        if len(columns):
            # A contiguous run of columns (all the shares, as load_raw_features lays them out) is a view, not a gather.
            contiguous = columns[-1] - columns[0] == len(columns) - 1
            np.copyto(block, self.raw[:, columns[0] : columns[-1] + 1] if contiguous else self.raw[:, columns])
            if self.scale is not None:
                std = np.where(self.scale[1][columns] > 1e-9, self.scale[1][columns], 1.0)
                block *= std
                block += self.scale[0][columns]
                np.clip(block, 0.0, 1.0, out=block)
        if not leading:
            out[:, at_shares] = block
        if len(at_shares) < len(picked):
            rest = np.setdiff1d(np.arange(len(picked)), at_shares)
            out[:, rest] = self.column(self.lines_column(), plain=True)[:, None]
        return out

    def available(self, embeddings: bool = True) -> tuple[str, ...]:
        """The components these inputs can feed (a zero-width raw block: embedding components only)."""
        has_raw = self.raw.shape[1] > 0
        names = set(self.names)
        usable = {
            "embedding": embeddings and self.embeddings.shape[1] > 0,
            "raw": has_raw,
            "propensity": has_raw or embeddings,
            # propensity's classifier without the embeddings: the selection picks between them (with the
            # embeddings off, propensity is this one already)
            "propensity_raw": has_raw and embeddings and self.embeddings.shape[1] > 0,
            "activity": self.lines_column() is not None,
            "rfm": {RECENCY, ORDERS, SPEND} <= names,
            "spend": SPEND in names,
            "shares_lr": self.lines_column() is not None and any(n.startswith(SHARE_PREFIX) for n in self.names),
        }
        usable["shares_gbm"] = usable["shares_lr"]
        return tuple(c for c in COMPONENTS if usable[c])

    def __len__(self) -> int:
        return len(self.embeddings)


def cosine_to_centroid(rows: np.ndarray, seed_rows: np.ndarray) -> np.ndarray:
    """Cosine of each row to the mean of `seed_rows` (rows need not be normalised; zero rows score 0)."""
    centre = seed_rows.mean(axis=0)
    norms = np.linalg.norm(rows, axis=1) * max(float(np.linalg.norm(centre)), 1e-12)
    return rows @ centre / np.maximum(norms, 1e-12)


def percentile_of(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Share of the sorted `reference` at or below each value. The values are looked up in ascending
    order (numpy's binary search starts each key where the previous one ended): about 2.5x faster
    than unsorted keys at 100k values in a 20k reference, the same counts."""
    if len(values) < 1024:
        return np.searchsorted(reference, values, side="right") / max(len(reference), 1)
    order = np.argsort(values)
    counts = np.empty(len(values), dtype=np.int64)
    counts[order] = np.searchsorted(reference, values[order], side="right")
    return counts / max(len(reference), 1)


def weighted_mean(rows: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """The column means of `rows` (weighted by `weights` when given; a zero-width block stays zero-width)."""
    return rows.mean(axis=0) if weights is None or rows.shape[1] == 0 else np.average(rows, axis=0, weights=weights)


@dataclass
class FittedComponents:
    active: tuple[str, ...]
    embedding_centre: np.ndarray
    raw_centre: np.ndarray
    models: dict                      # component -> fitted classifier (propensity, shares_lr, shares_gbm)
    embeddings: bool = True           # whether `propensity` sees the embeddings
    references: list[np.ndarray] = field(default_factory=list)  # sorted component scores of the reference sample
    gbm_trees: Trees | None = None    # shares_gbm's trees for numpy scoring (None: LightGBM's predict)

    def raw_scores(self, inputs: BlendInputs, names: tuple[str, ...] | None = None) -> np.ndarray:
        """[n, len(names)] scores of the components `names` (default: every active one): cosines,
        classifier logits, activity z-scores.

        In float64 and rounded, so a customer scores the same whether scored alone, in a pool or in
        the whole population (matrix products of different shapes differ in the last float32 bits,
        enough to move a customer past its own entry in the reference sample)."""
        names = self.active if names is None else names
        embeddings = raw = None
        columns = []
        for name in names:
            if name in ("embedding", "propensity") and embeddings is None:
                embeddings = inputs.embeddings.astype(np.float64)
            if name in ("raw", "propensity", "propensity_raw") and raw is None:
                raw = inputs.raw.astype(np.float64)
            if name == "embedding":
                columns.append(cosine_to_centroid(embeddings, self.embedding_centre[None, :]))
            elif name == "raw":
                columns.append(cosine_to_centroid(raw, self.raw_centre[None, :]))
            elif name == "propensity":
                # The joint matrix's product taken block by block: no [n, d + F] copy of the inputs.
                model = self.models[name]
                coef, width = model.coef_[0], embeddings.shape[1]
                value = raw @ coef[width:] if self.embeddings else raw @ coef
                if self.embeddings:
                    value += embeddings @ (coef[:width] * np.sqrt(width))
                columns.append(value + model.intercept_[0])
            elif name == "propensity_raw":
                model = self.models[name]
                columns.append(raw @ model.coef_[0] + model.intercept_[0])
            elif name in STATIC:
                columns.append(inputs.static(name))
            elif name == "shares_lr":
                model = self.models[name]
                columns.append(inputs.preference_columns(None) @ model.coef_[0] + model.intercept_[0])
            elif self.gbm_trees is not None:
                columns.append(self.gbm_trees.raw_score(inputs.preference_columns(self.gbm_trees.features)))
            else:
                columns.append(self.models[name].predict(inputs.preference_columns(None), raw_score=True))
        return np.round(np.column_stack(columns) if columns else np.zeros((len(inputs), 0)), 9)

    def percentiles(self, inputs: BlendInputs, names: tuple[str, ...] | None = None) -> np.ndarray:
        names = self.active if names is None else names
        return self.percentiles_of(self.raw_scores(inputs, names), names)

    def percentiles_of(self, scores: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        """Component scores [n, len(names)] as percentiles of the reference sample's."""
        references = [self.references[self.active.index(name)] for name in names]
        return np.column_stack([
            percentile_of(reference, scores[:, i]) for i, reference in enumerate(references)
        ]) if names else np.zeros((len(scores), 0))

    def embedding_directions(self) -> np.ndarray:
        """[d, 2] float64: the seed centroid and propensity's weights on the embeddings. A population's
        embeddings times these, with their squared norms, is all its embedding components need."""
        width = len(self.embedding_centre)
        propensity = self.models.get("propensity")
        weights = (propensity.coef_[0][:width] * np.sqrt(width) if propensity is not None and self.embeddings
                   else np.zeros(width))
        return np.column_stack([self.embedding_centre.astype(np.float64), weights])

    def sparse_raw_scores(self, rows: "SparseRows", names: tuple[str, ...], layout: BlendInputs) -> np.ndarray:
        """raw_scores of customers whose category shares are sparse (SparseRows), component by component
        the same arithmetic: the z-scored share block is its value at share 0 (a constant per column)
        plus a correction at the purchased categories, so no [n, features] matrix is ever built.
        `layout` carries the raw columns' names and scale (any BlendInputs of the fit). The terms that
        do not depend on the fit (ShareTerms) come with `rows` when the reader computed them ahead."""
        from scipy import sparse

        head, shares, products = rows.head, rows.shares, rows.embedding_products
        terms = rows.terms if rows.terms is not None else share_terms(head, shares, layout.names, layout.scale)
        (n, width), categories = head.shape, shares.shape[1]
        at, indptr, background = shares.indices, shares.indptr, terms.background

        def corrections(values: np.ndarray) -> "sparse.csr_matrix":
            return sparse.csr_matrix((values, at, indptr), shape=shares.shape)

        head_inputs = terms.head_inputs(head)
        linear = {}  # raw-block products: the raw centroid's and propensity's weights, in one pass
        if "raw" in names:
            linear["raw"] = self.raw_centre
        if "propensity" in names:
            linear["propensity"] = self.models["propensity"].coef_[0][-(width + categories):]  # after the embeddings' weights
        if "propensity_raw" in names:
            linear["propensity_raw"] = self.models["propensity_raw"].coef_[0]
        if linear:
            weights = np.column_stack(list(linear.values()))
            dots = head @ weights[:width] + background @ weights[width:] + corrections(terms.z_minus_background) @ weights[width:]
            dots = dict(zip(linear, dots.T))
        columns = []
        for name in names:
            if name == "embedding":
                norms = np.sqrt(products[:, 2]) * max(float(np.linalg.norm(self.embedding_centre)), 1e-12)
                columns.append(products[:, 0] / np.maximum(norms, 1e-12))
            elif name == "raw":
                norms = np.sqrt(terms.raw_squares) * max(float(np.linalg.norm(self.raw_centre)), 1e-12)
                columns.append(dots["raw"] / np.maximum(norms, 1e-12))
            elif name == "propensity":
                value = dots["propensity"] + (products[:, 1] if self.embeddings else 0.0)
                columns.append(value + self.models[name].intercept_[0])
            elif name == "propensity_raw":
                columns.append(dots[name] + self.models[name].intercept_[0])
            elif name in STATIC:
                columns.append(head_inputs.static(name))
            elif name == "shares_lr":
                model = self.models[name]
                coef = model.coef_[0]
                value = terms.preference_background @ coef[:-1] + corrections(terms.preference_correction) @ coef[:-1]
                columns.append(value + terms.lines * coef[-1] + model.intercept_[0])
            elif self.gbm_trees is not None:
                # The trees' input transposed ([features, n]): the features' value when not bought, then the purchases.
                trees = self.gbm_trees
                share_features = trees.features[trees.features < categories]
                x = np.empty((len(trees.features), n))
                x[: len(share_features)] = terms.preference_background[share_features][:, None]
                position = np.full(categories, -1)
                position[share_features] = np.arange(len(share_features))
                hit = np.flatnonzero(position[at] >= 0)
                x[position[at[hit]], terms.purchase_rows[hit]] = terms.preference_at[hit]
                if len(share_features) < len(trees.features):  # the last preference column: log order lines
                    x[-1] = terms.lines
                columns.append(trees.raw_score_of_columns(x))
            else:
                dense = np.column_stack([corrections(terms.preference_correction).toarray() + terms.preference_background,
                                         terms.lines])
                columns.append(self.models[name].predict(dense, raw_score=True))
        return np.round(np.column_stack(columns) if columns else np.zeros((n, 0)), 9)


@dataclass
class ShareTerms:
    """What scoring sparse rows needs that depends only on the raw columns' scale, not on the fitted blend:
    per purchase (one entry per stored share, CSR order) and per customer. PopulationReader computes them
    on its thread while the blend is fitted; sparse_raw_scores then does only the fit's products."""
    names: tuple                    # the head columns' names
    scale: tuple                    # the head columns' (mean, std)
    background: np.ndarray          # float64 [categories]: a share column's z-score at share 0
    preference_background: np.ndarray  # float64 [categories]: preference()'s share at share 0
    z_minus_background: np.ndarray  # float64 [purchases]: z-score of the stored share less the background
    preference_at: np.ndarray       # float64 [purchases]: preference()'s share, bought
    preference_correction: np.ndarray  # float64 [purchases]: preference_at less preference_background
    purchase_rows: np.ndarray       # int32 [purchases]: the customer (row) of each purchase
    raw_squares: np.ndarray         # float64 [n]: squared norm of the customer's whole z-scored raw row
    lines: np.ndarray | None        # float64 [n]: order lines on their stored scale (preference()'s last column)

    def head_inputs(self, head: np.ndarray) -> BlendInputs:
        return BlendInputs(np.zeros((len(head), 0), np.float32), head, self.names, self.scale)


def share_terms(head: np.ndarray, shares, names: tuple, scale: tuple) -> ShareTerms:
    """ShareTerms of rows with z-scored `head` columns and stored `shares` (CSR), for raw columns `names`
    with `scale` (the fit's layout: head columns first, then one share column per category)."""
    from scipy import sparse

    (n, width), at = head.shape, shares.indices
    mean, std = (np.asarray(v, dtype=np.float64) for v in scale)
    # As load_raw_features z-scores (float32, clipped): a share of 0, then the stored shares.
    mean32, std32 = mean[width:].astype(np.float32), np.where(std[width:] > 1e-9, std[width:], 1.0).astype(np.float32)
    background = np.clip((np.float32(0.0) - mean32) / std32, -CLIP, CLIP).astype(np.float64)
    z = np.clip((shares.data - mean32[at]) / std32[at], -CLIP, CLIP).astype(np.float64)
    background_at = background[at]
    z_minus_background = z - background_at
    head64 = head.astype(np.float64)
    square_corrections = sparse.csr_matrix((z * z - background_at ** 2, at, shares.indptr), shape=shares.shape)
    raw_squares = np.einsum("ij,ij->i", head64, head64) + background @ background \
        + square_corrections @ np.ones(shares.shape[1])
    plain_std, plain_mean = np.where(std[width:] > 1e-9, std[width:], 1.0), mean[width:]
    preference_at = np.clip(z * plain_std[at] + plain_mean[at], 0.0, 1.0)  # preference()'s shares, bought
    preference_background = np.clip(background * plain_std + plain_mean, 0.0, 1.0)  # and not bought
    head_names, head_scale = tuple(names[:width]), (mean[:width], std[:width])
    inputs = BlendInputs(np.zeros((n, 0), np.float32), head, head_names, head_scale)
    lines_column = inputs.lines_column()
    return ShareTerms(head_names, head_scale, background, preference_background, z_minus_background, preference_at,
                      preference_at - preference_background[at], np.repeat(np.arange(n, dtype=np.int32), np.diff(shares.indptr)),
                      raw_squares, None if lines_column is None else inputs.column(lines_column, plain=True))


@dataclass
class SparseRows:
    """Customers' raw features as load_raw_features lays them out but with the category shares (its last
    columns) as stored, sparse, and their embeddings reduced to products with the fitted directions:
    what scoring a whole population needs (FittedComponents.sparse_raw_scores)."""
    head: np.ndarray                # float32 [n, H]: the z-scored, clipped columns before the shares
    shares: object                  # scipy CSR float32 [n, categories]: category shares as stored
    embedding_products: np.ndarray  # float64 [n, 3]: embeddings @ embedding_directions(), squared norm
    terms: ShareTerms | None = None  # share_terms() of head and shares, when computed ahead (None: computed here)


@dataclass
class Split:
    column: int           # position in Trees.features
    threshold: float
    default_left: bool    # where a missing value goes
    missing: str          # LightGBM's missing_type: None (NaN read as 0), Zero, NaN
    left: "Split | float"  # a subtree or a leaf value
    right: "Split | float"


@dataclass
class Trees:
    """A fitted LightGBM model's trees, evaluated with numpy on only the features they split on.

    LightGBM's own predict walks every input column of every row (~10 us a row at 300 columns);
    here each split is one vectorised comparison of one column, and a row's leaf is found by
    masks down the tree. Same decisions as LightGBM's numerical splits (value <= threshold; a
    missing value, NaN or for `Zero` splits 0, goes the default way), leaf values summed in tree
    order: gbm_trees checks the two agree on the training rows before this is used."""
    features: np.ndarray              # the preference columns the trees split on
    trees: list                       # Split or float (a single-leaf tree) per tree, in boosting order

    @classmethod
    def from_booster(cls, booster) -> "Trees":
        dumped = [tree["tree_structure"] for tree in booster.dump_model()["tree_info"]]
        features: set[int] = set()

        def collect(node: dict) -> None:
            if "split_feature" in node:
                if node.get("decision_type", "<=") != "<=":
                    raise ValueError(f"unsupported LightGBM split {node.get('decision_type')!r}")
                features.add(int(node["split_feature"]))
                collect(node["left_child"])
                collect(node["right_child"])

        for root in dumped:
            collect(root)
        columns = np.array(sorted(features), dtype=np.int64)

        def build(node: dict) -> "Split | float":
            if "split_feature" not in node:
                return float(node["leaf_value"])
            return Split(int(np.searchsorted(columns, node["split_feature"])), float(node["threshold"]),
                         bool(node.get("default_left", True)), str(node.get("missing_type", "None")),
                         build(node["left_child"]), build(node["right_child"]))

        return cls(columns, [build(root) for root in dumped])

    def raw_score(self, x: np.ndarray) -> np.ndarray:
        """Sum of leaf values per row of `x` (columns: `features`), as LightGBM's predict(raw_score=True)."""
        return self.raw_score_of_columns(np.ascontiguousarray(np.asarray(x, dtype=np.float64).T))

    def raw_score_of_columns(self, columns: np.ndarray) -> np.ndarray:
        """raw_score of the transposed input: [len(features), n], one contiguous row per feature."""
        has_nan = bool(np.isnan(columns).any())
        total = np.zeros(columns.shape[1])
        for tree in self.trees:  # in boosting order, as LightGBM adds them
            total += self._leaf_values(tree, columns, has_nan)
        return total

    @staticmethod
    def _goes_left(split: Split, values: np.ndarray, has_nan: bool) -> np.ndarray:
        if not has_nan and split.missing != "Zero":
            return values <= split.threshold
        nan = np.isnan(values)
        if split.missing != "NaN":
            values = np.where(nan, 0.0, values)
        missing = (nan if split.missing == "NaN" else np.zeros_like(nan)) | (
            (np.abs(values) <= 1e-35) if split.missing == "Zero" else False)
        return np.where(missing, split.default_left, values <= split.threshold)

    @classmethod
    def _leaf_values(cls, node: "Split | float", columns: np.ndarray, has_nan: bool) -> "np.ndarray | float":
        """The value of the leaf each row reaches: one comparison and one select per split over every row
        (masking the rows down each branch instead cost three passes a split and one a leaf)."""
        if not isinstance(node, Split):
            return node
        return np.where(cls._goes_left(node, columns[node.column], has_nan),
                        cls._leaf_values(node.left, columns, has_nan), cls._leaf_values(node.right, columns, has_nan))


def fit_gbm(x: np.ndarray, y: np.ndarray, random_seed: int, sample_weight: np.ndarray | None = None):
    import lightgbm

    positives = max(float(y.sum()), 1.0)
    weights = np.where(y == 1, (len(y) - positives) / positives, 1.0)  # class-balanced, as the LRs
    if sample_weight is not None:
        weights = weights * sample_weight
    model = lightgbm.LGBMClassifier(random_state=random_seed, **GBM_PARAMS)
    return model.fit(x, y, sample_weight=weights)


def gbm_trees(model, rows: np.ndarray) -> Trees | None:
    """`model`'s trees for numpy scoring, checked against LightGBM's own predict on `rows` (a model
    this evaluator does not read the same way, e.g. categorical splits, stays on LightGBM's predict)."""
    try:
        trees = Trees.from_booster(model.booster_)
    except (KeyError, ValueError):
        return None
    same = np.allclose(trees.raw_score(rows[:, trees.features]), model.predict(rows, raw_score=True), rtol=0, atol=1e-12)
    return trees if same else None


def fit_components(seeds: BlendInputs, unlabelled: BlendInputs, reference: BlendInputs, random_seed: int,
                   active: tuple[str, ...], embeddings: bool = True) -> FittedComponents:
    from sklearn.linear_model import LogisticRegression

    y = np.r_[np.ones(len(seeds)), np.zeros(len(unlabelled))]
    # Value weights rescaled to mean 1 on these seeds: the seeds' total weight, which class balancing
    # and the regularisation see, stays their count (a fold whose seeds are all worth 0: unweighted).
    seed_weights = seeds.weights
    if seed_weights is not None:
        seed_weights = seed_weights / seed_weights.mean() if seed_weights.any() else None
    sample_weight = None if seed_weights is None else np.r_[seed_weights, np.ones(len(unlabelled))]
    models: dict = {}
    trees = None
    if "propensity" in active:
        x = np.vstack([seeds.joint(embeddings), unlabelled.joint(embeddings)]).astype(np.float64)  # lbfgs converts float32 anyway, slower
        models["propensity"] = LogisticRegression(C=PROPENSITY_C, max_iter=1000, class_weight="balanced",
                                                  random_state=random_seed).fit(x, y, sample_weight=sample_weight)
    if "propensity_raw" in active:
        x = np.vstack([seeds.raw, unlabelled.raw]).astype(np.float64)
        models["propensity_raw"] = LogisticRegression(C=PROPENSITY_C, max_iter=1000, class_weight="balanced",
                                                      random_state=random_seed).fit(x, y, sample_weight=sample_weight)
    if "shares_lr" in active or "shares_gbm" in active:
        x = np.vstack([seeds.preference(), unlabelled.preference()])
        if "shares_lr" in active:
            models["shares_lr"] = LogisticRegression(C=SHARES_LR_C, max_iter=1000, class_weight="balanced",
                                                     random_state=random_seed).fit(x, y, sample_weight=sample_weight)
        if "shares_gbm" in active:
            keep = np.r_[np.arange(len(seeds)), len(seeds) + np.sort(np.random.default_rng(random_seed).permutation(
                len(unlabelled))[:GBM_UNLABELLED])]
            models["shares_gbm"] = fit_gbm(x[keep], y[keep], random_seed,
                                           None if sample_weight is None else sample_weight[keep])
            trees = gbm_trees(models["shares_gbm"], x[keep[:: max(1, len(keep) // 512)]])
    fitted = FittedComponents(active, normalise(weighted_mean(seeds.embeddings, seed_weights)[None, :])[0],
                              weighted_mean(seeds.raw.astype(np.float64), seed_weights), models, embeddings,
                              gbm_trees=trees)
    fitted.references = [np.sort(column) for column in fitted.raw_scores(reference).T]
    return fitted


def auc(positives: np.ndarray, negatives: np.ndarray, weights: np.ndarray | None = None) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney); with `weights`,
    the positive is drawn in proportion to its weight (a value-based seed's value)."""
    return auc_sorted(positives, np.sort(negatives), weights)


def auc_sorted(positives: np.ndarray, negatives: np.ndarray, weights: np.ndarray | None = None) -> float:
    """auc() of negatives already sorted ascending."""
    below = np.searchsorted(negatives, positives, side="left")
    ties = np.searchsorted(negatives, positives, side="right") - below
    if weights is None:
        return float((below + 0.5 * ties).sum() / (len(positives) * len(negatives)))
    return float(weights @ (below + 0.5 * ties) / (max(float(weights.sum()), 1e-12) * len(negatives)))


def top_weighted_auc(positives: np.ndarray, negatives: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The selection criterion: the mean of the AUC against every negative and the AUC against the
    highest-scoring TOP_SHARE of the negatives (how well positives rank where an audience is cut)."""
    negatives = np.sort(negatives)  # once, for both halves
    top = negatives[int(len(negatives) * (1 - TOP_SHARE)):]
    return 0.5 * auc_sorted(positives, negatives, weights) + 0.5 * auc_sorted(positives, top, weights)


def greedy_selection(positives: np.ndarray, negatives: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Selection counts [K] of greedy forward selection with replacement over percentile columns, by
    top_weighted_auc (of the positives weighted by `weights`, when given)."""
    counts = np.zeros(positives.shape[1])
    current_pos, current_neg = np.zeros(len(positives)), np.zeros(len(negatives))
    for _ in range(STEPS):
        trial = [top_weighted_auc(current_pos + positives[:, k], current_neg + negatives[:, k], weights) for k in range(positives.shape[1])]
        k = int(np.argmax(trial))
        counts[k] += 1
        current_pos += positives[:, k]
        current_neg += negatives[:, k]
    return counts


def select_weights(positives: np.ndarray, negatives: np.ndarray, rng: np.random.Generator,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """Bagged greedy selection: mean over BAGS bootstrap resamples of the normalised selection counts
    (each resampled positive keeps its weight; a resample whose weights are all 0 counts them alike)."""
    total = np.zeros(positives.shape[1])
    for _ in range(BAGS):
        rows = rng.integers(0, len(positives), len(positives))
        pos = positives[rows]
        neg = negatives[rng.integers(0, len(negatives), len(negatives))]
        bag_weights = None if weights is None or not weights[rows].any() else weights[rows]
        counts = greedy_selection(pos, neg, bag_weights)
        total += counts / max(counts.sum(), 1.0)
    return total / BAGS


def out_of_fold(seeds: BlendInputs, unlabelled: BlendInputs, reference: BlendInputs, rng: np.random.Generator,
                random_seed: int, active: tuple[str, ...], embeddings: bool = True, pool=None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Out-of-fold percentiles [n, len(active)] of every seed and of (a sample of) the unlabelled customers:
    each fold's rows scored by components fitted on the other folds; and the seeds' weights in the same
    order (None for an unweighted seed)."""
    seed_fold = rng.permutation(len(seeds)) % FOLDS
    unlabelled_fold = rng.permutation(len(unlabelled)) % FOLDS
    reference = reference.take(np.arange(min(len(reference), SELECTION_UNLABELLED)))  # enough resolution to select
    # Time goes into the fits, which grow with the unlabelled rows; the seeds are what is scarce.
    splits = [(rng.permutation(np.flatnonzero(unlabelled_fold != fold))[:FOLD_UNLABELLED],
               rng.permutation(np.flatnonzero(unlabelled_fold == fold))[:SELECTION_UNLABELLED // FOLDS + 1])
              for fold in range(FOLDS)]

    def held_out(fold: int) -> tuple[np.ndarray, np.ndarray]:
        train, held = splits[fold]
        fitted = fit_components(seeds.take(np.flatnonzero(seed_fold != fold)), unlabelled.take(np.sort(train)),
                                reference, random_seed, active, embeddings)
        return fitted.percentiles(seeds.take(np.flatnonzero(seed_fold == fold))), fitted.percentiles(unlabelled.take(np.sort(held)))

    # The folds are independent fits: run side by side (pool), same results as one after the other.
    folds = list(pool.map(held_out, range(FOLDS))) if pool is not None else [held_out(fold) for fold in range(FOLDS)]
    held_rows = [np.flatnonzero(seed_fold == fold) for fold in range(FOLDS)]
    weights = None if seeds.weights is None else seeds.weights[np.concatenate(held_rows)]
    return np.vstack([f[0] for f in folds]), np.vstack([f[1] for f in folds]), weights


@dataclass
class Blend:
    components: FittedComponents
    weights: tuple[float, ...]        # aligned to components.active
    evidence: dict
    # Blended out-of-fold scores of the held-out seeds and held-out unlabelled customers (reach.py's
    # in-seed validation); None when the seed was too small to validate.
    validation: tuple[np.ndarray, np.ndarray] | None = None

    def used(self) -> tuple[tuple[str, ...], np.ndarray]:
        """The components with weight, and their weights: one the selection left at 0 adds exactly 0."""
        used = tuple(name for name, weight in zip(self.components.active, self.weights) if weight > 0)
        return used, np.array([w for w in self.weights if w > 0])

    def score_sparse(self, rows: SparseRows, layout: BlendInputs) -> np.ndarray:
        """score() of SparseRows (a population read batch by batch), `layout` any BlendInputs of the fit."""
        used, weights = self.used()
        return self.components.percentiles_of(self.components.sparse_raw_scores(rows, used, layout), used) @ weights

    def score(self, inputs: BlendInputs) -> np.ndarray:
        """Blended percentile per row, SCORE_BLOCK rows at a time (their float64 copies stay small); a
        component the selection gave no weight is not computed (it adds exactly 0)."""
        used, weights = self.used()
        out = np.empty(len(inputs))
        for start in range(0, len(inputs), SCORE_BLOCK):
            block = inputs.take(slice(start, start + SCORE_BLOCK))
            out[start : start + SCORE_BLOCK] = self.components.percentiles(block, used) @ weights
        return out


def fit_blend(seeds: BlendInputs, unlabelled: BlendInputs, random_seed: int = 0, embeddings: bool = True) -> Blend:
    """Self-validate the weights inside the seed, then fit every component on the whole seed.

    `embeddings=False` leaves the encoder out entirely (no embedding cosine, propensity on raw
    features only): to measure what the embeddings add."""
    from lookalike_cli.threads import one_thread

    # Small fits: one BLAS thread is several times faster than oversubscribed threads on a busy machine.
    with one_thread():
        return _fit_blend(seeds, unlabelled, random_seed, embeddings)


def _fit_blend(seeds: BlendInputs, unlabelled: BlendInputs, random_seed: int, embeddings: bool) -> Blend:
    rng = np.random.default_rng(random_seed)
    active = seeds.available(embeddings)
    if "shares_lr" in active:  # computed once, sliced by every fold
        seeds.preference(), unlabelled.preference()
    reference = unlabelled.take(rng.permutation(len(unlabelled))[:REFERENCE_SIZE])
    weights = np.full(len(active), 1.0 / len(active))
    evidence: dict = {"components": list(active), "folds": 0, "unlabelled": int(len(unlabelled)),
                      "selection": "equal weights (seed too small to validate)"}
    # The final fit does not depend on the folds (only the weights do): it runs beside them, on FIT_THREADS
    # threads (the fits are numpy, BLAS and LightGBM calls that release the GIL); identical results.
    pool = ThreadPoolExecutor(FIT_THREADS) if FIT_THREADS > 1 else None
    final = pool.submit(fit_components, seeds, unlabelled, reference, random_seed, active, embeddings) if pool else None
    try:
        return _validate_and_weigh(seeds, unlabelled, reference, rng, random_seed, active, embeddings, weights, evidence,
                                   pool, final)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _validate_and_weigh(seeds, unlabelled, reference, rng, random_seed, active, embeddings, weights, evidence, pool,
                        final) -> Blend:
    validation = None
    if len(seeds) >= MIN_VALIDATION_SEEDS and len(unlabelled) >= 2 * FOLDS:
        positives, negatives, value = out_of_fold(seeds, unlabelled, reference, rng, random_seed, active, embeddings, pool)
        weights = select_weights(positives, negatives, rng, value)
        evidence.update(
            folds=FOLDS, bags=BAGS, steps=STEPS,
            selection="bagged greedy forward selection on out-of-fold percentiles, by held-out top-weighted AUC"
                      + ("" if value is None else " (held-out seeds weighted by value)"),
            validation_auc={name: round(auc(positives[:, k], negatives[:, k], value), 4) for k, name in enumerate(active)},
            blend_validation_auc=round(auc(positives @ weights, negatives @ weights, value), 4))
        validation = (positives @ weights, negatives @ weights)
    components = final.result() if final is not None else fit_components(seeds, unlabelled, reference, random_seed,
                                                                          active, embeddings)
    weights = tuple(float(w) for w in weights)
    evidence["weights"] = {name: round(w, 3) for name, w in zip(active, weights)}
    return Blend(components, weights, evidence, validation)
