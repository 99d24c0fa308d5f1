"""credits appended and folded into their accounts after the commit

Revision ID: 0007_account_credits
Revises: 3c8f1b6d9e20
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0007_account_credits'
down_revision = '3c8f1b6d9e20'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ledger_account_credits',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True,
              nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('posted_credits_atomic', sa.BigInteger(), nullable=False),
    sa.Column('pending_credits_atomic', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_ledger_account_credits_account_id'), 'ledger_account_credits',
                    ['account_id'], unique=False)


def downgrade() -> None:
    # the credits not folded yet are money: add them to their accounts before the table goes
    op.execute(
        "UPDATE ledger_accounts SET "
        "posted_credits_atomic = ledger_accounts.posted_credits_atomic + s.posted, "
        "pending_credits_atomic = ledger_accounts.pending_credits_atomic + s.pending "
        "FROM (SELECT account_id, sum(posted_credits_atomic) AS posted, "
        "sum(pending_credits_atomic) AS pending FROM ledger_account_credits "
        "GROUP BY account_id) AS s WHERE ledger_accounts.id = s.account_id")
    op.drop_index(op.f('ix_ledger_account_credits_account_id'),
                  table_name='ledger_account_credits')
    op.drop_table('ledger_account_credits')
