"""a plain posting in one call on PostgreSQL: the function ledger_post_plain

Revision ID: 3c8f1b6d9e20
Revises: 7a41c9e2d5b3

A transfer between accounts with no spend controls on its debited wallets is, on PostgreSQL,
one call of this function in a transaction of its own (`wallets._pg_hot`): it locks the
accounts in id order, records the idempotency key, applies the legs with the conditional
balance UPDATE, and inserts the posting (unsealed) and its entries. Whatever it does not
handle (a missing account, mixed currencies, a control row, too little money, a key already
used) it leaves untouched and answers NULL, and the general path runs instead. Nothing on
SQLite.
"""

from alembic import op

revision = '3c8f1b6d9e20'
down_revision = '7a41c9e2d5b3'
branch_labels = None
depends_on = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION ledger_post_plain(
    p_scope text, p_operation text, p_key text, p_digest text,
    p_accounts text[], p_deltas bigint[], p_kind text, p_memo text, p_created_at_ms bigint,
    p_trace_id text, p_span_id text, OUT o_sequence bigint, OUT o_currency text)
LANGUAGE plpgsql
-- Every statement finds its rows by key: plan each once per session, and never as a scan
-- of the accounts table, whose few hot rows leave many versions behind under load.
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    n integer := cardinality(p_accounts);
    locked integer := 0;
    d bigint;
    acc record;
    legs jsonb := '[]';
BEGIN
    -- the same row locks, in the same order, as the general path takes
    FOR acc IN SELECT a.id, a.currency, a.kind, a.posted_credits_atomic - a.posted_debits_atomic
                      - a.pending_debits_atomic + a.credit_limit_atomic AS spendable
                 FROM ledger_accounts a WHERE a.id = ANY(p_accounts) ORDER BY a.id FOR UPDATE
    LOOP
        locked := locked + 1;
        d := p_deltas[array_position(p_accounts, acc.id)];
        IF o_currency IS NULL THEN
            o_currency := acc.currency;
        ELSIF acc.currency <> o_currency THEN
            o_currency := NULL;
            RETURN;
        END IF;
        IF d < 0 AND (acc.spendable + d < 0 OR acc.kind = 'wallet' AND EXISTS (
                SELECT 1 FROM wallet_policies p WHERE p.account_id = acc.id)) THEN
            o_currency := NULL;
            RETURN;
        END IF;
    END LOOP;
    IF locked <> n THEN
        o_currency := NULL;
        RETURN;
    END IF;
    o_sequence := nextval('ledger_posting_seq');
    FOR i IN 1..n LOOP
        legs := legs || jsonb_build_object(
            'account_id', p_accounts[i], 'currency', o_currency, 'posted_atomic', p_deltas[i],
            'pending_debit_atomic', 0, 'pending_credit_atomic', 0);
    END LOOP;
    INSERT INTO idempotency_keys (scope, key, operation, request_digest, outcome, result_json,
                                  created_at_ms)
    VALUES (p_scope, p_key, p_operation, p_digest, 'ok', jsonb_build_object(
        'sequence', o_sequence, 'idempotency_key', p_key, 'kind', p_kind,
        'created_at_ms', p_created_at_ms, 'hold_id', '', 'memo', p_memo,
        'trace_id', p_trace_id, 'span_id', p_span_id, 'hash', '', 'legs', legs)::text,
        p_created_at_ms)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN  -- the key is taken: the general path replays its outcome
        o_sequence := NULL;
        o_currency := NULL;
        RETURN;
    END IF;
    -- the balance guard itself: no leg takes its account below its limit or past int64
    FOR i IN 1..n LOOP
        d := p_deltas[i];
        UPDATE ledger_accounts a
           SET posted_credits_atomic = a.posted_credits_atomic + greatest(d, 0),
               posted_debits_atomic = a.posted_debits_atomic + greatest(-d, 0)
         WHERE a.id = p_accounts[i] AND a.currency = o_currency
           AND (d >= 0 OR a.posted_credits_atomic - a.posted_debits_atomic + d
                          - a.pending_debits_atomic + a.credit_limit_atomic >= 0)
           AND a.posted_credits_atomic <= 9223372036854775807 - greatest(d, 0)
           AND a.posted_debits_atomic <= 9223372036854775807 - greatest(-d, 0);
        IF NOT FOUND THEN  -- undo the key and any leg: the general path says why
            RAISE EXCEPTION 'ledger_post_plain: a leg was refused' USING ERRCODE = 'AM001';
        END IF;
    END LOOP;
    INSERT INTO ledger_postings (sequence, idempotency_key, kind, hold_id, created_at_ms,
                                 trace_id, span_id, memo, prev_hash, hash)
    VALUES (o_sequence, p_key, p_kind, '', p_created_at_ms, p_trace_id, p_span_id, p_memo,
            '', '');
    INSERT INTO ledger_entries (sequence, account_id, currency, posted_atomic,
                                pending_debit_atomic, pending_credit_atomic)
    SELECT o_sequence, l.id, o_currency, l.delta, 0, 0
      FROM unnest(p_accounts, p_deltas) WITH ORDINALITY AS l(id, delta, ord) ORDER BY l.ord;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP FUNCTION ledger_post_plain(text, text, text, text, text[], bigint[], "
                   "text, text, bigint, text, text)")
