"""idempotency keys scoped to the caller

Revision ID: 8c2f4d1e6a90
Revises: 3b327f7029d4

A key names a request only within (scope, operation) (`wallets._idempotency`):

- idempotency_keys: primary key (scope, operation, key). Rows written before are given the
  scope they can be proven to have: the node's own sweep keys (their prefixes were refused from
  callers) go to "node", without their recorded failures (the node does not record its own:
  its sweeps try again); every other row goes to "legacy", which lookups read as a fallback,
  so a request made before the upgrade still gets its first outcome.
- wallet_approvals: an approval belongs to (wallet, spend_scope, spend_key). The scope of an
  existing approval is its spender: the delegate it names, else the wallet's owner when that is
  an agent key (64 characters), else "anonymous" (in-process spends).
- rail_withdrawals: unique per (scope, idempotency_key); `reference` (unique) is what the rail
  is told. Existing rows keep their key as their reference: a payout sent before the upgrade
  is sent again (by a sweep that crashed half-way) under the same reference.
- rail_deposits: a wallet is credited once per (rail, reference), whoever asks.

SQLite cannot change a primary key or drop an unnamed constraint in place, so there the three
tables are rebuilt (create, copy, drop, rename); PostgreSQL alters them.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision = '8c2f4d1e6a90'
down_revision = '3b327f7029d4'
branch_labels = None
depends_on = None

NODE_KEYS = ("auto-release:", "expire-agreement:", "settle-withdrawal:", "withdrawal-paid:")
_NODE_ROW = "(" + " OR ".join(f"key LIKE '{prefix}%'" for prefix in NODE_KEYS) + ")"
_APPROVAL_SCOPE = (
    "CASE WHEN spender_id <> '' THEN spender_id "
    "ELSE COALESCE((SELECT CASE WHEN length(a.owner) = 64 THEN a.owner END "
    "FROM ledger_accounts a WHERE a.id = wallet_approvals.account_id), 'anonymous') END")


def _text(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _keys_columns() -> list[sa.Column]:
    return [
        sa.Column('scope', _text(80), nullable=False),
        sa.Column('operation', _text(64), nullable=False),
        sa.Column('key', _text(200), nullable=False),
        sa.Column('request_digest', _text(64), nullable=False),
        sa.Column('outcome', _text(8), nullable=False),
        sa.Column('result_json', sa.Text(), nullable=False),
        sa.Column('created_at_ms', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('scope', 'operation', 'key'),
    ]


def _approvals_columns() -> list[sa.Column]:
    return [
        sa.Column('id', _text(32), nullable=False),
        sa.Column('account_id', _text(40), nullable=False),
        sa.Column('currency', _text(8), nullable=False),
        sa.Column('counterparty', _text(512), nullable=False),
        sa.Column('skill', _text(128), nullable=False),
        sa.Column('amount_atomic', sa.BigInteger(), nullable=False),
        sa.Column('spend_key', _text(200), nullable=False),
        sa.Column('spend_scope', _text(80), nullable=False),
        sa.Column('operation', _text(64), nullable=False),
        sa.Column('mandate_id', _text(64), nullable=False),
        sa.Column('spender_id', _text(128), nullable=False),
        sa.Column('status', _text(16), nullable=False),
        sa.Column('created_at_ms', sa.BigInteger(), nullable=False),
        sa.Column('expires_at_ms', sa.BigInteger(), nullable=False),
        sa.Column('decided_by', _text(128), nullable=False),
        sa.Column('decided_at_ms', sa.BigInteger(), nullable=False),
        sa.Column('note', _text(512), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('account_id', 'spend_scope', 'spend_key'),
    ]


def _withdrawals_columns() -> list[sa.Column]:
    return [
        sa.Column('hold_id', _text(40), nullable=False),
        sa.Column('scope', _text(80), nullable=False),
        sa.Column('idempotency_key', _text(200), nullable=False),
        sa.Column('reference', _text(200), nullable=False),
        sa.Column('rail', _text(64), nullable=False),
        sa.Column('account_id', _text(40), nullable=False),
        sa.Column('currency', _text(8), nullable=False),
        sa.Column('amount_atomic', sa.BigInteger(), nullable=False),
        sa.Column('due_at_ms', sa.BigInteger(), nullable=False),
        sa.Column('status', _text(16), nullable=False),
        sa.Column('created_at_ms', sa.BigInteger(), nullable=False),
        sa.Column('settled_at_ms', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('hold_id'),
        sa.UniqueConstraint('reference'),
        sa.UniqueConstraint('scope', 'idempotency_key'),
    ]


def _rebuild(table: str, columns: list[sa.Column], select: str,
             indexes: dict[str, list[str]]) -> None:
    """SQLite: replace `table` by one with `columns`, filled by `select` (in column order)."""
    names = ", ".join(c.name for c in columns if isinstance(c, sa.Column))
    op.create_table(f'{table}_v2', *columns)
    op.execute(f"INSERT INTO {table}_v2 ({names}) {select}")
    op.drop_table(table)  # its indexes go with it
    op.rename_table(f'{table}_v2', table)
    for name, on in indexes.items():
        op.create_index(name, table, on, unique=False)


def _unique_constraints(table: str) -> list[str]:
    """PostgreSQL: the names of a table's unique constraints."""
    rows = op.get_bind().execute(sa.text(
        "SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
        "AND contype = 'u'"), {"t": table})
    return [row[0] for row in rows]


