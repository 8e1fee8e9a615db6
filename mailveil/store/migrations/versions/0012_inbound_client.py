"""inbound messages record the client they came from

The address and HELO name of the client that sent the message: what a trusted peer
(Postfix, XFORWARD) forwarded, else the TCP peer. Older rows did not record it: NULL.
Both are personal data and go with the raw bytes (retention's body_days).

Revision ID: 0012
Revises: 0011
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('inbound_messages', sa.Column('client_address', sa.String(length=64),
                                                nullable=True))
    op.add_column('inbound_messages', sa.Column('client_helo', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('inbound_messages') as batch:
        batch.drop_column('client_helo')
        batch.drop_column('client_address')
