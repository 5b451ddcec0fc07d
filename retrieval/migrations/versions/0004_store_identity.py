"""Store identity and change-log tokens: an index notices a database that moved backwards.

An index records the change-log position it has applied. A database restored from a
backup, or replaced by a copy of another store, can hold fewer changes than that
position, or other changes under the same numbers, and reuses the internal ids the index
holds. Two things let an index tell:

* ``store_info``: a key/value table with ``store_id``, a random identity made with the
  schema (every database gets its own, here), recorded by every index manifest;
* ``changes.token``: 64 random bits per change-log row, filled by the change-log
  triggers (SQLite: ``randomblob``; PostgreSQL: a column default). A manifest records
  the token of the change at its position; a database whose change at that position
  holds another token (or none) has another history, whatever its numbers say.

Rows logged before this revision have no token on SQLite (NULL), random ones on
PostgreSQL (the default fills existing rows).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_TOKEN = "lower(hex(randomblob(8)))"
POSTGRES_TOKEN = "substr(md5(random()::text || clock_timestamp()::text), 1, 16)"


def _sqlite_triggers(token: bool) -> list[str]:
    """Revision 0001's change-log triggers, with (``token``) or without the token."""
    col, val = (", token", f", {SQLITE_TOKEN}") if token else ("", "")
    return [
        f"""
        CREATE TRIGGER documents_log_insert AFTER INSERT ON documents BEGIN
            INSERT INTO changes (doc_id, op{col}) VALUES (NEW.id, 'insert'{val});
        END
        """,
        f"""
        CREATE TRIGGER documents_log_update AFTER UPDATE OF id, external_id, text, metadata ON documents BEGIN
            INSERT INTO changes (doc_id, op{col}) VALUES (NEW.id, 'update'{val});
            INSERT INTO changes (doc_id, op{col}) SELECT OLD.id, 'delete'{val} WHERE OLD.id <> NEW.id;
            UPDATE documents SET updated_at = CURRENT_TIMESTAMP WHERE id = NEW.id;
        END
        """,
        f"""
        CREATE TRIGGER documents_log_delete AFTER DELETE ON documents BEGIN
            INSERT INTO changes (doc_id, op{col}) VALUES (OLD.id, 'delete'{val});
        END
        """,
    ]


TRIGGERS = ("documents_log_insert", "documents_log_update", "documents_log_delete")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    info = op.create_table(
        "store_info",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.bulk_insert(info, [{"key": "store_id", "value": uuid.uuid4().hex}])
    if dialect == "postgresql":
        op.execute(f"ALTER TABLE changes ADD COLUMN token varchar(16) DEFAULT {POSTGRES_TOKEN}")
        return
    op.add_column("changes", sa.Column("token", sa.String(16), nullable=True))
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    for statement in _sqlite_triggers(token=True):
        op.execute(statement)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:  # the triggers name the column: gone before it goes (a batch copies the table)
        for name in TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    with op.batch_alter_table("changes") as batch:
        batch.drop_column("token")
    if sqlite:
        for statement in _sqlite_triggers(token=False):
            op.execute(statement)
    op.drop_table("store_info")
