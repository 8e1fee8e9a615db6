"""care console: agents, their one-time links, and an append-only audit log

The audit log refuses UPDATE and DELETE in the database itself, so no code path, present or
future, can rewrite what an agent did.

Revision ID: 0013
Revises: 0012
"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_FUNCTION = """
CREATE FUNCTION care_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'care_audit is append-only';
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        'care_agents',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('removed_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('email'))
    op.create_table(
        'care_links',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('agent_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['agent_id'], ['care_agents.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_hash'))
    op.create_index('ix_care_links_agent_id', 'care_links', ['agent_id'])
    op.create_table(
        'care_audit',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('agent_id', sa.Integer(), nullable=True),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['agent_id'], ['care_agents.id']),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_care_audit_agent_id', 'care_audit', ['agent_id'])
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(PG_FUNCTION)
        op.execute('CREATE TRIGGER care_audit_append_only BEFORE UPDATE OR DELETE ON care_audit '
                   'FOR EACH ROW EXECUTE FUNCTION care_audit_append_only()')
    else:
        for event in ('UPDATE', 'DELETE'):
            op.execute(f'CREATE TRIGGER care_audit_no_{event.lower()} BEFORE {event} '
                       "ON care_audit BEGIN SELECT RAISE(ABORT, 'care_audit is append-only'); "
                       'END')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP TRIGGER care_audit_append_only ON care_audit')
        op.execute('DROP FUNCTION care_audit_append_only()')
    op.drop_index('ix_care_audit_agent_id', table_name='care_audit')
    op.drop_table('care_audit')
    op.drop_index('ix_care_links_agent_id', table_name='care_links')
    op.drop_table('care_links')
    op.drop_table('care_agents')
