"""The USDC rail over gRPC: a node reaches a real EVM (eth-tester/py-evm served over JSON-RPC on
loopback by `wallets.evm.rpc`) by URL, as it would a chain's node. Agents sign their calls;
an agent registers an address it holds the key of (RegisterDepositAddress), its transfers to
the rail are credited after N confirmations and never from a reorganised block, and Withdraw
pays a destination address once, with the transaction's hash on the posting; the chain's own
balances match the ledger's. Refusals change nothing. `agentmarket serve --usdc-*` as a real
process, and its bad flags in one line. Ledgers on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

if os.environ.get("CI") != "true":
    pytest.importorskip("web3", reason="the evm extra (web3, eth-tester, py-evm) is missing")

from eth_account import Account
from eth_account.messages import encode_defunct
from typer.testing import CliRunner

from marketplace.auth import signed_channel
from marketplace.cli.main import app
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from tests.processes.node import free_port
from wallets.audit import check_balances, verify_chain
from wallets.evm import UsdcRailConfig, sandbox_chain
from wallets.evm.rail import ATOMIC_PER_UNIT, UsdcRail
from wallets.evm.rpc import ChainRpcServer
from wallets.grpc_errors import error_info
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

CONFIRMATIONS = 2
TIMEOUT_S = 10
CREDIT_WAIT_S = 20


@dataclass
class World:
    rpc: ChainRpcServer
    node: MarketplaceNode
    rail: UsdcRail
    channels: list[grpc.Channel]

    def stub(self, key: AgentKey) -> Any:
        channel = signed_channel(self.node.address, key)
        self.channels.append(channel)
        return wallet_pb2_grpc.WalletServiceStub(channel)


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    chain = sandbox_chain()
    rpc = ChainRpcServer(chain).start()
    hot = Account.create()
    chain.fund_gas(hot.address)
    config = UsdcRailConfig(rpc.url, chain.token.address, hot.key.hex(), CONFIRMATIONS)
    node = MarketplaceNode(db_url, rails=config.rails, sweep_interval_s=0.05).start()
    found = World(rpc, node, node.wallets.rails[config.name], [])  # type: ignore[arg-type]
    try:
        yield found
    finally:
        for channel in found.channels:
            channel.close()
        node.stop(0)
        rpc.stop()


def _key() -> str:
    return f"test:{uuid.uuid4().hex}"


def _wallet(stub: Any, agent: AgentKey) -> str:
    return stub.OpenAccount(wallet_pb2.OpenAccountRequest(
        idempotency_key=_key(), owner=agent.agent_id, currency="USDC"),
        timeout=TIMEOUT_S).account_id


def _holder(world: World, units: int) -> Any:
    holder = Account.create()
    with world.rpc.holding() as chain:
        chain.fund_gas(holder.address)
        if units:
            chain.mint(holder.address, units)
    return holder


def _sign(holder: Any, message: str) -> bytes:
    return bytes(Account.sign_message(encode_defunct(text=message), holder.key).signature)


def _register(stub: Any, account: str, holder: Any, key: str = "") -> Any:
    instructions = stub.GetDepositInstructions(wallet_pb2.GetDepositInstructionsRequest(
        account_id=account, address=holder.address), timeout=TIMEOUT_S)
    return stub.RegisterDepositAddress(wallet_pb2.RegisterDepositAddressRequest(
        idempotency_key=key or _key(), account_id=account, address=holder.address,
        signature=_sign(holder, instructions.registration_message)), timeout=TIMEOUT_S)


def _send(world: World, holder: Any, to: str, units: int, *, mine: int = 0) -> bytes:
    with world.rpc.holding() as chain:
        tx = chain.token.functions.transfer(to, units).build_transaction({
            "from": holder.address, "nonce": chain.w3.eth.get_transaction_count(holder.address),
            "gas": 100_000, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9,
            "chainId": chain.w3.eth.chain_id})
        raw = bytes(holder.sign_transaction(tx).raw_transaction)
        chain.w3.eth.send_raw_transaction(raw)
        if mine:
            chain.mine(mine)
    return raw


def _units(world: World, address: str) -> int:
    with world.rpc.holding() as chain:
        return int(chain.token.functions.balanceOf(address).call())


def _balance(stub: Any, account: str) -> int:
    return stub.GetBalance(wallet_pb2.GetBalanceRequest(account_id=account),
                           timeout=TIMEOUT_S).posted_credits_atomic


def _until_credited(stub: Any, account: str, amount: int) -> None:
    deadline = time.monotonic() + CREDIT_WAIT_S
    while _balance(stub, account) < amount and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _balance(stub, account) == amount


def _matches_chain(world: World) -> None:
    """The rail account mirrors, exactly, the tokens the rail's address holds on chain."""
    ledger = world.node.ledger
    assert -ledger.balance(world.rail.rail_account).posted_atomic == \
        _units(world, world.rail.address) * ATOMIC_PER_UNIT
    assert check_balances(ledger).ok and verify_chain(ledger).ok


