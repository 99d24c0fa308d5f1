"""approvals indexed for one spender's waiting ones (its cap) and for the approvers' queue

Revision ID: 0009_approvals_indexed
Revises: 0008_totals_rewinds
"""

from alembic import op

revision = '0009_approvals_indexed'
down_revision = '0008_totals_rewinds'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_wallet_approvals_queue', 'wallet_approvals',
                    ['status', 'created_at_ms', 'id'], unique=False)
    op.create_index('ix_wallet_approvals_waiting', 'wallet_approvals',
                    ['account_id', 'spend_scope', 'status', 'expires_at_ms'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_wallet_approvals_waiting', table_name='wallet_approvals')
    op.drop_index('ix_wallet_approvals_queue', table_name='wallet_approvals')
