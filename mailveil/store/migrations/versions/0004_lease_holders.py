"""workers and lease holders: a dead worker's leases are taken back at once

A lease names the worker that holds it; each worker has a row with what tells whether it
still runs (its process on the same machine, a heartbeat from another one).

Revision ID: 0004
Revises: 0003
"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('inbound_messages', 'outbound_messages')


def upgrade() -> None:
    op.create_table(
        'workers',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('machine', sa.String(length=128), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('pid_started', sa.BigInteger(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    for table in TABLES:
        op.add_column(table, sa.Column('lease_holder', sa.String(length=32), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column('lease_holder')
    op.drop_table('workers')
