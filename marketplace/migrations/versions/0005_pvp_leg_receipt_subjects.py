"""receipt subjects of PvP legs: condition:hold_id, longer than an agreement id

Revision ID: 0005_pvp_leg_receipt_subjects
Revises: 0004_reputation_outcomes
"""

import sqlmodel
from alembic import op

revision = '0005_pvp_leg_receipt_subjects'
down_revision = '0004_reputation_outcomes'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('settlement_receipts') as batch:
        batch.alter_column('subject', existing_type=sqlmodel.sql.sqltypes.AutoString(length=64),
                           type_=sqlmodel.sql.sqltypes.AutoString(length=128),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('settlement_receipts') as batch:
        batch.alter_column('subject', existing_type=sqlmodel.sql.sqltypes.AutoString(length=128),
                           type_=sqlmodel.sql.sqltypes.AutoString(length=64),
                           existing_nullable=False)
