"""raw messages stored as received, not zlib-compressed

zlib level 1 cost ~45 ms of CPU per MB per copy, twice per message, to save ~23 % on the
base64 attachments that make up most of mail's bytes; PostgreSQL compresses large values
itself (TOAST), in C, where it pays off. Rows written before are decompressed here.

Revision ID: 0002
Revises: 0001
"""
from collections.abc import Callable, Sequence
import zlib

from alembic import op
import sqlalchemy as sa

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
contract = ("a format change, not a schema change: the previous version decompresses every "
            "raw value, so it cannot run beside this one; stop all processes to cross it")

TABLES = ('inbound_messages', 'outbound_messages', 'quarantine')
BATCH = 200


def upgrade() -> None:
    _rewrite_raw(zlib.decompress)


def downgrade() -> None:
    _rewrite_raw(lambda raw: zlib.compress(raw, 1))


def _rewrite_raw(transform: Callable[[bytes], bytes]) -> None:
    """Apply ``transform`` to every stored message, a batch in memory at a time."""
    conn = op.get_bind()
    for name in TABLES:
        table = sa.table(name, sa.column('id', sa.Integer), sa.column('raw', sa.LargeBinary))
        last = 0
        while rows := conn.execute(sa.select(table.c.id, table.c.raw).where(table.c.id > last)
                                   .order_by(table.c.id).limit(BATCH)).all():
            for row_id, raw in rows:
                conn.execute(sa.update(table).where(table.c.id == row_id)
                             .values(raw=transform(raw)))
            last = rows[-1][0]
