"""Console users, their sessions, roles and API tokens (see docs/auth.md)."""