def _state(world: World) -> tuple[Any, ...]:
    ledger = world.node.ledger
    return (sorted((b.account_id, b.posted_atomic, b.pending_debits_atomic)
                   for b in ledger.accounts()), len(ledger.postings(limit=10_000)),
            len(world.rail.withdrawals()), _registered(world))


def _registered(world: World) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from wallets.evm.rail import ADDRESSES

    with world.node.engine.connect() as conn:
        return sorted((r.address, r.account_id) for r in conn.execute(select(ADDRESSES)))


def _broken_checksum(address: str) -> str:
    """The address with one letter's case flipped: mixed case, EIP-55 checksum broken."""
    at = next(i for i, c in enumerate(address) if i > 1 and c.isalpha())
    broken = address[:at] + address[at].swapcase() + address[at + 1:]
    assert broken[2:] not in (broken[2:].lower(), broken[2:].upper())
    return broken


def _refused(world: World, call: Any, code: grpc.StatusCode, reason: str) -> str:
    before = _state(world)
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == code, raised.value.details()
    assert error_info(raised.value).reason == reason, raised.value.details()
    assert _state(world) == before
    return str(raised.value.details())


def test_a_registered_address_funds_its_agent_after_n_confirmations(world: World):
    alice = AgentKey.generate()
    stub = world.stub(alice)
    account = _wallet(stub, alice)
    holder = _holder(world, 9_000_000)
    instructions = stub.GetDepositInstructions(wallet_pb2.GetDepositInstructionsRequest(
        account_id=account, address=holder.address.lower()), timeout=TIMEOUT_S)
    assert (instructions.rail, instructions.currency, instructions.rail_address,
            instructions.confirmations) == ("usdc-evm", "USDC", world.rail.address,
                                            CONFIRMATIONS)
    for named in (holder.address, account, alice.agent_id, world.rail.address,
                  str(instructions.chain_id), instructions.token_address):
        assert named in instructions.registration_message
    registered = _register(stub, account, holder, key="reg-1")
    assert (registered.address, registered.account_id, registered.agent_id) == \
        (holder.address, account, alice.agent_id)
    assert _register(stub, account, holder, key="reg-1") == registered  # a retry
    assert _register(stub, account, holder, key="reg-2") == registered  # idempotent anyway
    assert len(_registered(world)) == 1

    _send(world, holder, instructions.rail_address, 4_000_000)  # 1 confirmation of 2
    time.sleep(0.5)  # several sweeps: not credited before its confirmations
    assert _balance(stub, account) == 0
    with world.rpc.holding() as chain:
        chain.mine(CONFIRMATIONS - 1)
    _until_credited(stub, account, 4_000 * 10**6)
    _matches_chain(world)
    [deposit] = world.node.ledger.postings(account_id=account, kind="deposit")
    assert holder.address.lower() in deposit.memo


def test_a_deposit_in_a_reorganised_block_is_never_credited(world: World):
    alice = AgentKey.generate()
    stub = world.stub(alice)
    account = _wallet(stub, alice)
    holder = _holder(world, 5_000_000)
    _register(stub, account, holder)
    with world.rpc.holding() as chain:
        snapshot = chain.tester.take_snapshot()
    raw = _send(world, holder, world.rail.address, 2_000_000)
    time.sleep(0.3)  # the sweeper has seen it, unconfirmed
    with world.rpc.holding() as chain:
        chain.tester.revert_to_snapshot(snapshot)  # its block is replaced
        chain.mine(CONFIRMATIONS + 2)
    time.sleep(0.5)
    assert _balance(stub, account) == 0
    _matches_chain(world)
    with world.rpc.holding() as chain:  # the same transfer lands in another block
        chain.w3.eth.send_raw_transaction(raw)
        chain.mine(CONFIRMATIONS)
    _until_credited(stub, account, 2_000 * 10**6)
    _matches_chain(world)


