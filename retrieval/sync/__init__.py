"""Keeping the index in step with the database.

* :mod:`~retrieval.sync.replay`: replaying the change log into a new segment (a sync), a
  full build, and :func:`~retrieval.sync.replay.follows`, which tells whether the database
  is the one an index follows;
* :mod:`~retrieval.sync.merge`: merges of segments;
* :mod:`~retrieval.sync.vectors`: stored vectors, embedding only what was never embedded;
* :mod:`~retrieval.sync.worker`: `retrieve worker`, which runs syncs and merges until stopped;
* :mod:`~retrieval.sync.maintenance`: reindex decisions and compaction.

The package imports none of them itself: the worker and maintenance sit above the
:class:`~retrieval.retriever.Retriever`, replay, merge and vectors below it.
"""
