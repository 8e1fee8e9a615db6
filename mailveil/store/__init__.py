"""Persistence: SQLAlchemy models, migrations and the repositories the rest of the code uses."""
