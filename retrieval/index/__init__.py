"""The FAISS index: derived data in immutable segments, switched by manifest generations."""

from retrieval.index.build import BuildOptions
from retrieval.index.manifest import Manifest, SegmentMeta
from retrieval.index.policy import Merge, MergePolicy
from retrieval.index.segment import IndexVersion
from retrieval.index.store import IndexStore

__all__ = ["BuildOptions", "IndexStore", "IndexVersion", "Manifest", "Merge", "MergePolicy", "SegmentMeta"]
