"""Embedding vectors between Arrow and numpy, and their L2 normalisation.

An embedding column is a list of float32 per row: FixedSizeList as DuckDB returns `float[d]`,
or a variable-size List as Spark's `array<float>` arrives. In numpy it is a float32 (rows, d)
matrix. Cosine similarity is the inner product of L2-normalised rows, so every layer normalises
with the one `normalise` here, and a seed's vector is the same to the bit as the index's.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookalike_cli.errors import LookalikeError


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows L2-normalised as a C-contiguous float32 matrix (all-zero rows stay zero).

    A C-contiguous float32 input is normalised in place; anything else is copied first.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(vectors)
    return vectors


def to_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow embedding column (FixedSizeList, or List of equal lengths) as a new float32 (rows, d) matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    else:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        dim = int(lengths[0]) if len(lengths) else 0
        if (lengths != dim).any():
            raise LookalikeError("The embeddings are of different lengths (vectors of two models?): rescore with one model.")
    return np.array(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(column), dim)


def ids_and_vectors(table: pa.Table | pa.RecordBatch, column: str = "embedding") -> tuple[np.ndarray, np.ndarray]:
    """(customer ids int64, float32 matrix) of the rows of a (customer_id, embedding) table or batch."""
    ids = np.array(table.column("customer_id").to_numpy(zero_copy_only=False), dtype=np.int64)
    return ids, to_matrix(table.column(column))


def to_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """A float32 (rows, d) matrix as an Arrow FixedSizeList column (DuckDB's `float[d]`)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
