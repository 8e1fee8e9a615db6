"""review requests flagged for care (expand only: a new table)

Revision ID: 0015
Revises: 0014
"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'review_flags',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('inbound_id', sa.Integer(), nullable=False),
        sa.Column('booking_id', sa.Integer(), nullable=False),
        sa.Column('held', sa.Boolean(), nullable=False),
        sa.Column('found', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['inbound_id'], ['inbound_messages.id']),
        sa.ForeignKeyConstraint(['booking_id'], ['bookings.id']),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_review_flags_inbound_id', 'review_flags', ['inbound_id'])
    op.create_index('ix_review_flags_booking_id', 'review_flags', ['booking_id'])


def downgrade() -> None:
    op.drop_index('ix_review_flags_booking_id', table_name='review_flags')
    op.drop_index('ix_review_flags_inbound_id', table_name='review_flags')
    op.drop_table('review_flags')
