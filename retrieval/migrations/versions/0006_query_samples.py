"""Query samples: a bounded sample of recent query vectors, per model.

The index's recall guard measures an approximate segment against exact search when it
is built. Real queries make a truer sample than queries made from the segment's own
vectors, so searches record their query vectors here (``search.query_sample`` of the
newest per model are kept; 0 records none) and the guard calibrates with them. The
query's text is kept beside its vector only with ``search.log_queries``; otherwise
``text`` is NULL. ``vector`` is float32, little-endian, as in ``embeddings``.

The newest rows of a model are read and trimmed through ``(model_key, id)``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Revision 0003's types: timestamptz on PostgreSQL, UTC text on SQLite; an id that
    # SQLite never reuses (AUTOINCREMENT), so "newest" is "highest id" after trims too.
    stamp = sa.DateTime().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")
    op.create_table(
        "query_samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("model_key", sa.String(256), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("created_at", stamp, nullable=False, server_default=sa.func.current_timestamp()),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_query_samples_model_id", "query_samples", ["model_key", "id"])


def downgrade() -> None:
    op.drop_index("ix_query_samples_model_id", table_name="query_samples")
    op.drop_table("query_samples")
