"""raw columns stored out of line without pglz on PostgreSQL

PostgreSQL compresses large values with pglz by default; on base64 attachments (most of
mail's bytes) it spent ~35 ms of the server's CPU per MB for little gain. EXTERNAL keeps
them out of line (TOAST) and uncompressed. SQLite has no such setting.

Revision ID: 0003
Revises: 0002
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('inbound_messages', 'outbound_messages', 'quarantine')


def upgrade() -> None:
    _set_storage('EXTERNAL')


def downgrade() -> None:
    _set_storage('EXTENDED')


def _set_storage(storage: str) -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table in TABLES:
        op.execute(f'ALTER TABLE {table} ALTER COLUMN raw SET STORAGE {storage}')
