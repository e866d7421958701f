"""The customer tower of the two-tower similarity model (seed 000, section 4).

Both towers share these weights: a pair's predicted similarity is the cosine of the two
customers' embeddings. The module takes raw feature columns and carries its own
normalisation constants and one-hot encoding, so the exported ONNX graph needs nothing
but the re-coding described in `features.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


SHARE_CLIP = 10.0


@dataclass
class TowerConfig:
    n_dense: int
    cardinalities: list[int]  # per categorical column: vocabulary size + 1 (code 0 = unseen)
    n_categories: int
    location: str = "none"  # none | word | sentence
    n_buckets: int = 4096
    word_dim: int = 32
    sentence_dim: int = 384
    layers: int = 2
    hidden: int = 256
    dim: int = 128
    dense_mean: list[float] = field(default_factory=list)
    dense_std: list[float] = field(default_factory=list)
    # Per-category z-score of the shares input (empty: shares enter as stored, as in manifests
    # written before this option). Shares of a few hundred categories are mostly ~0.01; scaled
    # to unit variance, a rare category's signal is as easy to learn as a common one's.
    share_mean: list[float] = field(default_factory=list)
    share_std: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class CustomerTower(nn.Module):
    def __init__(self, config: TowerConfig):
        super().__init__()
        self.config = config
        mean = config.dense_mean or [0.0] * config.n_dense
        std = config.dense_std or [1.0] * config.n_dense
        self.register_buffer("dense_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("dense_std", torch.tensor(std, dtype=torch.float32))
        self.scale_shares = bool(config.share_mean)
        if self.scale_shares:
            self.register_buffer("share_mean", torch.tensor(config.share_mean, dtype=torch.float32))
            self.register_buffer("share_std", torch.tensor(config.share_std, dtype=torch.float32))
        for i, cardinality in enumerate(config.cardinalities):
            self.register_buffer(f"levels_{i}", torch.arange(cardinality, dtype=torch.int64), persistent=False)
        width = config.n_dense + sum(config.cardinalities) + config.n_categories
        if config.location == "word":
            # Hashed location tokens, averaged: a light learned word embedding (paper's Figure 4).
            self.location_embedding = nn.Embedding(config.n_buckets + 1, config.word_dim, padding_idx=0)
            width += config.word_dim
        elif config.location == "sentence":
            width += config.sentence_dim
        blocks: list[nn.Module] = []
        for _ in range(config.layers - 1):
            blocks += [nn.Linear(width, config.hidden), nn.ReLU()]
            width = config.hidden
        blocks.append(nn.Linear(width, config.dim))
        self.mlp = nn.Sequential(*blocks)

    def forward(self, dense: torch.Tensor, categorical: torch.Tensor, shares: torch.Tensor,
                location: torch.Tensor | None = None) -> torch.Tensor:
        parts = [(torch.log1p(dense.clamp(min=0.0)) - self.dense_mean) / self.dense_std]
        # One-hot by comparison with the level ids: exports to plain Equal + Cast in ONNX.
        for i in range(len(self.config.cardinalities)):
            levels = getattr(self, f"levels_{i}")
            parts.append((categorical[:, i : i + 1] == levels).to(dense.dtype))
        if self.scale_shares:
            # Clipped like raw_features' z-scores: a share of a category 1 customer in 1,000 buys
            # would otherwise be a z of ~30, and a range int8 quantisation cannot keep.
            shares = ((shares - self.share_mean) / self.share_std).clamp(-SHARE_CLIP, SHARE_CLIP)
        parts.append(shares)
        if self.config.location == "word":
            vectors = self.location_embedding(location)
            counts = (location > 0).sum(dim=1, keepdim=True).clamp(min=1).to(dense.dtype)
            parts.append(vectors.sum(dim=1) / counts)
        elif self.config.location == "sentence":
            parts.append(location)
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)


def pair_cosine(tower: CustomerTower, inputs_a: dict[str, torch.Tensor], inputs_b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Both towers in one forward pass (shared weights), then the cosine of each pair."""
    n = next(iter(inputs_a.values())).shape[0]
    both = tower(**{k: torch.cat([inputs_a[k], inputs_b[k]]) for k in inputs_a})
    return (both[:n] * both[n:]).sum(dim=1)


class ServingTower(nn.Module):
    """The function of a trained CustomerTower, rearranged for inference: what `export` writes to ONNX.

    The first layer's matmul over the concatenated input is split by input, with every affine
    preprocessing step folded into its weights and bias: the dense z-score, the shares z-score
    (its clip becomes a clip of the raw share at mean +- SHARE_CLIP * std, the same bound before
    scaling), and nothing is concatenated but the dense block. ONNX Runtime then runs three
    GEMMs and a few element-wise ops instead of z-scoring and copying every input into one wide
    matrix; outputs equal to ~2e-7 (benchmarks/bench_serving_graph.py measures both forms).
    """

    def __init__(self, tower: CustomerTower):
        super().__init__()
        config = tower.config
        self.config = config
        first = tower.mlp[0]
        weight, bias = first.weight.detach(), first.bias.detach().clone()
        bounds = [config.n_dense, config.n_dense + sum(config.cardinalities)]
        bounds.append(bounds[-1] + config.n_categories)
        dense_weight, level_weight, share_weight, location_weight = torch.tensor_split(weight, bounds, dim=1)
        dense_weight = dense_weight / tower.dense_std
        bias = bias - dense_weight @ tower.dense_mean
        self.scale_shares = tower.scale_shares
        if self.scale_shares:
            self.register_buffer("share_low", tower.share_mean - SHARE_CLIP * tower.share_std)
            self.register_buffer("share_high", tower.share_mean + SHARE_CLIP * tower.share_std)
            share_weight = share_weight / tower.share_std
            bias = bias - share_weight @ tower.share_mean
        for i, cardinality in enumerate(config.cardinalities):
            self.register_buffer(f"levels_{i}", torch.arange(cardinality, dtype=torch.int64), persistent=False)
        self.dense_layer = self._linear(torch.cat([dense_weight, level_weight], dim=1), bias)
        self.share_layer = self._linear(share_weight)
        self.location_layer = self._linear(location_weight) if config.location != "none" else None
        if config.location == "word":
            self.location_embedding = tower.location_embedding
        self.rest = tower.mlp[1:]

    @staticmethod
    def _linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        layer.weight.data = weight.contiguous()
        if bias is not None:
            layer.bias.data = bias
        return layer

    def forward(self, dense: torch.Tensor, categorical: torch.Tensor, shares: torch.Tensor,
                location: torch.Tensor | None = None) -> torch.Tensor:
        parts = [torch.log1p(dense.clamp(min=0.0))]
        for i in range(len(self.config.cardinalities)):
            parts.append((categorical[:, i : i + 1] == getattr(self, f"levels_{i}")).to(dense.dtype))
        hidden = self.dense_layer(torch.cat(parts, dim=1))
        if self.scale_shares:
            shares = torch.minimum(torch.maximum(shares, self.share_low), self.share_high)
        hidden = hidden + self.share_layer(shares)
        if self.config.location == "word":
            vectors = self.location_embedding(location)
            counts = (location > 0).sum(dim=1, keepdim=True).clamp(min=1).to(dense.dtype)
            hidden = hidden + self.location_layer(vectors.sum(dim=1) / counts)
        elif self.config.location == "sentence":
            hidden = hidden + self.location_layer(location)
        return F.normalize(self.rest(hidden), dim=1)
