"""Storage backends: PostgreSQL, Redis, object storage and their embedded servers."""
