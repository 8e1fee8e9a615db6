"""relayed copies record the steps that changed them

The names of the steps of ``mailveil.mail.rewrite.STEPS`` that changed a relayed copy, in
order, as a JSON list; NULL for notices and for copies relayed before this revision.

Revision ID: 0009
Revises: 0008
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('outbound_messages', sa.Column('steps', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('outbound_messages') as batch:
        batch.drop_column('steps')
