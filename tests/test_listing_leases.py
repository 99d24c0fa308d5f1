"""Heartbeats only read; their expiries are written together, and never at another's cost.

A flood of listings from free keys fills the room callers' registry writes share, and a beat
used to need that room: an honest seller's listing lapsed. Now a beat is answered from a read,
its expiry left pending (`marketplace.listing_leases`) and written with every other beat's by
the node's `LeaseFlusher`; a stale beat (its listing withdrawn, expired, replaced or unfindable
since) renews nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from marketplace.auth import signed_channel
from marketplace.errors import RegistryBusy
from marketplace.identity import AgentKey
from marketplace.listing_leases import LeaseFlusher, Leases
from marketplace.node import MarketplaceNode
from marketplace.registry import Registry
from marketplace.testing import make_listing, make_skill
from marketplace.v1 import registry_pb2, registry_pb2_grpc
from wallets.errors import NotFound
from wallets.store import make_engine


@pytest.fixture
def registry(engine: Engine, clock) -> Registry:  # type: ignore[no-untyped-def]
    return Registry(engine, clock_ms=clock)


def _advertised(registry: Registry, ttl_s: int = 60) -> AgentKey:
    key = AgentKey.generate()
    registry.advertise(make_listing(key, make_skill("translate", description="translate text"),
                                    name=key.agent_id[:8]), ttl_s)
    return key


def _findable(registry: Registry, key: AgentKey) -> bool:
    return key.agent_id in [x.agent_id for x in registry.discover(text="translate", limit=50)]


def test_beats_are_written_together_in_one_commit(registry: Registry, clock) -> None:  # type: ignore[no-untyped-def]
    keys = [_advertised(registry) for _ in range(3)]
    clock.advance(30)
    renewed = [registry.heartbeat(k.agent_id) for k in keys]
    assert renewed == [clock() + 60_000] * 3
    assert [registry.get(k.agent_id).expires_at_ms for k in keys] == [clock() + 30_000] * 3
    commits: list[object] = []

    def committed(conn: object) -> None:
        commits.append(conn)

    event.listen(registry.engine, "commit", committed)
    try:
        assert registry.flush_leases() == 3
    finally:
        event.remove(registry.engine, "commit", committed)
    assert len(commits) == 1
    assert [registry.get(k.agent_id).expires_at_ms for k in keys] == renewed
    clock.advance(59)
    assert all(_findable(registry, k) for k in keys)  # past the old expiry: the new one holds
    assert registry.flush_leases() == 0  # nothing pending: nothing written


def test_a_beat_takes_no_room_and_never_waits_for_the_writer(tmp_path: Path, clock) -> None:  # type: ignore[no-untyped-def]
    """Both rooms of callers' writes taken, the node's writer turn held by another thread and
    SQLite's write lock by another connection: a beat is still answered."""
    path = tmp_path / "m.db"
    registry = Registry(make_engine(f"sqlite:///{path}"), clock_ms=clock)
    key = _advertised(registry)
    held, release = threading.Event(), threading.Event()

    def hold_the_writer() -> None:
        with registry._serial():
            other = sqlite3.connect(path)
            other.execute("BEGIN IMMEDIATE")
            held.set()
            release.wait(30)
            other.rollback()
            other.close()

    holder = threading.Thread(target=hold_the_writer)
    holder.start()
    try:
        assert held.wait(10)
        with ExitStack() as rooms:
            for _ in range(registry.asked_writes.limit):
                rooms.enter_context(registry.asked_writes.room())
            with pytest.raises(RegistryBusy):
                registry.advertise(make_listing(AgentKey.generate(), make_skill()))
            answered: list[int] = []
            beat = threading.Thread(target=lambda: answered.append(
                registry.heartbeat(key.agent_id)))
            beat.start()
            beat.join(10)
            assert answered == [clock() + 60_000]
    finally:
        release.set()
        holder.join()
    assert registry.flush_leases() == 1
    assert registry.get(key.agent_id).expires_at_ms == clock() + 60_000
    registry.engine.dispose()


