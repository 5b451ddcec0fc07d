"""Initial schema: documents, embeddings, and the trigger-filled change log.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER documents_log_insert AFTER INSERT ON documents BEGIN
        INSERT INTO changes (doc_id, op) VALUES (NEW.id, 'insert');
    END
    """,
    """
    CREATE TRIGGER documents_log_update AFTER UPDATE OF id, external_id, text, metadata ON documents BEGIN
        INSERT INTO changes (doc_id, op) VALUES (NEW.id, 'update');
        INSERT INTO changes (doc_id, op) SELECT OLD.id, 'delete' WHERE OLD.id <> NEW.id;
        UPDATE documents SET updated_at = CURRENT_TIMESTAMP WHERE id = NEW.id;
    END
    """,
    """
    CREATE TRIGGER documents_log_delete AFTER DELETE ON documents BEGIN
        INSERT INTO changes (doc_id, op) VALUES (OLD.id, 'delete');
    END
    """,
]

POSTGRES_TRIGGERS = [
    """
    CREATE FUNCTION retrieval_log_change() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO changes (doc_id, op) VALUES (OLD.id, 'delete');
            RETURN OLD;
        ELSIF TG_OP = 'INSERT' THEN
            INSERT INTO changes (doc_id, op) VALUES (NEW.id, 'insert');
            RETURN NEW;
        END IF;
        INSERT INTO changes (doc_id, op) VALUES (NEW.id, 'update');
        IF OLD.id <> NEW.id THEN
            INSERT INTO changes (doc_id, op) VALUES (OLD.id, 'delete');
        END IF;
        RETURN NEW;
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER documents_log_change
    AFTER INSERT OR DELETE OR UPDATE OF id, external_id, text, metadata ON documents
    FOR EACH ROW EXECUTE FUNCTION retrieval_log_change()
    """,
]


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("external_id", sa.String(512), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False, server_default=sa.func.current_timestamp()),
        sa.Column("updated_at", sa.DateTime(), nullable=False, server_default=sa.func.current_timestamp()),
        sa.UniqueConstraint("external_id", name="uq_documents_external_id"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "embeddings",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("model_key", sa.String(256), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False, server_default=sa.func.current_timestamp()),
        sa.UniqueConstraint("model_key", "content_hash", name="uq_embeddings_model_hash"),
    )
    op.create_table(
        "changes",
        sa.Column("seq", BigId, primary_key=True),
        sa.Column("doc_id", sa.BigInteger(), nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("changed_at", sa.DateTime(), nullable=False, server_default=sa.func.current_timestamp()),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_changes_doc_id", "changes", ["doc_id"])
    op.create_index("ix_documents_content_hash", "documents", ["content_hash"])

    dialect = op.get_bind().dialect.name
    triggers = {"sqlite": SQLITE_TRIGGERS, "postgresql": POSTGRES_TRIGGERS}.get(dialect)
    if triggers is None:
        raise NotImplementedError(f"no change-log triggers for the {dialect} dialect yet")
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in ("documents_log_insert", "documents_log_update", "documents_log_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS documents_log_change ON documents")
        op.execute("DROP FUNCTION IF EXISTS retrieval_log_change()")
    op.drop_index("ix_documents_content_hash", table_name="documents")
    op.drop_index("ix_changes_doc_id", table_name="changes")
    op.drop_table("changes")
    op.drop_table("embeddings")
    op.drop_table("documents")
