"""accounts count the units rewound off both posted totals (wallets._totals)

Revision ID: 0008_totals_rewinds
Revises: 0007_account_credits
"""

import sqlalchemy as sa
from alembic import op

revision = '0008_totals_rewinds'
down_revision = '0007_account_credits'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ledger_accounts') as batch:
        batch.add_column(sa.Column('totals_rewinds', sa.BigInteger(), nullable=False,
                                   server_default=sa.text('0')))


def downgrade() -> None:
    # an account's lifetime totals may pass int64 once rewound: only a ledger none was can go
    rewound = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM ledger_accounts WHERE totals_rewinds > 0")).scalar()
    if rewound:
        raise RuntimeError(f"{rewound} account(s) had their running totals rewound; their "
                           "totals do not fit the older schema")
    with op.batch_alter_table('ledger_accounts') as batch:
        batch.drop_column('totals_rewinds')