def test_a_node_answers_beats_while_strangers_fill_the_write_room(tmp_path: Path) -> None:
    """Over gRPC: the first interceptor refuses Advertise while the room is full, not a beat;
    the node's flusher then writes the beat's expiry."""
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node:
        key = AgentKey.generate()
        with signed_channel(node.address, key) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            first = stub.Advertise(registry_pb2.AdvertiseRequest(
                idempotency_key=f"advertise:{uuid.uuid4()}", ttl_s=30,
                listing=make_listing(key, make_skill())), timeout=30).listing
            with ExitStack() as rooms:
                for _ in range(node.registry.asked_writes.limit):
                    rooms.enter_context(node.registry.asked_writes.room())
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Advertise(registry_pb2.AdvertiseRequest(
                        idempotency_key=f"advertise:{uuid.uuid4()}",
                        listing=make_listing(AgentKey.generate(), make_skill())), timeout=30)
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                renewed = stub.Heartbeat(registry_pb2.HeartbeatRequest(agent_id=key.agent_id),
                                         timeout=30).expires_at_ms
                assert renewed >= first.expires_at_ms
                written = threading.Event()
                for _ in range(100):  # the flusher's turn comes every 0.5 s
                    if node.registry.get(key.agent_id).expires_at_ms == renewed:
                        written.set()
                        break
                    written.wait(0.1)
                assert written.is_set()


@pytest.mark.parametrize("since", ["withdrawn", "expired by a liveness check", "replaced"])
def test_a_stale_beat_renews_nothing(registry: Registry, clock, since: str) -> None:  # type: ignore[no-untyped-def]
    key = _advertised(registry, ttl_s=600)
    clock.advance(10)
    registry.heartbeat(key.agent_id)
    if since == "withdrawn":
        registry.withdraw(key.agent_id)
    elif since == "expired by a liveness check":
        assert registry.expire(key.agent_id, make_listing(key, make_skill()).endpoint)
    else:  # advertised again with a shorter life: the old listing's beat does not lengthen it
        registry.advertise(make_listing(key, make_skill("translate")), 30)
    registry.flush_leases()
    if since == "replaced":
        assert registry.get(key.agent_id).expires_at_ms == clock() + 30_000
        return
    with pytest.raises(NotFound):
        registry.get(key.agent_id)
    with pytest.raises(NotFound, match="advertise again"):
        registry.heartbeat(key.agent_id)


def test_a_beat_written_after_its_search_rows_went_lapses_its_listing(
        registry: Registry, clock) -> None:  # type: ignore[no-untyped-def]
    """Another node (PostgreSQL) took the listing's search rows between the beat's read and
    the write: the listing lapses, so the seller's next beat asks for an advertise rather
    than keep it live and unfindable."""
    key = _advertised(registry)
    registry.heartbeat(key.agent_id)
    with registry.engine.begin() as conn:
        registry._delete_search_rows(conn, [key.agent_id])
    registry.flush_leases()
    with pytest.raises(NotFound, match="advertise again"):
        registry.heartbeat(key.agent_id)
    registry.advertise(make_listing(key, make_skill("translate", description="translate text")))
    assert _findable(registry, key)


