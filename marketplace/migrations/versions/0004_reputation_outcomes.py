"""reputation outcomes folded after the settlement's commit

Revision ID: 0004_reputation_outcomes
Revises: 8a41f0c6d2e7
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0004_reputation_outcomes'
down_revision = '8a41f0c6d2e7'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reputation_outcomes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True,
              nullable=False),
    sa.Column('seller_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('score_permille', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_reputation_outcomes_seller_id'), 'reputation_outcomes',
                    ['seller_id'], unique=False)


def downgrade() -> None:
    # outcomes not folded yet: add them to their sellers' rows before the table goes
    op.execute(
        "INSERT INTO seller_reputation (seller_id, rated, score_sum) "
        "SELECT DISTINCT seller_id, 0, 0 FROM reputation_outcomes WHERE true "
        "ON CONFLICT DO NOTHING")  # WHERE: SQLite reads ON CONFLICT as a join otherwise
    op.execute(
        "UPDATE seller_reputation SET rated = seller_reputation.rated + s.n, "
        "score_sum = seller_reputation.score_sum + s.total "
        "FROM (SELECT seller_id, count(*) AS n, sum(score_permille) AS total "
        "FROM reputation_outcomes GROUP BY seller_id) AS s "
        "WHERE seller_reputation.seller_id = s.seller_id")
    op.drop_index(op.f('ix_reputation_outcomes_seller_id'), table_name='reputation_outcomes')
    op.drop_table('reputation_outcomes')
