"""Keeping the index in step: the worker, the stateful property test, restores and backups."""
