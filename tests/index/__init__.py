"""The FAISS index: segment files and manifests, the segment contract every kind passes, merges, versions."""
