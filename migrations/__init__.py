"""The Alembic revisions of the curation database (installed as `selectit.migrations`)."""