def test_only_the_key_holder_registers_an_address_and_only_for_its_own_wallet(world: World):
    alice, bob = AgentKey.generate(), AgentKey.generate()
    as_alice, as_bob = world.stub(alice), world.stub(bob)
    alice_wallet, bob_wallet = _wallet(as_alice, alice), _wallet(as_bob, bob)
    holder = _holder(world, 0)  # alice's address
    for_alice = as_alice.GetDepositInstructions(wallet_pb2.GetDepositInstructionsRequest(
        account_id=alice_wallet, address=holder.address), timeout=TIMEOUT_S)
    alice_signature = _sign(holder, for_alice.registration_message)

    def register(stub: Any, account: str, signature: bytes, address: str = holder.address
                 ) -> Any:
        return lambda: stub.RegisterDepositAddress(wallet_pb2.RegisterDepositAddressRequest(
            idempotency_key=_key(), account_id=account, address=address,
            signature=signature), timeout=TIMEOUT_S)

    # bob replays alice's signature for his own wallet: it names her wallet, not his
    _refused(world, register(as_bob, bob_wallet, alice_signature),
             grpc.StatusCode.PERMISSION_DENIED, "BAD_SIGNATURE")
    # bob signs for alice's address with his own key, to take it first (griefing)
    bob_key = Account.create()
    own = as_bob.GetDepositInstructions(wallet_pb2.GetDepositInstructionsRequest(
        account_id=bob_wallet, address=holder.address), timeout=TIMEOUT_S)
    _refused(world, register(as_bob, bob_wallet, _sign(bob_key, own.registration_message)),
             grpc.StatusCode.PERMISSION_DENIED, "BAD_SIGNATURE")
    # bob presents alice's own registration for her wallet: only her agent may
    _refused(world, register(as_bob, alice_wallet, alice_signature),
             grpc.StatusCode.PERMISSION_DENIED, "FORBIDDEN")
    _refused(world, register(as_alice, alice_wallet, b"\x01" * 65),
             grpc.StatusCode.PERMISSION_DENIED, "BAD_SIGNATURE")
    _refused(world, register(as_alice, alice_wallet, alice_signature, "0x1234"),
             grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    _refused(world, register(as_alice, alice_wallet, alice_signature,
                             _broken_checksum(holder.address)),
             grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    register(as_alice, alice_wallet, alice_signature)()
    # the key holder itself cannot move the address to a second wallet once registered
    for_bob = _sign(holder, own.registration_message)
    details = _refused(world, register(as_bob, bob_wallet, for_bob),
                       grpc.StatusCode.FAILED_PRECONDITION, "ADDRESS_TAKEN")
    assert "another wallet" in details
    assert _registered(world) == [(holder.address.lower(), alice_wallet)]


def test_a_deposit_sent_before_registering_is_credited_once_registered(world: World):
    alice = AgentKey.generate()
    stub = world.stub(alice)
    account = _wallet(stub, alice)
    holder = _holder(world, 3_000_000)
    _send(world, holder, world.rail.address, 3_000_000, mine=CONFIRMATIONS)
    deadline = time.monotonic() + CREDIT_WAIT_S
    while [d["status"] for d in world.rail.deposits()] != ["unclaimed"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _register(stub, account, holder)
    _until_credited(stub, account, 3_000 * 10**6)
    _matches_chain(world)


def test_withdraw_pays_a_destination_once_and_the_chain_matches_the_ledger(world: World):
    alice = AgentKey.generate()
    stub = world.stub(alice)
    account = _wallet(stub, alice)
    holder = _holder(world, 20_000_000)
    _register(stub, account, holder)
    _send(world, holder, world.rail.address, 20_000_000, mine=CONFIRMATIONS)
    _until_credited(stub, account, 20_000 * 10**6)
    payee = Account.create().address

    def withdraw(key: str, destination: str, amount: int = 7 * 10**9 + 999, **kw: Any) -> Any:
        return stub.Withdraw(wallet_pb2.WithdrawRequest(
            idempotency_key=key, account_id=account, destination=destination,
            amount=wallet_pb2.Money(amount_atomic=amount, currency="USDC"), **kw),
            timeout=TIMEOUT_S)

    posting = withdraw("pay-1", payee.lower())  # lower case: no checksum to check
    assert posting.kind == "withdrawal" and payee in posting.memo  # checksummed
    [row] = world.rail.withdrawals()
    assert row["tx_hash"] in posting.memo
    with world.rpc.holding() as chain:
        assert chain.w3.eth.get_transaction_receipt(row["tx_hash"]).status == 1
    assert _units(world, payee) == 7_000_000
    assert withdraw("pay-1", payee.lower()) == posting  # a retry: one transfer on chain
    assert _units(world, payee) == 7_000_000 and len(world.rail.withdrawals()) == 1
    # 999 atomic finer than the token's 6 decimals stayed in the wallet
    assert world.node.ledger.balance(account).posted_atomic == 13_000 * 10**6
    with world.rpc.holding() as chain:
        chain.mine(CONFIRMATIONS)
    _matches_chain(world)

    for destination in ("", "0x1234", "not an address", _broken_checksum(payee),
                        world.rail.address):
        _refused(world, lambda d=destination: withdraw(_key(), d),
                 grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert _units(world, payee) == 7_000_000
    _refused(world, lambda: withdraw("pay-1", Account.create().address),
             grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    _refused(world, lambda: withdraw(_key(), payee, 10**15),
             grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    # play money cannot reach the chain: USDC has no sandbox rail on this node
    _refused(world, lambda: stub.Deposit(wallet_pb2.DepositRequest(
        idempotency_key=_key(), account_id=account,
        amount=wallet_pb2.Money(amount_atomic=10**9, currency="USDC")), timeout=TIMEOUT_S),
        grpc.StatusCode.FAILED_PRECONDITION, "CHAIN_DEPOSITS_ONLY")
    _matches_chain(world)


# ---- agentmarket serve --usdc-* --------------------------------------------------------------


def _agentmarket() -> list[str]:
    script = Path(sys.executable).parent / "agentmarket"
    return [str(script)] if script.exists() else [sys.executable, "-m", "marketplace.cli.main"]


def test_serve_runs_the_usdc_rail_of_a_chain_named_by_url(tmp_path: Path):
    chain = sandbox_chain()
    hot = Account.create()
    chain.fund_gas(hot.address)
    key_file = tmp_path / "hot.key"
    key_file.write_text(hot.key.hex() + "\n")
    port, logs = free_port(), tmp_path / "serve.log"
    with ChainRpcServer(chain) as rpc, logs.open("wb") as log:
        process = subprocess.Popen(
            [*_agentmarket(), "serve", "--db", f"sqlite:///{tmp_path / 'm.db'}", "--port",
             str(port), "--spans", str(tmp_path / "spans.db"), "--usdc-rpc", rpc.url,
             "--usdc-token", chain.token.address, "--usdc-hot-key-file", str(key_file),
             "--usdc-confirmations", "1"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            alice = AgentKey.generate()
            with signed_channel(f"127.0.0.1:{port}", alice) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
                stub = wallet_pb2_grpc.WalletServiceStub(channel)
                account = _wallet(stub, alice)
                holder = Account.create()
                with rpc.holding():
                    chain.fund_gas(holder.address)
                    chain.mint(holder.address, 1_500_000)
                world = World(rpc, None, None, [])  # type: ignore[arg-type]
                _register(stub, account, holder)
                _send(world, holder, hot.address, 1_500_000)
                _until_credited(stub, account, 1_500 * 10**6)
        finally:
            process.terminate()
            process.wait(timeout=15)
    output = " ".join(logs.read_text().split())
    assert f"USDC rail usdc-evm on chain {chain.w3.eth.chain_id}: deposits to {hot.address}, " \
           "credited after 1 confirmation(s)" in output, output
    assert "Traceback" not in output


@pytest.mark.parametrize("case, says", [
    ("bad-token", "is not an EVM address"),
    ("no-key-file", "is not a file"),
    ("bad-key", "does not hold a hex secp256k1 private key"),
    ("unreachable", "cannot reach the chain at"),
    ("no-contract", "no contract at"),
    ("rpc-alone", "--usdc-rpc needs --usdc-token"),
    ("token-alone", "need --usdc-rpc"),
])
def test_serve_refuses_bad_usdc_flags_in_one_line(tmp_path: Path, case: str, says: str):
    chain = sandbox_chain()
    key_file = tmp_path / "hot.key"
    key_file.write_text(Account.create().key.hex())
    with ChainRpcServer(chain) as rpc:
        flags = {"--usdc-rpc": rpc.url, "--usdc-token": chain.token.address,
                 "--usdc-hot-key-file": str(key_file)}
        if case == "bad-token":
            flags["--usdc-token"] = "0x12345"
        elif case == "no-key-file":
            flags["--usdc-hot-key-file"] = str(tmp_path / "missing.key")
        elif case == "bad-key":
            key_file.write_text("not a key")
        elif case == "unreachable":
            flags["--usdc-rpc"] = f"http://127.0.0.1:{free_port()}"
        elif case == "no-contract":
            flags["--usdc-token"] = Account.create().address
        elif case == "rpc-alone":
            flags = {"--usdc-rpc": rpc.url}
        elif case == "token-alone":
            flags = {"--usdc-token": chain.token.address}
        argv = ["serve", "--db", f"sqlite:///{tmp_path / 'm.db'}", "--port", "0", "--spans",
                str(tmp_path / "s.db"), *[part for pair in flags.items() for part in pair]]
        result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], lines
    assert "not a key" not in result.output  # a key file's content is never echoed
    assert not (tmp_path / "m.db").exists()


def test_equal_keys_of_two_agents_are_two_payouts(world: World):
    """Keys are per caller: another agent's withdrawal under the same key neither blocks nor
    replays mine."""
    payees = []
    for _ in range(2):
        agent = AgentKey.generate()
        stub = world.stub(agent)
        account = _wallet(stub, agent)
        holder = _holder(world, 2_000_000)
        _register(stub, account, holder)
        _send(world, holder, world.rail.address, 2_000_000, mine=CONFIRMATIONS)
        _until_credited(stub, account, 2_000 * 10**6)
        payees.append(Account.create().address)
        stub.Withdraw(wallet_pb2.WithdrawRequest(
            idempotency_key="withdraw-1", account_id=account, destination=payees[-1],
            amount=wallet_pb2.Money(amount_atomic=10**9, currency="USDC")), timeout=TIMEOUT_S)
    assert [_units(world, payee) for payee in payees] == [1_000_000, 1_000_000]
    assert len(world.rail.withdrawals()) == 2
    _matches_chain(world)


def test_a_payout_that_reverts_on_chain_is_returned_once(world: World):
    """USDC the wallet got off chain (here from an FX desk's account) is more than the rail
    holds: the transfer is mined but reverts, and once that is confirmed the wallet has its
    money back; the ledger still matches the chain."""
    alice = AgentKey.generate()
    stub = world.stub(alice)
    account = _wallet(stub, alice)
    ledger = world.node.ledger
    desk = ledger.open_account("fx-desk", "USDC", "fx", credit_limit_atomic=10**15).account_id
    ledger.transfer("bought-by-fx", desk, account, 5 * 10**9)
    payee = Account.create().address
    posting = stub.Withdraw(wallet_pb2.WithdrawRequest(
        idempotency_key="too-much", account_id=account, destination=payee,
        amount=wallet_pb2.Money(amount_atomic=5 * 10**9, currency="USDC")), timeout=TIMEOUT_S)
    [row] = world.rail.withdrawals()
    with world.rpc.holding() as chain:
        assert chain.w3.eth.get_transaction_receipt(row["tx_hash"]).status == 0
        chain.mine(CONFIRMATIONS)
    assert row["tx_hash"] in posting.memo and _units(world, payee) == 0
    deadline = time.monotonic() + CREDIT_WAIT_S
    while world.rail.withdrawals()[0]["status"] != "reverted":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ledger.balance(account).posted_atomic == 5 * 10**9
    [returned] = [p for p in ledger.postings(account_id=account, kind="deposit")]
    assert row["tx_hash"] in returned.memo and "reverted" in returned.memo
    time.sleep(0.3)  # more sweeps: returned once
    assert len(ledger.postings(account_id=account, kind="deposit")) == 1
    _matches_chain(world)


def test_the_chain_not_answering_is_unavailable_and_moves_nothing(world: World):
    alice = AgentKey.generate()
    stub = world.stub(alice)
    account = _wallet(stub, alice)
    holder = _holder(world, 2_000_000)
    _register(stub, account, holder)
    _send(world, holder, world.rail.address, 2_000_000, mine=CONFIRMATIONS)
    _until_credited(stub, account, 2_000 * 10**6)
    world.rpc.stop()  # the chain's node goes away
    _refused(world, lambda: stub.Withdraw(wallet_pb2.WithdrawRequest(
        idempotency_key=_key(), account_id=account, destination=Account.create().address,
        amount=wallet_pb2.Money(amount_atomic=10**9, currency="USDC")), timeout=TIMEOUT_S),
        grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE")
    assert world.node.ledger.balance(account).posted_atomic == 2_000 * 10**6
