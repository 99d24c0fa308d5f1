"""Shared fixtures: a database per test on every backend, and a ledger with a fake clock.

Backends:
- ``sqlite``: a fresh file in the test's tmp dir.
- ``postgres``: one database per test session on a real server, and one fresh *schema* per
  test inside it (selected through ``search_path`` in the URL, so any engine or subprocess made
  from ``db_url`` sees only that test's tables). The server is the first of
  ``$AGENTMARKET_TEST_POSTGRES_URL`` or postgres@/root@127.0.0.1:5432 that answers; failing
  that, a throwaway cluster started from /usr/lib/postgresql/*/bin; failing that the postgres
  tests are skipped, except under CI=true, where they fail.

Tests that need a database take ``db_url`` (both backends) or ``engine``/``ledger``/``wallets``;
tests that need many (one per hypothesis example) take ``new_database``.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine

from wallets.ledger import Ledger

# Sellers' usage journals (agents.seller.journal_url) go to a directory of this run, never the
# checkout; examples run as subprocesses inherit it.
os.environ.setdefault("AGENTMARKET_HOME", tempfile.mkdtemp(prefix="agentmarket-test-home-"))
from tests.processes.node import free_port as _free_port  # a port bind(0) never hands out
from wallets.service import WalletService
from wallets.store import make_engine

DEFAULT_POSTGRES_URLS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
CONNECT_TIMEOUT_S = 3
CLOCK_START_MS = 1_700_000_000_000


# ---- the fake clock ------------------------------------------------------------------------


class FakeClock:
    """A clock the test moves by hand: ``Ledger(engine, clock_ms=clock)``."""

    def __init__(self, now_ms: int = CLOCK_START_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> int:
        self.now_ms += round(seconds * 1000)
        return self.now_ms


# ---- PostgreSQL server -----------------------------------------------------------------------


def _answers(conninfo: str) -> bool:
    try:
        with psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _sqlalchemy_url(conninfo: str) -> str:
    return "postgresql+psycopg://" + conninfo.split("://", 1)[1]


def _with_dbname(conninfo: str, dbname: str) -> str:
    head, _, _db = conninfo.rpartition("/")
    return f"{head}/{dbname}"


def _server_bin_dir() -> Path | None:
    for bin_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        path = Path(bin_dir)
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    return None


def _as_server_user(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return argv
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and no 'postgres' user to run a throwaway server as")
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *argv]
    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(argv)]


@contextlib.contextmanager
def _throwaway_cluster(bin_dir: Path, root: Path) -> Iterator[str]:
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    subprocess.run(
        _as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                         "--auth=trust", "--no-sync", "-E", "UTF8"]),
        check=True, capture_output=True, timeout=120,
    )
    port = _free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
    subprocess.run(_as_server_user([*pg_ctl, "-o", options, "start"]),
                   check=True, capture_output=True, timeout=90)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_server_user([*pg_ctl, "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A libpq URL of a PostgreSQL server that answers (a throwaway one if need be)."""
    override = os.environ.get("AGENTMARKET_TEST_POSTGRES_URL")
    candidates = (override,) if override else DEFAULT_POSTGRES_URLS
    for conninfo in candidates:
        if _answers(conninfo):
            yield conninfo
            return
    bin_dir = _server_bin_dir()
    if bin_dir is None:
        _unavailable("no PostgreSQL server answered on 127.0.0.1:5432 and no server binaries "
                     "found")
    # Not under pytest's tmp dir: that is private to us, and the server may run as 'postgres'.
    root = Path(tempfile.mkdtemp(prefix="agentmarket-pg-"))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        try:
            conninfo = cleanup.enter_context(_throwaway_cluster(bin_dir, root))
        except subprocess.CalledProcessError as error:
            output = (error.stderr or b"").decode(errors="replace").strip()[-500:]
            _unavailable(f"could not start a throwaway PostgreSQL server: {error}: {output}")
        except (subprocess.SubprocessError, OSError) as error:
            _unavailable(f"could not start a throwaway PostgreSQL server: {error}")
        yield conninfo


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database for this test session (SQLAlchemy URL), dropped at the end."""
    name = f"agentmarket_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        # Test data need not survive a crash: don't wait for the WAL flush on each commit
        # (locking and isolation are unchanged; only this throwaway database is affected).
        admin.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = off")
                      .format(sql.Identifier(name)))
    conninfo = _with_dbname(postgres_server, name)
    try:
        yield _sqlalchemy_url(conninfo)
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))


@contextlib.contextmanager
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A fresh schema in the session database; yields a URL whose search_path is that schema."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as admin:
            # A leaked connection in a transaction would block the drop, and the backend of a
            # node just killed may still be running a query that deadlocks with it: don't hang
            # or fail on either, the whole session database is dropped at the end anyway.
            admin.execute("SET lock_timeout = '5s'")
            with contextlib.suppress(psycopg.errors.LockNotAvailable,
                                     psycopg.errors.DeadlockDetected):
                admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


# ---- per-test database, engine, ledger -------------------------------------------------------

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


NewDatabase = Callable[[], AbstractContextManager[str]]


@pytest.fixture
def new_database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> NewDatabase:
    """Makes fresh, empty databases on this test's backend, as many as it needs (hypothesis
    state machines take one per example): ``with new_database() as url: ...``."""
    if backend == "postgres":
        session_url = request.getfixturevalue("postgres_url")
        return lambda: postgres_schema(session_url)
    numbers = itertools.count()

    @contextlib.contextmanager
    def sqlite_database() -> Iterator[str]:
        folder = tmp_path / f"db{next(numbers)}"
        folder.mkdir()
        try:
            yield f"sqlite:///{folder / 'ledger.db'}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return sqlite_database


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for this test, on each backend in turn."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(engine: Engine, clock: FakeClock) -> Iterator[Ledger]:
    ledger = Ledger(engine, clock_ms=clock)
    yield ledger
    ledger.close()


@pytest.fixture
def wallets(ledger: Ledger) -> WalletService:
    return WalletService(ledger)


# ---- Redis -------------------------------------------------------------------------------------

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a Redis that answers (``$AGENTMARKET_TEST_REDIS_URL`` or 127.0.0.1:6379);
    without one the Redis tests are skipped, except under CI=true, where they fail. Tests keep
    apart by their keys (fresh agent keys, random nonces), not by a database each."""
    import redis

    url = os.environ.get("AGENTMARKET_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S) as client:
            client.ping()
    except (redis.RedisError, OSError) as error:
        reason = f"no Redis answered at {url}: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the Redis tests must run)")
        pytest.skip(reason)
    return url
