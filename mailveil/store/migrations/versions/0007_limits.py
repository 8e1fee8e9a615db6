"""counters shared by the listeners for the limits per client address and per sender

Revision ID: 0007
Revises: 0006
"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'limit_counts',
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('bucket', sa.BigInteger(), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('kind', 'key', 'bucket'))
    op.create_index('ix_limit_counts_bucket', 'limit_counts', ['kind', 'bucket'])
    op.create_table(
        'limit_sessions',
        sa.Column('listener', sa.String(length=32), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('active', sa.Integer(), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('listener', 'key'))
    op.create_table(
        'limit_cooldowns',
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('until', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('key'))


def downgrade() -> None:
    op.drop_table('limit_cooldowns')
    op.drop_table('limit_sessions')
    op.drop_index('ix_limit_counts_bucket', table_name='limit_counts')
    op.drop_table('limit_counts')
