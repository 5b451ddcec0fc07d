"""Alembic environment.

The store passes its own connection in ``config.attributes["connection"]`` so that
migrations run inside the process's engine (with its pragmas); the ``alembic`` command
line builds an engine from ``sqlalchemy.url`` or ``RETRIEVE_DATABASE_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from alembic import context
from sqlalchemy import create_engine

from retrieval.store.models import Base

config = context.config
target_metadata = Base.metadata

# Tables the models do not describe on purpose: the FTS5 keyword index of revision 0002
# (the virtual table and its shadow tables documents_fts_data, _idx, _docsize, _config).
UNMODELLED_PREFIXES = ("documents_fts",)
# Columns and indexes the models leave out: PostgreSQL's generated tsvector for keyword
# search and its GIN indexes (revision 0003), and the metadata indexes of index-field.
UNMODELLED_COLUMNS = ("text_search",)
UNMODELLED_INDEXES = ("ix_documents_text_search", "ix_documents_metadata", "ix_meta_")


def _include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Leave the unmodelled tables out of autogenerate's comparison (``alembic check``)."""
    if name is None:
        return True
    if type_ == "table":
        return not name.startswith(UNMODELLED_PREFIXES)
    if type_ == "column":
        return name not in UNMODELLED_COLUMNS
    if type_ == "index":
        return not name.startswith(UNMODELLED_INDEXES)
    return True


def _run(connection, *, one_transaction: bool = False) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things in place
        compare_type=True,
        include_name=_include_name,
        # Alembic commits after each revision on SQLite (it assumes the driver's own
        # transaction handling, which cannot run DDL in a transaction). The store's
        # engine begins its transactions itself, and a migration must hold the write
        # lock (BEGIN IMMEDIATE) from reading the version to its last revision: two
        # processes opening a new database at once otherwise interleave revisions, and
        # one applies a revision the other just applied ("table ... already exists").
        **({"transactional_ddl": True} if one_transaction else {}),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("RETRIEVE_DATABASE_URL")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection, one_transaction=True)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("RETRIEVE_DATABASE_URL", "sqlite:///data/retrieval.db")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
