"""The ad intention encoder: hashed word and character n-gram tokens -> mean bag -> MLP -> unit vector.

The paper uses a 3-layer transformer over WordPiece tokens; fine-tuning one on two shared CPU
cores is too slow, so ours is a bag of hashed word and char-trigram embeddings followed by two
feed-forward layers, trained with the paper's loss. Character n-grams let it place words it has
seen rarely (and spelling variants) near related ones. The tokenizer is fully described by
`TokenizerSpec`, which the ONNX manifest carries, so scoring needs no torch.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class TokenizerSpec:
    buckets: int = 16384      # hash space; id 0 is padding
    char_ngram: int = 3
    max_tokens: int = 96
    hash: str = "crc32"       # zlib.crc32 of the utf-8 token, mod (buckets - 1), + 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EncoderConfig:
    buckets: int = 16384
    token_dim: int = 64
    hidden: int = 128
    dim: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


def text_tokens(text: str, spec: TokenizerSpec) -> list[str]:
    tokens: list[str] = []
    n = spec.char_ngram
    for word in WORD.findall((text or "").lower()):
        tokens.append("w:" + word)
        padded = f"#{word}#"
        tokens.extend("c:" + padded[i:i + n] for i in range(max(len(padded) - n + 1, 1)))
    return tokens[: spec.max_tokens]


def tokenize(texts: Sequence[str], spec: TokenizerSpec) -> np.ndarray:
    """int64 (n, longest) token ids, 0-padded."""
    rows = [[zlib.crc32(token.encode("utf-8")) % (spec.buckets - 1) + 1 for token in text_tokens(text, spec)]
            for text in texts]
    width = max([len(row) for row in rows] + [1])
    ids = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = row
    return ids


class AdEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.buckets, config.token_dim, padding_idx=0)
        self.hidden = nn.Linear(config.token_dim, config.hidden)
        self.output = nn.Linear(config.hidden, config.dim)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        mask = (token_ids > 0).to(torch.float32).unsqueeze(-1)
        pooled = (self.embedding(token_ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return F.normalize(self.output(F.relu(self.hidden(pooled))), dim=-1)
