"""The FAISS index: derived data in immutable segments, switched by manifest generations."""

from retrieval.index.policy import Merge, MergePolicy
from retrieval.index.segments import BuildOptions, IndexStore, IndexVersion, Manifest, SegmentMeta

__all__ = ["BuildOptions", "IndexStore", "IndexVersion", "Manifest", "Merge", "MergePolicy", "SegmentMeta"]
