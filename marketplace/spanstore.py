"""An embedded span store: finished spans in one SQLite table, read back by `agentmarket trace`.

Tracing must work with nothing else running, so by default spans go to a SQLite file next to the
ledger (OTLP backends are optional, see `marketplace.tracing`). Several tracer providers in one
process and several processes may write the same file: each exporter holds its own connection in
WAL mode with a busy timeout, and writes one transaction per batch under a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from wallets import attributes as attrs
from wallets.store import enable_wal

BUSY_TIMEOUT_MS = 30_000
TRACES_LIMIT_MAX = 1_000

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS spans (
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        parent_span_id TEXT,
        name TEXT NOT NULL,
        service_name TEXT NOT NULL,
        kind TEXT NOT NULL,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        status_code TEXT NOT NULL,
        status_message TEXT,
        agreement_id TEXT,
        attributes_json TEXT NOT NULL,
        events_json TEXT NOT NULL,
        PRIMARY KEY (trace_id, span_id)
    )
    """,
    "CREATE INDEX IF NOT EXISTS spans_start ON spans (start_ns)",
    "CREATE INDEX IF NOT EXISTS spans_root_start ON spans (start_ns) WHERE parent_span_id IS NULL",
    "CREATE INDEX IF NOT EXISTS spans_service ON spans (service_name, trace_id)",
    "CREATE INDEX IF NOT EXISTS spans_agreement ON spans (agreement_id, trace_id)",
    "CREATE INDEX IF NOT EXISTS spans_errors ON spans (start_ns) WHERE status_code = 'ERROR'",
)



def _connect(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode (we BEGIN ourselves), WAL, waiting on locks, schema ready."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
    )
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    enable_wal(conn, BUSY_TIMEOUT_MS / 1000)
    conn.execute("PRAGMA synchronous=NORMAL")  # spans are diagnostics, not money
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return conn


def _hex_trace(trace_id: int) -> str:
    return format(trace_id, "032x")


def _hex_span(span_id: int) -> str:
    return format(span_id, "016x")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _row(span: ReadableSpan) -> tuple[Any, ...]:
    ctx = span.context
    assert ctx is not None, "finished SDK spans always have a context"
    attributes = dict(span.attributes or {})
    events = [
        {"name": e.name, "timestamp_ns": e.timestamp, "attributes": dict(e.attributes or {})}
        for e in span.events
    ]
    agreement = attributes.get(attrs.AGREEMENT_ID)
    return (
        _hex_trace(ctx.trace_id),
        _hex_span(ctx.span_id),
        _hex_span(span.parent.span_id) if span.parent is not None else None,
        span.name,
        str(span.resource.attributes.get("service.name", "unknown_service")),
        span.kind.name,
        span.start_time or 0,
        span.end_time or span.start_time or 0,
        span.status.status_code.name,
        span.status.description,
        None if agreement is None else str(agreement),
        _json(attributes),
        _json(events),
    )


class SqliteSpanExporter(SpanExporter):
    """Writes each batch of finished spans in one SQLite transaction; safe across threads."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = _connect(self._path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        rows = [_row(span) for span in spans]
        with self._lock:
            if self._conn is None:
                return SpanExportResult.FAILURE
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    "INSERT OR REPLACE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
                )
                self._conn.execute("COMMIT")
            except sqlite3.Error:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # every export commits before returning


@dataclass(frozen=True, slots=True)
class StoredSpan:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    service_name: str
    kind: str
    start_ns: int
    end_ns: int
    status_code: str
    status_message: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def is_error(self) -> bool:
        return self.status_code == "ERROR"


@dataclass(frozen=True, slots=True)
class TraceSummary:
    trace_id: str
    root_name: str
    start_ns: int
    duration_ms: float
    span_count: int
    services: list[str]
    error: bool


class SpanStore:
    """Reads traces back from the file a `SqliteSpanExporter` writes (missing: starts empty)."""

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._conn = _connect(path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SpanStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def traces(
        self,
        limit: int = 20,
        service: str | None = None,
        agreement_id: str | None = None,
        since_ms: int | None = None,
    ) -> list[TraceSummary]:
        """The most recent traces first, optionally only those touching a service or agreement."""
        limit = max(0, min(limit, TRACES_LIMIT_MAX))
        where: list[str] = []
        params: list[Any] = []
        if service is not None:
            where.append("trace_id IN (SELECT trace_id FROM spans WHERE service_name = ?)")
            params.append(service)
        if agreement_id is not None:
            where.append("trace_id IN (SELECT trace_id FROM spans WHERE agreement_id = ?)")
            params.append(agreement_id)
        having = ""
        if since_ms is not None:
            having = "HAVING MIN(start_ns) >= ?"
            params.append(since_ms * 1_000_000)
        sql = f"""
            SELECT s.trace_id, MIN(s.start_ns), MAX(s.end_ns), COUNT(*),
                   json_group_array(DISTINCT s.service_name), MAX(s.status_code = 'ERROR'),
                   (SELECT r.name FROM spans r WHERE r.trace_id = s.trace_id
                    ORDER BY r.parent_span_id IS NOT NULL, r.start_ns LIMIT 1)
            FROM spans s
            {"WHERE " + " AND ".join(where) if where else ""}
            GROUP BY s.trace_id {having}
            ORDER BY MIN(s.start_ns) DESC
            LIMIT ?
        """
        params.append(limit)
        return [
            TraceSummary(
                trace_id=trace_id,
                root_name=root_name,
                start_ns=start_ns,
                duration_ms=(end_ns - start_ns) / 1_000_000,
                span_count=count,
                services=sorted(json.loads(services)),
                error=bool(error),
            )
            for trace_id, start_ns, end_ns, count, services, error, root_name in self._query(
                sql, params
            )
        ]

    def spans(self, trace_id: str) -> list[StoredSpan]:
        """Every stored span of one trace, in start order."""
        rows = self._query(
            "SELECT trace_id, span_id, parent_span_id, name, service_name, kind, start_ns, end_ns,"
            " status_code, status_message, attributes_json, events_json"
            " FROM spans WHERE trace_id = ? ORDER BY start_ns, span_id",
            (trace_id.lower(),),
        )
        return [
            StoredSpan(*row[:10], attributes=json.loads(row[10]), events=json.loads(row[11]))
            for row in rows
        ]

    def refusals(self, since_ms: int, limit: int = 50) -> list[tuple[str, int]]:
        """Requests refused since `since_ms`, counted by reason (the ErrorInfo reason the
        server answered with), most frequent first."""
        rows = self._query(
            "SELECT json_extract(attributes_json, '$.\"" + attrs.REFUSAL_REASON + "\"') AS reason,"
            " COUNT(*) FROM spans WHERE status_code = 'ERROR' AND start_ns >= ?"
            " AND kind = 'SERVER' AND reason IS NOT NULL"
            " GROUP BY reason ORDER BY COUNT(*) DESC, reason LIMIT ?",
            (since_ms * 1_000_000, limit))
        return [(str(reason), int(count)) for reason, count in rows]

    def last_trace_id(self) -> str | None:
        """The trace of the most recently started root span, the one `agentmarket trace` shows."""
        rows = self._query(
            "SELECT trace_id FROM spans WHERE parent_span_id IS NULL ORDER BY start_ns DESC LIMIT 1"
        )
        return rows[0][0] if rows else None
