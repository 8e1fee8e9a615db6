"""inbound messages keep what SPF, DKIM and DMARC proved of their sender

"verified", "unverified" (relayed with a warning to the recipient) or "not checked" (the
null sender); messages stored before were not recorded, and count as "not checked".

Revision ID: 0005
Revises: 0004
"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('inbound_messages', sa.Column('sender_check', sa.String(length=16),
                                                nullable=False, server_default='not checked'))


def downgrade() -> None:
    with op.batch_alter_table('inbound_messages') as batch:
        batch.drop_column('sender_check')
