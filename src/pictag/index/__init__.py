"""Vector search over embedding stores with Faiss: exact for small stores, IVF or HNSW from about a million."""

from pictag.index.faiss_index import INDEX_TYPES, IndexInfo, VectorIndex, build_index, exact_search

__all__ = ["INDEX_TYPES", "IndexInfo", "VectorIndex", "build_index", "exact_search"]
