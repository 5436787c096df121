"""State database: models, engine set-up and migrations."""
