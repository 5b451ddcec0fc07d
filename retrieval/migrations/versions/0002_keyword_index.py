"""Keyword index: an SQLite FTS5 table over documents.text, kept in step by triggers.

``documents_fts`` is an external-content FTS5 table: it stores only the index, and reads
the text back from ``documents`` (rowid = ``documents.id``). Triggers on ``documents``
update it in the writing transaction itself, so the index cannot go stale, whichever
program writes (this service, the ``sqlite3`` shell, another application).

* insert: index the new text. If the index still holds entries for the new id (the old
  row was removed by ``INSERT OR REPLACE``, which fires no delete trigger while
  ``recursive_triggers`` is off), those entries cannot be removed without the old text:
  the index is rebuilt from ``documents`` instead, which also indexes the new row.
* delete: the FTS5 'delete' command with the old text.
* update of id or text: 'delete' the old entry, index the new one. Only these columns
  fire it: revision 0001's log trigger runs ``UPDATE documents SET updated_at = ...``,
  which must not index the row a second time.

Existing documents are indexed by the 'rebuild' command.

On PostgreSQL this revision does nothing: revision 0003 adds a generated tsvector column
and a GIN index there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_TABLE = """
    CREATE VIRTUAL TABLE documents_fts USING fts5(
        text,
        content='documents',
        content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2'
    )
"""

SQLITE_TRIGGERS = {
    "documents_fts_insert": """
    CREATE TRIGGER documents_fts_insert AFTER INSERT ON documents BEGIN
        INSERT INTO documents_fts (documents_fts)
            SELECT 'rebuild' WHERE EXISTS (SELECT 1 FROM documents_fts_docsize WHERE id = NEW.id);
        INSERT INTO documents_fts (rowid, text)
            SELECT NEW.id, NEW.text WHERE NOT EXISTS (SELECT 1 FROM documents_fts_docsize WHERE id = NEW.id);
    END
    """,
    "documents_fts_delete": """
    CREATE TRIGGER documents_fts_delete AFTER DELETE ON documents BEGIN
        INSERT INTO documents_fts (documents_fts, rowid, text) VALUES ('delete', OLD.id, OLD.text);
    END
    """,
    "documents_fts_update": """
    CREATE TRIGGER documents_fts_update AFTER UPDATE OF id, text ON documents BEGIN
        INSERT INTO documents_fts (documents_fts, rowid, text) VALUES ('delete', OLD.id, OLD.text);
        INSERT INTO documents_fts (rowid, text) VALUES (NEW.id, NEW.text);
    END
    """,
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(SQLITE_TABLE)
        for statement in SQLITE_TRIGGERS.values():
            op.execute(statement)
        op.execute("INSERT INTO documents_fts (documents_fts) VALUES ('rebuild')")
    elif dialect == "postgresql":
        # Nothing: revision 0003 adds a generated tsvector column with a GIN index.
        pass


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS documents_fts")
    elif dialect == "postgresql":
        pass  # see upgrade()
