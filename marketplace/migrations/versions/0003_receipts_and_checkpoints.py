"""signed settlement receipts and ledger checkpoints

Revision ID: 8a41f0c6d2e7
Revises: 0002_operator_actions
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '8a41f0c6d2e7'
down_revision = '0002_operator_actions'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ledger_checkpoints',
    sa.Column('sequence', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('first_sequence', sa.BigInteger(), nullable=False),
    sa.Column('node', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('body_json', sa.Text(), nullable=False),
    sa.Column('signature', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('signed_at_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('sequence')
    )
    op.create_table('settlement_receipts',
    sa.Column('receipt_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('last_sequence', sa.BigInteger(), nullable=False),
    sa.Column('body_json', sa.Text(), nullable=False),
    sa.Column('signature', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('issued_at_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('receipt_id')
    )
    op.create_index(op.f('ix_settlement_receipts_subject'), 'settlement_receipts', ['subject'], unique=False)
    op.create_index(op.f('ix_settlement_receipts_last_sequence'), 'settlement_receipts', ['last_sequence'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_settlement_receipts_last_sequence'), table_name='settlement_receipts')
    op.drop_index(op.f('ix_settlement_receipts_subject'), table_name='settlement_receipts')
    op.drop_table('settlement_receipts')
    op.drop_table('ledger_checkpoints')
