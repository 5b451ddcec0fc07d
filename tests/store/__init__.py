"""The database: migrations, keyword indexes, snippets, concurrent writers, PostgreSQL-only behaviour."""