def test_a_failed_write_leaves_its_expiries_pending(registry: Registry, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    keys = [_advertised(registry) for _ in range(2)]
    for key in keys:
        registry.heartbeat(key.agent_id)

    def broken(*_args: object) -> None:
        raise RuntimeError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(registry._lease_writer, "_write", broken)
        with pytest.raises(RuntimeError):
            registry.flush_leases()
    assert len(registry.leases) == 2
    assert registry.flush_leases() == 2


def test_a_listing_the_database_refuses_holds_back_no_other(registry: Registry, clock,  # type: ignore[no-untyped-def]
                                                            caplog) -> None:
    """A chunk refused (PostgreSQL: a deadlock with another node replacing one of its
    listings) is written again a listing per transaction: the others' expiries are written,
    the refused one is pending for the flusher's next turn (not at once: no spinning)."""
    keys = sorted((_advertised(registry) for _ in range(3)), key=lambda k: k.agent_id)
    poisoned = keys[1].agent_id
    clock.advance(10)
    renewed = {k.agent_id: registry.heartbeat(k.agent_id) for k in keys}
    writer = registry._lease_writer
    write = writer._write

    def deadlocks(chunk: list[tuple[str, int]]) -> None:
        if poisoned in dict(chunk):
            raise OperationalError("UPDATE registry_offers", {}, Exception("deadlock detected"))
        write(chunk)

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(writer, "_write", deadlocks)
        assert registry.flush_leases() == 2
    assert "refused by the database" in caplog.text
    for key in (keys[0], keys[2]):
        assert registry.get(key.agent_id).expires_at_ms == renewed[key.agent_id]
    assert registry.get(poisoned).expires_at_ms == renewed[poisoned] - 10_000  # not yet
    assert len(registry.leases) == 1 and not registry.leases.due.is_set()
    assert registry.flush_leases() == 1
    assert registry.get(poisoned).expires_at_ms == renewed[poisoned]


def test_pending_beats_are_bounded() -> None:
    leases = Leases(limit=2)
    leases.renew("a" * 64, 10)
    leases.renew("b" * 64, 10)
    leases.renew("a" * 64, 20)  # a listing already pending: its later expiry replaces
    with pytest.raises(RegistryBusy):
        leases.renew("c" * 64, 10)
    assert leases.take() == {"a" * 64: 20, "b" * 64: 10}
    leases.renew("c" * 64, 10, soon=True)
    assert leases.due.is_set()


def test_the_flusher_retries_a_failed_write_and_writes_once_more_when_stopped(caplog) -> None:  # type: ignore[no-untyped-def]
    leases = Leases()
    written: list[dict[str, int]] = []
    failures = [RuntimeError("database away")]
    first = threading.Event()

    def flush() -> int:
        pending = leases.take()
        if failures:
            leases.back(pending)
            raise failures.pop()
        written.append(pending)
        first.set()
        return len(pending)

    flusher = LeaseFlusher(leases, flush, interval_s=0.05).start()
    leases.renew("a" * 64, 10, soon=True)
    assert first.wait(10)
    assert written[0] == {"a" * 64: 10} and "database away" in caplog.text
    leases.renew("b" * 64, 20)
    flusher.stop()
    assert {k: v for batch in written for k, v in batch.items()} == {"a" * 64: 10, "b" * 64: 20}
    assert len(leases) == 0


@pytest.mark.postgres
def test_nodes_writing_the_same_beats_at_once_do_not_deadlock(postgres_url: str, clock) -> None:  # type: ignore[no-untyped-def]
    """Two nodes of one PostgreSQL market, each with beats of the same listings pending: both
    write in one order (agent id), so neither waits on the other's row locks in a cycle."""
    from tests.conftest import postgres_schema

    with postgres_schema(postgres_url) as url:
        nodes = [Registry(make_engine(url), clock_ms=clock) for _ in range(2)]
        keys = [AgentKey.generate() for _ in range(600)]
        nodes[0].advertise_many([make_listing(k, make_skill()) for k in keys], 60)
        clock.advance(1)
        for registry in nodes:
            for key in reversed(keys) if registry is nodes[1] else keys:
                registry.heartbeat(key.agent_id)
        errors: list[BaseException] = []

        def flush(registry: Registry) -> None:
            try:
                registry.flush_leases()
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=flush, args=(r,)) for r in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert {nodes[1].get(k.agent_id).expires_at_ms for k in keys} == {clock() + 60_000}
        for registry in nodes:
            registry.engine.dispose()
