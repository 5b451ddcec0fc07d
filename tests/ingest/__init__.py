"""Writing documents: ingest, updates, deletes, and refused input."""
