"""postings sealed after commit: a chain position per posting, and PostgreSQL's posting numbers

Revision ID: 7a41c9e2d5b3
Revises: 2edb9ec73db9

Writers no longer lock the chain head: a posting is numbered at insert (`sequence`; on
PostgreSQL from the sequence `ledger_posting_seq`) and linked into the hash chain later by the
sealer, which gives it its `position`. Every posting written before was sealed as it was
written, at the position equal to its number.
"""

import sqlalchemy as sa
from alembic import op

revision = '7a41c9e2d5b3'
down_revision = '2edb9ec73db9'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ledger_postings') as batch:
        batch.add_column(sa.Column('position', sa.BigInteger(), nullable=True))
    op.execute("UPDATE ledger_postings SET position = sequence")
    op.create_index('ix_ledger_postings_position', 'ledger_postings', ['position'], unique=True)
    op.create_index('ix_ledger_postings_unsealed', 'ledger_postings', ['sequence'],
                    postgresql_where=sa.text('position IS NULL'),
                    sqlite_where=sa.text('position IS NULL'))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("CREATE SEQUENCE ledger_posting_seq AS BIGINT")
        op.execute("SELECT setval('ledger_posting_seq', GREATEST("
                   "(SELECT COALESCE(MAX(sequence), 0) FROM ledger_postings), "
                   "(SELECT COALESCE(MAX(sequence), 0) FROM ledger_head), 0) + 1, false)")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP SEQUENCE ledger_posting_seq")
    op.drop_index('ix_ledger_postings_unsealed', table_name='ledger_postings')
    op.drop_index('ix_ledger_postings_position', table_name='ledger_postings')
    with op.batch_alter_table('ledger_postings') as batch:
        batch.drop_column('position')
