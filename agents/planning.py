"""The buyer workflow's plan step: a task in words -> the skill to buy and the calls to make.

    plan_task("gpt-4o-mini", "Summarise these three abstracts: ...")
    -> {"skill": "summarize", "inputs": [{"text": "..."}, ...]}

The model (any litellm model; `mock_response` offline) answers in JSON; the answer is checked
(a skill name, 1..MAX_CALLS input objects) before anything is bought.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agents.errors import InvalidArgument
from agents.llm import complete, text_of

MAX_CALLS = 1000
_SKILL = re.compile(r"^[a-z0-9_.-]{1,64}\Z")
SYSTEM = (
    "You plan work to buy from other agents. Answer with one JSON object only: "
    '{"skill": "<skill name to buy>", "inputs": [<one JSON object per call>]}.'
)


def plan_task(model: str, task: str, *, mock_response: str | None = None,
              **completion_kwargs: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task}]
    reply = text_of(complete(model, messages, mock_response=mock_response, **completion_kwargs))
    start = reply.find("{")
    try:
        plan, _end = json.JSONDecoder().raw_decode(reply[start:]) if start >= 0 else ({}, 0)
    except ValueError:
        plan = {}
    skill, inputs = plan.get("skill"), plan.get("inputs")
    if not isinstance(skill, str) or not _SKILL.match(skill):
        raise InvalidArgument(f"the planner named no valid skill: {reply[:200]!r}")
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_CALLS or not all(
            isinstance(item, dict) for item in inputs):
        raise InvalidArgument(f"the planner gave no list of 1..{MAX_CALLS} input objects")
    return {"skill": skill, "inputs": inputs}
