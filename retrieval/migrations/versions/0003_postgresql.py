"""PostgreSQL as a first-class database, and worker state in the database.

On PostgreSQL:

* ``documents.metadata`` becomes ``jsonb`` (filters compile to jsonb operators), with a
  GIN index (``jsonb_path_ops``) that serves every equality filter;
* timestamps become ``timestamptz`` (existing values were written in UTC);
* ``updated_at`` is maintained by a BEFORE UPDATE trigger, as SQLite's trigger does;
* the change log's sequence order becomes commit order: a statement that changes
  documents first takes a transaction-level advisory lock (:data:`CHANGE_LOG_LOCK`), so
  a second writer waits for the first to commit before it draws a sequence number. A
  reader can then never see change ``n + 1`` committed while ``n`` is still in flight,
  which would make a sync record ``n + 1`` and skip ``n`` forever;
* every committed change to documents sends ``NOTIFY retrieval_changes``, which wakes
  the workers (they poll too, since a notification is not replayed to a listener that
  was disconnected);
* keyword search gets a generated ``tsvector`` column (``to_tsvector('english', text)``,
  so it is kept in step in the writing transaction whichever program writes) and a GIN
  index over it.

On both databases, a ``workers`` table holds each worker's state (which replica, where,
its progress), so ``retrieve status`` sees every worker following the database, from
any machine.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Keep in step with retrieval/store/db.py.
CHANGE_LOG_LOCK = 7_283_460_113
NOTIFY_CHANNEL = "retrieval_changes"

TIMESTAMPS = [("documents", "created_at"), ("documents", "updated_at"), ("embeddings", "created_at"),
              ("changes", "changed_at")]

# Revision 0001's log trigger names the metadata column, whose type cannot change under it.
LOG_TRIGGER = """
    CREATE TRIGGER documents_log_change
    AFTER INSERT OR DELETE OR UPDATE OF id, external_id, text, metadata ON documents
    FOR EACH ROW EXECUTE FUNCTION retrieval_log_change()
"""

POSTGRES_UP = [
    "DROP TRIGGER documents_log_change ON documents",
    "ALTER TABLE documents ALTER COLUMN metadata TYPE jsonb USING metadata::jsonb",
    LOG_TRIGGER,
    "CREATE INDEX ix_documents_metadata ON documents USING gin (metadata jsonb_path_ops)",
    *(f"ALTER TABLE {t} ALTER COLUMN {c} TYPE timestamptz USING {c} AT TIME ZONE 'UTC'" for t, c in TIMESTAMPS),
    f"""
    CREATE FUNCTION retrieval_order_changes() RETURNS trigger AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock({CHANGE_LOG_LOCK});
        RETURN NULL;
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER documents_order_changes
    BEFORE INSERT OR DELETE OR UPDATE OF id, external_id, text, metadata ON documents
    FOR EACH STATEMENT EXECUTE FUNCTION retrieval_order_changes()
    """,
    """
    CREATE FUNCTION retrieval_touch() RETURNS trigger AS $$
    BEGIN
        NEW.updated_at := current_timestamp;
        RETURN NEW;
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER documents_touch
    BEFORE UPDATE OF id, external_id, text, metadata ON documents
    FOR EACH ROW EXECUTE FUNCTION retrieval_touch()
    """,
    f"""
    CREATE FUNCTION retrieval_notify_changes() RETURNS trigger AS $$
    BEGIN
        PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
        RETURN NULL;
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER documents_notify_changes
    AFTER INSERT OR DELETE OR UPDATE OF id, external_id, text, metadata ON documents
    FOR EACH STATEMENT EXECUTE FUNCTION retrieval_notify_changes()
    """,
    """
    ALTER TABLE documents ADD COLUMN text_search tsvector
        GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED
    """,
    "CREATE INDEX ix_documents_text_search ON documents USING gin (text_search)",
]

POSTGRES_DOWN = [
    "DROP INDEX IF EXISTS ix_documents_text_search",
    "ALTER TABLE documents DROP COLUMN IF EXISTS text_search",
    "DROP TRIGGER IF EXISTS documents_notify_changes ON documents",
    "DROP FUNCTION IF EXISTS retrieval_notify_changes()",
    "DROP TRIGGER IF EXISTS documents_touch ON documents",
    "DROP FUNCTION IF EXISTS retrieval_touch()",
    "DROP TRIGGER IF EXISTS documents_order_changes ON documents",
    "DROP FUNCTION IF EXISTS retrieval_order_changes()",
    *(f"ALTER TABLE {t} ALTER COLUMN {c} TYPE timestamp USING {c} AT TIME ZONE 'UTC'" for t, c in TIMESTAMPS),
    "DROP INDEX IF EXISTS ix_documents_metadata",
    "DROP TRIGGER documents_log_change ON documents",
    "ALTER TABLE documents ALTER COLUMN metadata TYPE json USING metadata::json",
    LOG_TRIGGER,
]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    stamp = sa.DateTime().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")
    op.create_table(
        "workers",
        sa.Column("name", sa.String(512), primary_key=True),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("index_dir", sa.Text(), nullable=False),
        sa.Column("state", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("started_at", stamp, nullable=False, server_default=sa.func.current_timestamp()),
        sa.Column("heartbeat_at", stamp, nullable=False, server_default=sa.func.current_timestamp()),
    )
    if dialect == "postgresql":
        for statement in POSTGRES_UP:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in POSTGRES_DOWN:
            op.execute(statement)
    op.drop_table("workers")
