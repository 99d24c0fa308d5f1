"""Payouts of the USDC rail (`UsdcRail.withdraw`): each one signed with its debit, sent once.

Payouts (`withdraw`). In one ledger transaction: the wallet is debited (its policy applies), the
amount rounded down to the token's 6 decimals (the rest stays in the wallet), the next nonce of
the rail's hot wallet reserved, and the token transfer to the destination built and signed;
the posting's memo names the destination and the transaction's hash, and the signed
transaction is stored. Then it is broadcast; `resend_pending` (the sweeper) broadcasts again
whatever is not yet mined, the very same bytes, so a crash between debit and broadcast, or a
payout dropped by a reorganisation, pays exactly once: one nonce can be mined only once.
Idempotent under the withdrawal's key like every money path (the payout is stored under
`payout_reference(caller, key)`, so two agents' equal keys are two payouts). A payout mined but
reverted (the hot wallet short of tokens) moved nothing: once confirmed, the wallet is credited
back (a `deposit` posting naming the transaction).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection, insert, select, update
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import TransactionNotFound

from wallets import _idempotency
from wallets.caller import NODE_SCOPE
from wallets.currencies import check_amount
from wallets.errors import InvalidAmount, InvalidArgument
from wallets.evm.addresses import checked_address
from wallets.evm.chain import ATOMIC_PER_UNIT
from wallets.guard import SpendContext
from wallets.ledger import Ledger
from wallets.models import Posting, Transfer
from wallets.rails import payout_reference
from wallets.tables import EvmRailStateRow, EvmWithdrawalRow

WITHDRAWALS = EvmWithdrawalRow.__table__  # type: ignore[attr-defined]
STATE = EvmRailStateRow.__table__  # type: ignore[attr-defined]
TRANSFER_GAS = 100_000
FINAL = ("confirmed", "reverted")  # payout states resend_pending leaves alone
log = logging.getLogger("agentmarket.wallets.evm")


class Payouts:
    """The payout half of `UsdcRail` (which provides the attributes and helpers below)."""

    ledger: Ledger
    token: Contract
    w3: Web3
    hot_wallet: Any
    address: str
    name: str
    confirmations: int
    rail_account: str
    chain_id: int

    def _state(self) -> tuple[int, int]:
        raise NotImplementedError

    def _on_chain(self, read: Any) -> Any:
        raise NotImplementedError

    def _usdc_wallet(self, account_id: str) -> Any:
        raise NotImplementedError

    def withdraw(self, key: str, account_id: str, amount_atomic: int,
                 to_address: str) -> Posting:
        """Pay out to `to_address`, rounded down to 6 decimals; the posting's memo carries the
        transaction hash. Idempotent under `key`."""
        check_amount(amount_atomic)
        to_address = checked_address(to_address, "destination")
        if to_address.lower() == self.address.lower():
            raise InvalidArgument(f"{to_address} is the rail's own address: a payout there "
                                  "would come back as an unclaimed deposit")
        self._usdc_wallet(account_id)
        units = amount_atomic // ATOMIC_PER_UNIT
        if units == 0:
            raise InvalidAmount(f"{amount_atomic} atomic USDC is below one token unit "
                                f"({ATOMIC_PER_UNIT} atomic)")
        self._on_chain(self._state)  # the nonce counter exists before the transaction
        # the payout's row is named by (caller, key): keys are per caller, so another agent's
        # withdrawal under the same key is another payout, never a collision
        reference = payout_reference(_idempotency.request_scope(), key)
        chain_id = self.chain_id
        base_fee = int(self._on_chain(lambda: self.w3.eth.get_block("latest"))
                       .get("baseFeePerGas", 0))
        fees = {"maxPriorityFeePerGas": 10**9, "maxFeePerGas": 3 * base_fee + 10**9}

        def apply(conn: Connection) -> Posting:
            nonce = int(conn.execute(select(STATE.c.next_nonce).where(
                STATE.c.rail == self.name).with_for_update()).scalar())
            conn.execute(update(STATE).where(STATE.c.rail == self.name)
                         .values(next_nonce=nonce + 1))
            tx = self.token.functions.transfer(to_address, units).build_transaction({
                "from": self.address, "nonce": nonce, "gas": TRANSFER_GAS,
                "chainId": chain_id, **fees})
            signed = self.hot_wallet.sign_transaction(tx)
            tx_hash = "0x" + bytes(signed.hash).hex()
            posting = self.ledger.post_linked_in(  # the wallet's controls judge (and an
                # approval binds) the destination address, not the rail that pays it
                conn, key, [Transfer(account_id, self.rail_account, units * ATOMIC_PER_UNIT)],
                kind="withdrawal", memo=f"USDC withdrawal via {self.name} to {to_address} "
                                        f"tx {tx_hash}",
                spend=SpendContext(counterparty=f"evm:{to_address.lower()}"))
            conn.execute(insert(WITHDRAWALS).values(
                idempotency_key=reference, rail=self.name, account_id=account_id,
                to_address=to_address.lower(), amount_units=units, nonce=nonce,
                tx_hash=tx_hash, raw_tx="0x" + bytes(signed.raw_transaction).hex(),
                status="signed", block_number=0, created_at_ms=self.ledger.clock_ms()))
            return posting

        posting = self.ledger.mutate(
            key, "usdc_withdrawal", {"rail": self.name, "account": account_id,
                                     "amount": amount_atomic, "to": to_address.lower()},
            apply, Posting.to_json, Posting.from_json)
        try:
            self.resend_pending(only_key=reference)
        except Exception as error:  # debited and signed: the sweeper broadcasts it again
            log.warning("payout %s not broadcast yet: %s", reference, error)
        return posting

    def resend_pending(self, *, only_key: str | None = None) -> int:
        """Broadcast every payout not yet confirmed (the same signed bytes); mark the mined
        ones. Returns how many are confirmed now."""
        query = select(WITHDRAWALS).where(WITHDRAWALS.c.rail == self.name,
                                          WITHDRAWALS.c.status.notin_(FINAL))
        if only_key is not None:
            query = query.where(WITHDRAWALS.c.idempotency_key == only_key)
        with self.ledger.engine.connect().execution_options(agentmarket_read=True) as conn:
            rows = conn.execute(query.order_by(WITHDRAWALS.c.nonce)).all()
        head = int(self.w3.eth.block_number)
        confirmed = 0
        for row in rows:
            receipt = self._receipt(row.tx_hash)
            if receipt is None:
                try:
                    self.w3.eth.send_raw_transaction(row.raw_tx)
                except Exception as error:  # known already, or mined meanwhile: look again
                    log.info("payout %s not sent again: %s", row.tx_hash, error)
                receipt = self._receipt(row.tx_hash)
            status, block = ("sent", 0) if receipt is None else (
                "confirmed" if head - receipt.blockNumber + 1 >= self.confirmations
                else "mined", int(receipt.blockNumber))
            if status == "confirmed" and receipt.status != 1:
                self._return_reverted(row, block)  # mined, moved nothing: money back
                continue
            confirmed += status == "confirmed"
            with self.ledger.engine.begin() as conn:
                conn.execute(update(WITHDRAWALS).where(
                    WITHDRAWALS.c.idempotency_key == row.idempotency_key).values(
                    status=status, block_number=block))
        return confirmed

    def _return_reverted(self, row: Any, block: int) -> None:
        """A payout whose transaction reverted (the hot wallet short of tokens, say) took its
        nonce but moved nothing: once that is confirmed, the wallet gets the money back, once."""
        key = f"usdc-payout-reverted:{row.idempotency_key}"

        def apply(conn: Connection) -> Posting:
            conn.execute(update(WITHDRAWALS).where(
                WITHDRAWALS.c.idempotency_key == row.idempotency_key).values(
                status="reverted", block_number=block))
            return self.ledger.post_linked_in(
                conn, key, [Transfer(self.rail_account, row.account_id,
                                     row.amount_units * ATOMIC_PER_UNIT)], kind="deposit",
                memo=f"USDC withdrawal via {self.name} returned: tx {row.tx_hash} reverted "
                     "on chain")

        log.warning("payout %s reverted on chain: the wallet is credited back", row.tx_hash)
        self.ledger.mutate(key, "usdc_payout_reverted", {"tx": row.tx_hash}, apply,
                           Posting.to_json, Posting.from_json, scope=NODE_SCOPE)

    def _receipt(self, tx_hash: str) -> Any:
        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None

    def withdrawals(self) -> list[dict[str, Any]]:
        with self.ledger.engine.connect().execution_options(agentmarket_read=True) as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(WITHDRAWALS).where(WITHDRAWALS.c.rail == self.name)
                .order_by(WITHDRAWALS.c.nonce))]
