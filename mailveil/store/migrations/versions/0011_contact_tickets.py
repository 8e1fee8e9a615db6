"""contact tickets left on the portal's contact form

Revision ID: 0011
Revises: 0010
"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'contact_tickets',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('booking_id', sa.Integer(), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['booking_id'], ['bookings.id']),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_contact_tickets_booking_id', 'contact_tickets', ['booking_id'])


def downgrade() -> None:
    op.drop_index('ix_contact_tickets_booking_id', table_name='contact_tickets')
    op.drop_table('contact_tickets')
