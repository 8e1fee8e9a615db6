"""supplier portal: one-time sign-in links, cancellation requests, bookings by supplier and date

Revision ID: 0008
Revises: 0007
"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'portal_links',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('supplier_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['supplier_id'], ['suppliers.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_hash'))
    op.create_index('ix_portal_links_supplier_id', 'portal_links', ['supplier_id'])
    op.create_table(
        'cancellation_requests',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('booking_id', sa.Integer(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('answer_by', sa.DateTime(timezone=True), nullable=False),
        sa.Column('answered_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['booking_id'], ['bookings.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_hash'))
    op.create_index('ix_cancellation_requests_booking_id', 'cancellation_requests',
                    ['booking_id'])
    op.create_index('ix_bookings_supplier_start', 'bookings',
                    ['supplier_id', 'activity_start', 'id'])


def downgrade() -> None:
    op.drop_index('ix_bookings_supplier_start', table_name='bookings')
    op.drop_index('ix_cancellation_requests_booking_id', table_name='cancellation_requests')
    op.drop_table('cancellation_requests')
    op.drop_index('ix_portal_links_supplier_id', table_name='portal_links')
    op.drop_table('portal_links')
