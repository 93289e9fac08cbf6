"""Numbered SQL migrations, applied in order by ``storage.postgres.migrate``."""
