"""the most rated sellers read in order (marketplace.standing), without sorting the table

Revision ID: 0006_reputation_rated_index
Revises: 0005_pvp_leg_receipt_subjects
"""

from alembic import op

revision = '0006_reputation_rated_index'
down_revision = '0005_pvp_leg_receipt_subjects'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_seller_reputation_rated', 'seller_reputation', ['rated'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_seller_reputation_rated', table_name='seller_reputation')
