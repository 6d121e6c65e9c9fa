"""vitdex.index: FAISS vector indexes keyed by image ids, cosine search with id filters,
index files (a plain FAISS file plus a JSON sidecar, memory-mapped on load), recall evaluation
and the near-duplicate graph. Pure FAISS: it knows nothing of the database. Importing it does
not import faiss."""

from vitdex.index.errors import IndexFileError, IndexInputError, IndexKindError, VectorIndexError
from vitdex.index.evaluate import recall_at_k
from vitdex.index.graph import connected_components, knn_graph
from vitdex.index.vector_index import (
    INDEX_KINDS,
    VectorIndex,
    choose_kind,
    min_vectors,
    read_sidecar,
    remove_temp_files,
    sidecar_path,
)

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
    "min_vectors",
    "read_sidecar",
    "recall_at_k",
    "remove_temp_files",
    "sidecar_path",
]
