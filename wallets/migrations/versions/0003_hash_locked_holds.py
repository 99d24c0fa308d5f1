"""hash-locked holds: a SHA-256 condition and its fulfilment on each hold

Revision ID: 5e0c1d2a7b94
Revises: 8c2f4d1e6a90
"""

import sqlalchemy as sa
from alembic import op

revision = '5e0c1d2a7b94'
down_revision = '8c2f4d1e6a90'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ledger_holds') as batch:
        batch.add_column(sa.Column('condition_sha256', sa.String(length=64), nullable=False,
                                   server_default=''))
        batch.add_column(sa.Column('fulfilment', sa.String(length=64), nullable=False,
                                   server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('ledger_holds') as batch:
        batch.drop_column('fulfilment')
        batch.drop_column('condition_sha256')
