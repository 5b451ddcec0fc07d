"""Database layer: models, engine set-up, repository."""
