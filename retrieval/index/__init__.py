"""The FAISS index: derived data, versioned on disk, replaced atomically."""

from retrieval.index.faiss_index import IndexStore, IndexVersion, Manifest, build_index

__all__ = ["IndexStore", "IndexVersion", "Manifest", "build_index"]
