"""Types, settings, errors, input checks and review rules every layer shares."""