def _upgrade_sqlite() -> None:
    _rebuild('idempotency_keys', _keys_columns(),
             f"SELECT CASE WHEN {_NODE_ROW} THEN 'node' ELSE 'legacy' END, operation, key, "
             "request_digest, outcome, result_json, created_at_ms FROM idempotency_keys "
             f"WHERE NOT ({_NODE_ROW} AND outcome = 'error')", {})
    _rebuild('wallet_approvals', _approvals_columns(),
             "SELECT id, account_id, currency, counterparty, skill, amount_atomic, spend_key, "
             f"{_APPROVAL_SCOPE}, operation, mandate_id, spender_id, status, created_at_ms, "
             "expires_at_ms, decided_by, decided_at_ms, note FROM wallet_approvals",
             {'ix_wallet_approvals_account_id': ['account_id'],
              'ix_wallet_approvals_status': ['status']})
    _rebuild('rail_withdrawals', _withdrawals_columns(),
             "SELECT hold_id, 'legacy', idempotency_key, idempotency_key, rail, account_id, "
             "currency, amount_atomic, due_at_ms, status, created_at_ms, settled_at_ms "
             "FROM rail_withdrawals",
             {'ix_rail_withdrawals_account_id': ['account_id'],
              'ix_rail_withdrawals_due_at_ms': ['due_at_ms'],
              'ix_rail_withdrawals_status': ['status']})


def _upgrade_postgresql() -> None:
    op.add_column('idempotency_keys', sa.Column('scope', _text(80), nullable=False,
                                                server_default='legacy'))
    op.execute(f"DELETE FROM idempotency_keys WHERE {_NODE_ROW} AND outcome = 'error'")
    op.execute(f"UPDATE idempotency_keys SET scope = 'node' WHERE {_NODE_ROW}")
    op.alter_column('idempotency_keys', 'scope', server_default=None)
    op.drop_constraint('idempotency_keys_pkey', 'idempotency_keys', type_='primary')
    op.create_primary_key('idempotency_keys_pkey', 'idempotency_keys',
                          ['scope', 'operation', 'key'])

    op.add_column('wallet_approvals', sa.Column('spend_scope', _text(80), nullable=False,
                                                server_default='anonymous'))
    op.execute(f"UPDATE wallet_approvals SET spend_scope = {_APPROVAL_SCOPE}")
    op.alter_column('wallet_approvals', 'spend_scope', server_default=None)
    for name in _unique_constraints('wallet_approvals'):
        op.drop_constraint(name, 'wallet_approvals', type_='unique')
    op.create_unique_constraint('wallet_approvals_account_id_spend_scope_spend_key_key',
                                'wallet_approvals', ['account_id', 'spend_scope', 'spend_key'])

    op.add_column('rail_withdrawals', sa.Column('scope', _text(80), nullable=False,
                                                server_default='legacy'))
    op.add_column('rail_withdrawals', sa.Column('reference', _text(200), nullable=True))
    op.execute("UPDATE rail_withdrawals SET reference = idempotency_key")
    op.alter_column('rail_withdrawals', 'scope', server_default=None)
    op.alter_column('rail_withdrawals', 'reference', nullable=False)
    for name in _unique_constraints('rail_withdrawals'):
        op.drop_constraint(name, 'rail_withdrawals', type_='unique')
    op.create_unique_constraint('rail_withdrawals_reference_key', 'rail_withdrawals',
                                ['reference'])
    op.create_unique_constraint('rail_withdrawals_scope_idempotency_key_key',
                                'rail_withdrawals', ['scope', 'idempotency_key'])


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        _upgrade_sqlite()
    else:
        _upgrade_postgresql()
    op.create_table('rail_deposits',
    sa.Column('rail', _text(64), nullable=False),
    sa.Column('account_id', _text(40), nullable=False),
    sa.Column('reference', _text(200), nullable=False),
    sa.Column('scope', _text(80), nullable=False),
    sa.Column('amount_atomic', sa.BigInteger(), nullable=False),
    sa.Column('created_at_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('rail', 'account_id', 'reference')
    )


def downgrade() -> None:
    raise NotImplementedError("scoped idempotency keys cannot be merged back into one "
                              "namespace: two callers may now hold the same key")
