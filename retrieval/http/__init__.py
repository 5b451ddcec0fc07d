"""The HTTP service (`retrieve serve`), over the :class:`~retrieval.Retriever` alone.

* ``app``: :func:`create_app`, which assembles the parts below;
* ``routes``: the endpoints; ``service``: what they do, calling the retriever;
* ``schemas``: request and response bodies (limits from the settings);
* ``batcher``: micro-batched query encoding; ``sync_thread``: the worker inside;
* ``security``: bind-address and API-key checks; ``errors``: every error as JSON;
* ``edge``: request ids, the body limit, metrics and the generic 500;
* ``page``: the search page at ``/`` (``static/``), open, under a strict CSP.
"""

from retrieval.http.app import create_app, run
from retrieval.http.batcher import QueryBatcher
from retrieval.http.security import check_serve_settings, is_loopback
from retrieval.http.sync_thread import SyncThread

__all__ = ["create_app", "check_serve_settings", "is_loopback", "run", "QueryBatcher", "SyncThread"]
