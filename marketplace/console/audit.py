"""The audit trail of the console: every operator action, who did it and what came of it.

A row is written before the signed request goes to the node (outcome "pending") and completed
with its answer ("done" or "refused", with the node's message). A row left "pending" means the
console stopped between the two: the request may or may not have been applied, and the node's
own records (the approval's `decided_by`, the alert's actor, the dispute's note) say which.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, func, insert, or_, select, update

from marketplace.tables import OperatorActionRow
from wallets.store import begin_in_turn

ACTIONS = OperatorActionRow.__table__  # type: ignore[attr-defined]
MAX_MESSAGE = 2000
PAGE_MAX = 500


@dataclass(frozen=True, slots=True)
class ActionRecord:
    action_id: str
    at_ms: int
    operator: str
    session: str
    key_id: str
    action: str
    target: str
    detail: dict[str, Any]
    outcome: str
    message: str
    trace_id: str


class AuditTrail:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def begin(self, *, at_ms: int, operator: str, session: str, key_id: str, action: str,
              target: str, detail: dict[str, Any], trace_id: str) -> str:
        """Record an action about to be sent; returns its id for `finish`."""
        action_id = uuid.uuid4().hex
        with begin_in_turn(self.engine) as conn:
            conn.execute(insert(ACTIONS).values(
                id=action_id, at_ms=at_ms, operator=operator, session=session, key_id=key_id,
                action=action, target=target[:64], detail=json.dumps(detail, sort_keys=True),
                outcome="pending", message="", trace_id=trace_id))
        return action_id

    def finish(self, action_id: str, outcome: str, message: str) -> None:
        with begin_in_turn(self.engine) as conn:
            conn.execute(update(ACTIONS).where(ACTIONS.c.id == action_id).values(
                outcome=outcome, message=message[:MAX_MESSAGE]))

    def records(self, *, target: str = "", limit: int = 100, before_ms: int = 0,
                before_id: str = "") -> list[ActionRecord]:
        """Newest first (ties by id); `target` narrows to one approval, wallet or agreement;
        (`before_ms`, `before_id`): the page after the record with that time and id (actions
        of one millisecond may span two pages; none is skipped)."""
        query = select(ACTIONS).order_by(ACTIONS.c.at_ms.desc(), ACTIONS.c.id.desc()).limit(
            max(1, min(limit, PAGE_MAX)))
        if target:
            query = query.where(ACTIONS.c.target == target)
        if before_ms and before_id:
            query = query.where(or_(ACTIONS.c.at_ms < before_ms, and_(
                ACTIONS.c.at_ms == before_ms, ACTIONS.c.id < before_id)))
        elif before_ms:
            query = query.where(ACTIONS.c.at_ms < before_ms)
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            return [ActionRecord(r.id, r.at_ms, r.operator, r.session, r.key_id, r.action,
                                 r.target, json.loads(r.detail or "{}"), r.outcome, r.message,
                                 r.trace_id) for r in conn.execute(query)]

    def count(self) -> int:
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            return int(conn.execute(select(func.count()).select_from(ACTIONS)).scalar() or 0)
