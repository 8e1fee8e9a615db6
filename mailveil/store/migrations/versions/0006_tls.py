"""inbound messages and delivery attempts record their TLS version

The version of the session a message came in over (STARTTLS), and of the connection a
delivery attempt used; NULL is clear text. Before this revision nothing was encrypted
either way, so NULL is true of every older row.

Revision ID: 0006
Revises: 0005
"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('inbound_messages', sa.Column('tls_version', sa.String(length=16),
                                                nullable=True))
    op.add_column('delivery_attempts', sa.Column('tls_version', sa.String(length=16),
                                                 nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('delivery_attempts') as batch:
        batch.drop_column('tls_version')
    with op.batch_alter_table('inbound_messages') as batch:
        batch.drop_column('tls_version')
