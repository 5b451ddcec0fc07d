"""Passages: where each passage of a long document lies, and which vectors it uses.

A document longer than the model's window is split into passages, each embedded on its
own (one index row per passage). ``passages`` records, per document and splitter
(tokenizer and lengths), each passage's ordinal, character offsets and content hash,
and the document's content hash when it was split (``source_hash``). Hits show their
best passage from it, and garbage collection keeps the vectors it names. A document that
is one passage has no rows: its vector is its text's, as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "passages",
        sa.Column("doc_id", sa.BigInteger(), nullable=False),
        sa.Column("splitter", sa.String(256), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("start_char", sa.Integer(), nullable=False),
        sa.Column("end_char", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("source_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("doc_id", "splitter", "ordinal"),
    )
    op.create_index("ix_passages_content_hash", "passages", ["content_hash"])


def downgrade() -> None:
    op.drop_index("ix_passages_content_hash", table_name="passages")
    op.drop_table("passages")
