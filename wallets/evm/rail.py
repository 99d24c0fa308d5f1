"""The USDC rail on an EVM chain: deposits credited after N confirmations, payouts recorded.

Deposits. A holder proves it controls an address (`register_address`: the address's key signs
a message naming the wallet), then transfers tokens to the rail's address. `scan` (a sweeper's
job) reads the token's Transfer events to the rail, and credits each one to the wallet of its
sender once its block has `confirmations` blocks on top (itself included) and is still the
chain's block at that height: a deposit in a block that a reorganisation replaced is marked
orphaned and never credited, and if the same transfer lands again in another block it is seen
again there. Each credit is a ledger deposit keyed by (rail, transaction, log index), so a
repeated scan never credits twice. A transfer from an address nobody registered stays on the
rail as `unclaimed`. A reorganisation deeper than `confirmations` can still undo a credited
deposit: choose `confirmations` for the chain (Ethereum mainnet finalises in 2 epochs, ~13
minutes).

Payouts (`withdraw`). In one ledger transaction: the wallet is debited (its policy applies), the
amount rounded down to the token's 6 decimals (the rest stays in the wallet), the next nonce of
the rail's hot wallet reserved, and the token transfer to the destination built and signed;
the posting's memo names the destination and the transaction's hash, and the signed
transaction is stored. Then it is broadcast; `resend_pending` (the sweeper) broadcasts again
whatever is not yet mined, the very same bytes, so a crash between debit and broadcast, or a
payout dropped by a reorganisation, pays exactly once: one nonce can be mined only once.
Idempotent under the withdrawal's key like every money path.

`WalletService.deposit`/`withdraw` through this rail are refused with a pointer to the above:
a deposit here is claimed by the chain, not by a caller, and a payout needs an address.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from sqlalchemy import Connection, insert, select, update
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import TransactionNotFound

from wallets.caller import NODE_SCOPE
from wallets.currencies import check_amount, currency
from wallets.errors import FailedPrecondition, InvalidAmount, InvalidArgument, PermissionDenied
from wallets.evm.chain import TOKEN_DECIMALS
from wallets.ledger import Ledger
from wallets.models import Posting, Transfer
from wallets.tables import EvmAddressRow, EvmDepositRow, EvmRailStateRow, EvmWithdrawalRow

ADDRESSES = EvmAddressRow.__table__  # type: ignore[attr-defined]
DEPOSITS = EvmDepositRow.__table__  # type: ignore[attr-defined]
WITHDRAWALS = EvmWithdrawalRow.__table__  # type: ignore[attr-defined]
STATE = EvmRailStateRow.__table__  # type: ignore[attr-defined]
USDC = currency("USDC")
ATOMIC_PER_UNIT = 10 ** (USDC.scale - TOKEN_DECIMALS)
TRANSFER_GAS = 100_000
log = logging.getLogger("agentmarket.wallets.evm")


@dataclass(frozen=True, slots=True)
class ScanResult:
    head_block: int
    seen: int
    credited: int
    orphaned: int
    unclaimed: int


def registration_message(rail: str, token: str, address: str, account_id: str) -> str:
    return (f"agentmarket: credit the tokens {Web3.to_checksum_address(address)} sends to rail "
            f"{rail} (token {Web3.to_checksum_address(token)}) to wallet {account_id}")


class UsdcRail:
    """A USDC rail over `token` on the chain `w3` talks to; `hot_wallet_key` signs payouts (its
    address is the rail's deposit address and needs ether for gas)."""

    settlement_delay_s = 0

    def __init__(self, ledger: Ledger, token: Contract, hot_wallet_key: Any, *,
                 confirmations: int = 3, name: str = "usdc-evm") -> None:
        if not 1 <= confirmations <= 1000:
            raise InvalidArgument("confirmations must be 1..1000")
        self.ledger = ledger
        self.token = token
        self.w3: Web3 = token.w3
        self.hot_wallet = Account.from_key(hot_wallet_key)
        self.address = self.hot_wallet.address
        self.confirmations = confirmations
        self.name = name
        self.currency = USDC
        self.lookback_blocks = max(2 * confirmations, 12)  # rescanned for reorganised blocks
        self.rail_account = ledger.open_account(f"rail:{name}", "USDC", "rail",
                                                credit_limit_atomic=2**62).account_id

    # ---- the Rail protocol (WalletService) -------------------------------------------------

    def confirm_deposit(self, reference: str, amount_atomic: int, account_id: str) -> None:
        raise FailedPrecondition(f"USDC deposits on {self.name} are credited from the chain: "
                                 f"register your sending address, then transfer tokens to "
                                 f"{self.address}", reason="CHAIN_DEPOSITS_ONLY")

    def send_payout(self, reference: str, amount_atomic: int) -> None:
        raise FailedPrecondition(f"a USDC payout on {self.name} needs a destination address: "
                                 "use the rail's withdraw", reason="ADDRESS_REQUIRED")

    def sweep(self) -> None:
        """The node's sweeper: credit confirmed deposits, resend unconfirmed payouts."""
        self.scan()
        self.resend_pending()

    # ---- deposits ----------------------------------------------------------------------------

    def register_address(self, key: str, account_id: str, address: str,
                         signature: bytes) -> None:
        """Credit the tokens `address` sends to the rail to this USDC wallet, once its key has
        signed `registration_message` (EIP-191)."""
        wallet = self.ledger.balance(account_id)
        if (wallet.currency, wallet.kind) != ("USDC", "wallet"):
            raise InvalidArgument(f"account {account_id} is not a USDC wallet")
        if not Web3.is_address(address):
            raise InvalidArgument(f"{address!r} is not an EVM address")
        message = registration_message(self.name, self.token.address, address, account_id)
        try:
            signer = Account.recover_message(encode_defunct(text=message), signature=signature)
        except Exception:  # a malformed signature: not a recoverable one
            signer = ""
        if signer.lower() != address.lower():
            raise PermissionDenied(f"the signature is not by {address}'s key",
                                   reason="BAD_SIGNATURE")

        def apply(conn: Connection) -> str:
            found = conn.execute(select(ADDRESSES.c.account_id).where(
                ADDRESSES.c.rail == self.name, ADDRESSES.c.address == address.lower())).scalar()
            if found is not None and found != account_id:
                raise FailedPrecondition(f"{address} already credits another wallet",
                                         reason="ADDRESS_TAKEN")
            if found is None:
                conn.execute(insert(ADDRESSES).values(
                    rail=self.name, address=address.lower(), account_id=account_id,
                    registered_at_ms=self.ledger.clock_ms()))
            return account_id

        self.ledger.mutate(key, "evm_register_address", {"rail": self.name, "account":
                                                         account_id, "address": address.lower()},
                           apply, str, str)

    def scan(self) -> ScanResult:
        """Record new transfers to the rail, orphan those reorganised away, credit confirmed
        ones (see the module docstring)."""
        head = int(self.w3.eth.block_number)
        start = max(0, self._state()[1] - self.lookback_blocks + 1)
        seen = self._record_transfers(start, head) if head >= start else 0
        orphaned = credited = unclaimed = 0
        with self.ledger.engine.connect().execution_options(agentmarket_read=True) as conn:
            pending = conn.execute(select(DEPOSITS).where(DEPOSITS.c.rail == self.name,
                                                          DEPOSITS.c.status == "seen")).all()
        for row in pending:
            if self._canonical_hash(row.block_number) != row.block_hash:
                self._set_deposit(row, "orphaned")
                orphaned += 1
            elif head - row.block_number + 1 >= self.confirmations:
                if self._credit(row):
                    credited += 1
                else:
                    unclaimed += 1
        self._save_scanned(head)
        return ScanResult(head, seen, credited, orphaned, unclaimed)

    def _record_transfers(self, start: int, head: int) -> int:
        logs = self.token.events.Transfer().get_logs(
            from_block=start, to_block=head, argument_filters={"receiver": self.address})
        new = 0
        now_ms = self.ledger.clock_ms()
        with self.ledger.engine.begin() as conn:
            for entry in logs:
                tx_hash = "0x" + bytes(entry.transactionHash).hex()
                block_hash = "0x" + bytes(entry.blockHash).hex()
                where = (DEPOSITS.c.rail == self.name, DEPOSITS.c.tx_hash == tx_hash,
                         DEPOSITS.c.log_index == entry.logIndex)
                found = conn.execute(select(DEPOSITS).where(*where)).first()
                if found is None:
                    conn.execute(insert(DEPOSITS).values(
                        rail=self.name, tx_hash=tx_hash, log_index=entry.logIndex,
                        block_number=entry.blockNumber, block_hash=block_hash,
                        sender=entry.args.sender.lower(), amount_units=entry.args.value,
                        account_id="", status="seen", seen_at_ms=now_ms, credited_at_ms=0))
                    new += 1
                elif found.status == "orphaned" and found.block_hash != block_hash:
                    conn.execute(update(DEPOSITS).where(*where).values(  # mined again
                        block_number=entry.blockNumber, block_hash=block_hash, status="seen"))
        return new

    def _canonical_hash(self, block_number: int) -> str | None:
        try:
            block = self.w3.eth.get_block(block_number)
        except Exception:  # the chain is shorter now: the block is gone
            return None
        return "0x" + bytes(block.hash).hex()

    def _credit(self, row: Any) -> bool:
        """Credit a confirmed deposit to its sender's wallet, once; False if unregistered."""
        key = f"usdc-deposit:{self.name}:{row.tx_hash}:{row.log_index}"
        amount = row.amount_units * ATOMIC_PER_UNIT

        def apply(conn: Connection) -> str:
            account = conn.execute(select(ADDRESSES.c.account_id).where(
                ADDRESSES.c.rail == self.name, ADDRESSES.c.address == row.sender)).scalar()
            where = (DEPOSITS.c.rail == self.name, DEPOSITS.c.tx_hash == row.tx_hash,
                     DEPOSITS.c.log_index == row.log_index)
            if account is None:
                conn.execute(update(DEPOSITS).where(*where).values(status="unclaimed"))
                return ""
            self.ledger.post_linked_in(
                conn, key, [Transfer(self.rail_account, account, amount)], kind="deposit",
                memo=f"USDC deposit via {self.name} from {row.sender} tx {row.tx_hash} "
                     f"log {row.log_index}")
            conn.execute(update(DEPOSITS).where(*where).values(
                status="credited", account_id=account, credited_at_ms=self.ledger.clock_ms()))
            return str(account)

        return bool(self.ledger.mutate(key, "usdc_deposit", {"tx": row.tx_hash, "log":
                                                              row.log_index}, apply, str, str,
                                       scope=NODE_SCOPE))

    def _set_deposit(self, row: Any, status: str) -> None:
        with self.ledger.engine.begin() as conn:
            conn.execute(update(DEPOSITS).where(
                DEPOSITS.c.rail == self.name, DEPOSITS.c.tx_hash == row.tx_hash,
                DEPOSITS.c.log_index == row.log_index, DEPOSITS.c.status == "seen")
                .values(status=status))

    def deposits(self) -> list[dict[str, Any]]:
        with self.ledger.engine.connect().execution_options(agentmarket_read=True) as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(DEPOSITS).where(DEPOSITS.c.rail == self.name)
                .order_by(DEPOSITS.c.block_number, DEPOSITS.c.log_index))]

    # ---- rail state --------------------------------------------------------------------------

    def _state(self) -> tuple[int, int]:
        """(next nonce of the hot wallet, last block scanned), created from the chain."""
        with self.ledger.engine.connect().execution_options(agentmarket_read=True) as conn:
            row = conn.execute(select(STATE).where(STATE.c.rail == self.name)).first()
        if row is not None:
            return int(row.next_nonce), int(row.scanned_block)
        nonce = int(self.w3.eth.get_transaction_count(self.address, "pending"))
        with self.ledger.engine.begin() as conn:
            if conn.execute(select(STATE.c.rail).where(STATE.c.rail == self.name)).first() \
                    is None:
                conn.execute(insert(STATE).values(rail=self.name, next_nonce=nonce,
                                                  scanned_block=0))
        return self._state()

    def _save_scanned(self, head: int) -> None:
        with self.ledger.engine.begin() as conn:
            conn.execute(update(STATE).where(STATE.c.rail == self.name)
                         .values(scanned_block=head))

    # ---- payouts -----------------------------------------------------------------------------

    def withdraw(self, key: str, account_id: str, amount_atomic: int,
                 to_address: str) -> Posting:
        """Pay out to `to_address`, rounded down to 6 decimals; the posting's memo carries the
        transaction hash. Idempotent under `key`."""
        check_amount(amount_atomic)
        if not Web3.is_address(to_address):
            raise InvalidArgument(f"{to_address!r} is not an EVM address")
        to_address = Web3.to_checksum_address(to_address)
        units = amount_atomic // ATOMIC_PER_UNIT
        if units == 0:
            raise InvalidAmount(f"{amount_atomic} atomic USDC is below one token unit "
                                f"({ATOMIC_PER_UNIT} atomic)")
        self._state()  # the nonce counter exists before the transaction that takes from it
        chain_id = int(self.w3.eth.chain_id)
        base_fee = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0))
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
            posting = self.ledger.post_linked_in(
                conn, key, [Transfer(account_id, self.rail_account, units * ATOMIC_PER_UNIT)],
                kind="withdrawal", memo=f"USDC withdrawal via {self.name} to {to_address} "
                                        f"tx {tx_hash}")
            conn.execute(insert(WITHDRAWALS).values(
                idempotency_key=key, rail=self.name, account_id=account_id,
                to_address=to_address.lower(), amount_units=units, nonce=nonce,
                tx_hash=tx_hash, raw_tx="0x" + bytes(signed.raw_transaction).hex(),
                status="signed", block_number=0, created_at_ms=self.ledger.clock_ms()))
            return posting

        posting = self.ledger.mutate(
            key, "usdc_withdrawal", {"rail": self.name, "account": account_id,
                                     "amount": amount_atomic, "to": to_address.lower()},
            apply, Posting.to_json, Posting.from_json)
        self.resend_pending(only_key=key)
        return posting

    def resend_pending(self, *, only_key: str | None = None) -> int:
        """Broadcast every payout not yet confirmed (the same signed bytes); mark the mined
        ones. Returns how many are confirmed now."""
        query = select(WITHDRAWALS).where(WITHDRAWALS.c.rail == self.name,
                                          WITHDRAWALS.c.status != "confirmed")
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
            confirmed += status == "confirmed"
            with self.ledger.engine.begin() as conn:
                conn.execute(update(WITHDRAWALS).where(
                    WITHDRAWALS.c.idempotency_key == row.idempotency_key).values(
                    status=status, block_number=block))
        return confirmed

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
