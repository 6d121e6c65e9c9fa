"""vitdex.index: FAISS vector indexes keyed by image ids, cosine search with id filters,
recall evaluation and the near-duplicate graph. Importing it does not import faiss."""

from vitdex.index.errors import IndexFileError, IndexInputError, IndexKindError, VectorIndexError
from vitdex.index.evaluate import recall_at_k
from vitdex.index.graph import connected_components, knn_graph
from vitdex.index.vector_index import INDEX_KINDS, VectorIndex, choose_kind

__all__ = [
    "INDEX_KINDS",
    "IndexFileError",
    "IndexInputError",
    "IndexKindError",
    "VectorIndex",
    "VectorIndexError",
    "choose_kind",
    "connected_components",
    "knn_graph",
    "recall_at_k",
]
