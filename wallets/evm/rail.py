"""The USDC rail on an EVM chain: deposits credited after N confirmations, payouts recorded.

Deposits. A holder proves it controls an address (`register_address`: the address's key signs
`registration_message`, which names the chain, token, rail, wallet and agent), then transfers
tokens to the rail's address. `scan` (a sweeper's job) reads the token's Transfer events to the
rail, and credits each one to the wallet of its sender once its block has `confirmations`
blocks on top (itself included) and is still the chain's block at that height: a deposit in a
block that a reorganisation replaced is marked orphaned and never credited, and if the same
transfer lands again in another block it is seen again there. Each credit is a ledger deposit
keyed by (rail, transaction, log index), so a repeated scan never credits twice. A transfer
from an address nobody registered stays on the rail as `unclaimed` until the address is
registered; then it is credited like any other. A reorganisation deeper than `confirmations`
can still undo a credited deposit: choose `confirmations` for the chain (Ethereum mainnet
finalises in 2 epochs, ~13 minutes). Only addresses whose key signs (EIP-191) can register:
a contract wallet (EIP-1271) cannot.

Payouts (`withdraw`, `resend_pending`): `wallets.evm.payouts`.

`WalletService.deposit` through this rail is refused with a pointer to the above (a deposit
here is claimed by the chain, not by a caller); `WalletService.withdraw` calls `withdraw` with
the request's destination address.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import requests
from eth_account import Account
from eth_account.messages import encode_defunct
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import BlockNotFound

from wallets.caller import NODE_SCOPE
from wallets.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from wallets.evm.addresses import checked_address
from wallets.evm.chain import ATOMIC_PER_UNIT, USDC
from wallets.evm.payouts import Payouts
from wallets.ledger import Ledger
from wallets.models import Transfer
from wallets.rails import DepositAddress, DepositInstructions
from wallets.tables import EvmAddressRow, EvmDepositRow, EvmRailStateRow

ADDRESSES = EvmAddressRow.__table__  # type: ignore[attr-defined]
DEPOSITS = EvmDepositRow.__table__  # type: ignore[attr-defined]
STATE = EvmRailStateRow.__table__  # type: ignore[attr-defined]
log = logging.getLogger("agentmarket.wallets.evm")


@dataclass(frozen=True, slots=True)
class ScanResult:
    head_block: int
    seen: int
    credited: int
    orphaned: int
    unclaimed: int


def registration_message(rail: str, token: str, address: str, account_id: str, *,
                         chain_id: int, rail_address: str, agent_id: str) -> str:
    """What the address's key signs (EIP-191 personal_sign) to have its transfers to the rail
    credited to one wallet: it names the chain, the token, the rail and its deposit address (one
    node's), the wallet and its agent, so it cannot be replayed for another wallet, agent, node
    or chain."""
    return (f"agentmarket: credit the tokens {Web3.to_checksum_address(address)} sends to rail "
            f"{rail} at {Web3.to_checksum_address(rail_address)} (token "
            f"{Web3.to_checksum_address(token)} on chain {chain_id}) to wallet {account_id} of "
            f"agent {agent_id}")


class UsdcRail(Payouts):
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
        self._chain_id: int | None = None
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

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self._on_chain(lambda: self.w3.eth.chain_id))
        return self._chain_id

    def registration_message(self, address: str, account_id: str) -> str:
        """The message `address`'s key signs to register it for `account_id`."""
        wallet = self._usdc_wallet(account_id)
        return registration_message(self.name, self.token.address,
                                    checked_address(address, "address"), account_id,
                                    chain_id=self.chain_id,
                                    rail_address=self.address, agent_id=wallet.owner)

    def deposit_instructions(self, account_id: str, address: str) -> DepositInstructions:
        """Where `account_id`'s owner sends tokens from `address`, and what that address's key
        signs first to register it."""
        return DepositInstructions(self.name, "USDC", self.address, self.token.address,
                                   self.chain_id, self.confirmations,
                                   self.registration_message(address, account_id))

    def register_address(self, key: str, account_id: str, address: str,
                         signature: bytes) -> DepositAddress:
        """Credit the tokens `address` sends to the rail to this USDC wallet, once its key has
        signed `registration_message` (EIP-191). Registering it again for the same wallet
        changes nothing; for another wallet it is refused (ADDRESS_TAKEN): only the key's
        holder can sign, so nobody can take an address from the agent that holds its key.
        Transfers the address made before it was registered (unclaimed) are credited too, at
        the next scan."""
        owner = self._usdc_wallet(account_id).owner
        message = self.registration_message(address, account_id)
        address = Web3.to_checksum_address(address)
        try:
            signer = Account.recover_message(encode_defunct(text=message), signature=signature)
        except Exception:  # a malformed signature: not a recoverable one
            signer = ""
        if signer.lower() != address.lower():
            raise PermissionDenied(f"the signature is not by {address}'s key over this rail's "
                                   "registration message for this wallet",
                                   reason="BAD_SIGNATURE")

        def apply(conn: Connection) -> str:
            found = conn.execute(select(ADDRESSES.c.account_id).where(
                ADDRESSES.c.rail == self.name, ADDRESSES.c.address == address.lower())).scalar()
            if found is not None and found != account_id:
                raise FailedPrecondition(f"{address} already credits another wallet on "
                                         f"{self.name}", reason="ADDRESS_TAKEN")
            if found is None:
                conn.execute(insert(ADDRESSES).values(
                    rail=self.name, address=address.lower(), account_id=account_id,
                    registered_at_ms=self.ledger.clock_ms()))
            return account_id

        self.ledger.mutate(key, "evm_register_address", {"rail": self.name, "account":
                                                         account_id, "address": address.lower()},
                           apply, str, str)
        return DepositAddress(self.name, address, account_id, owner, self.address,
                              self.confirmations)

    def _usdc_wallet(self, account_id: str) -> Any:
        wallet = self.ledger.balance(account_id)
        if (wallet.currency, wallet.kind) != ("USDC", "wallet"):
            raise InvalidArgument(f"account {account_id} is not a USDC wallet")
        return wallet

    def _on_chain(self, read: Any) -> Any:
        """A chain request; the chain not answering is UNAVAILABLE (nothing changed)."""
        try:
            return read()
        except (OSError, TimeoutError, requests.RequestException) as error:
            raise Unavailable(f"the chain behind {self.name} does not answer: "
                              f"{str(error).splitlines()[0][:200]}") from None

    def scan(self) -> ScanResult:
        """Record new transfers to the rail, orphan those reorganised away, credit confirmed
        ones (see the module docstring)."""
        head = int(self.w3.eth.block_number)
        start = max(0, self._state()[1] - self.lookback_blocks + 1)
        seen = self._record_transfers(start, head) if head >= start else 0
        self._reclaim()
        orphaned = credited = unclaimed = 0
        with self.ledger.engine.connect().execution_options(agentmarket_read=True) as conn:
            pending = conn.execute(select(DEPOSITS).where(DEPOSITS.c.rail == self.name,
                                                          DEPOSITS.c.status == "seen")).all()
        for row in pending:
            try:
                canonical = self._canonical_hash(row.block_number)
            except Exception as error:  # the chain did not answer: the block is not known
                # gone, so the deposit stays seen (orphaning it would lose it for good)
                log.warning("USDC rail %s: block %d not read (%s); tried again next scan",
                            self.name, row.block_number, str(error)[:200])
                continue
            if canonical != row.block_hash:
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
                if not entry.args.value:  # a zero transfer moves nothing: no posting of 0
                    continue
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
                elif found.status == "orphaned":  # in the chain again (mined again, or
                    # orphaned by mistake): the log is canonical, as get_logs reads it
                    conn.execute(update(DEPOSITS).where(*where).values(
                        block_number=entry.blockNumber, block_hash=block_hash, status="seen"))
        return new

    def _reclaim(self) -> None:
        """Unclaimed deposits whose sender has registered since are credited after all."""
        registered = select(ADDRESSES.c.address).where(ADDRESSES.c.rail == self.name)
        with self.ledger.engine.begin() as conn:
            conn.execute(update(DEPOSITS).where(
                DEPOSITS.c.rail == self.name, DEPOSITS.c.status == "unclaimed",
                DEPOSITS.c.sender.in_(registered)).values(status="seen"))

    def _canonical_hash(self, block_number: int) -> str | None:
        """The hash of the chain's block at that height now; None when there is none (the
        chain is shorter now: the block is gone). Any other failure is raised."""
        try:
            block = self.w3.eth.get_block(block_number)
        except BlockNotFound:
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
            if account is None:  # not recorded under the key (node scope): credited later
                raise _Unregistered(row.sender)
            self.ledger.post_linked_in(
                conn, key, [Transfer(self.rail_account, account, amount)], kind="deposit",
                memo=f"USDC deposit via {self.name} from {row.sender} tx {row.tx_hash} "
                     f"log {row.log_index}")
            conn.execute(update(DEPOSITS).where(*where).values(
                status="credited", account_id=account, credited_at_ms=self.ledger.clock_ms()))
            return str(account)

        try:
            return bool(self.ledger.mutate(key, "usdc_deposit", {"tx": row.tx_hash, "log":
                                                                  row.log_index}, apply, str,
                                           str, scope=NODE_SCOPE))
        except _Unregistered:
            self._set_deposit(row, "unclaimed")
            return False

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
        try:
            with self.ledger.engine.begin() as conn:
                if conn.execute(select(STATE.c.rail).where(STATE.c.rail == self.name)).first() \
                        is None:
                    conn.execute(insert(STATE).values(rail=self.name, next_nonce=nonce,
                                                      scanned_block=0))
        except IntegrityError:  # created meanwhile (the scanner, a withdrawal, another node)
            pass
        return self._state()

    def _save_scanned(self, head: int) -> None:
        with self.ledger.engine.begin() as conn:
            conn.execute(update(STATE).where(STATE.c.rail == self.name)
                         .values(scanned_block=head))

class _Unregistered(FailedPrecondition):
    """A confirmed deposit from an address nobody registered (yet)."""
