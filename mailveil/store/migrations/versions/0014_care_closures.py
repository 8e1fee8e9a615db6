"""care queues: an item closed by an agent, with their note

Revision ID: 0014
Revises: 0013
"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'care_closures',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('item_id', sa.Integer(), nullable=False),
        sa.Column('agent_id', sa.Integer(), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('closed_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['agent_id'], ['care_agents.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('kind', 'item_id'))


def downgrade() -> None:
    op.drop_table('care_closures')
