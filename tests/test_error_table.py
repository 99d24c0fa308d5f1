"""The error table in SECURITY.md says, for every reason the code can send, its status.

The reasons are found in the code, not listed by hand: every `AgentmarketError` subclass (its
`reason` and `status`), every `reason="..."` given where one is raised (with that class's
status), and the statuses the gRPC edge sends itself (`_rich_status`, `_refuse`, ...). A reason
added, removed or moved to another status without the table following fails here, and the
message shows the rows to write.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from wallets.errors import AgentmarketError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("wallets", "marketplace", "agents")
EDGE_CALLS = {"_rich_status", "_refuse"}  # (grpc.StatusCode.X, message, "REASON")
ROW = re.compile(r"^\| `([A-Z_]+)` \| ([A-Z_]+) \| .+ \|$")


def _classes() -> dict[str, type[AgentmarketError]]:
    for package in PACKAGES:  # every module, so that every error class joins the hierarchy
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "v1" not in parts and "migrations" not in parts and "cli" not in parts:
                importlib.import_module(".".join(p for p in parts if p != "__init__"))
    found: dict[str, type[AgentmarketError]] = {}
    stack = [AgentmarketError]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


def _constants(value: ast.expr) -> list[str]:
    """The strings a `reason=` can take: a constant, or either side of `a if c else b`."""
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return [value.value]
    if isinstance(value, ast.IfExp):
        return _constants(value.body) + _constants(value.orelse)
    return []


def reasons_in_the_code() -> set[tuple[str, str]]:
    classes = _classes()
    found = {(cls.reason, cls.status) for cls in classes.values() if cls is not AgentmarketError}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "/v1/" in path.as_posix() or "/migrations/" in path.as_posix():
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in classes:
                    found |= {(value, classes[name].status) for kw in node.keywords
                              if kw.arg == "reason" for value in _constants(kw.value)}
                elif name in EDGE_CALLS:
                    codes = [a.attr for a in node.args if isinstance(a, ast.Attribute)
                             and getattr(a.value, "attr", "") == "StatusCode"]
                    texts = [a.value for a in node.args if isinstance(a, ast.Constant)
                             and isinstance(a.value, str) and a.value.isupper()]
                    if codes and texts:
                        found.add((texts[-1], codes[0]))
                elif name == "_streaming_refused":  # always UNAUTHENTICATED
                    found |= {(a.value, "UNAUTHENTICATED") for a in node.args
                              if isinstance(a, ast.Constant) and str(a.value).isupper()}
    return found


def reasons_in_the_table() -> set[tuple[str, str]]:
    text = (ROOT / "SECURITY.md").read_text()
    section = text.split("## Errors: what each reason means", 1)[1].split("\n## ", 1)[0]
    return {(m.group(1), m.group(2)) for line in section.splitlines()
            if (m := ROW.match(line))}


def test_the_error_table_lists_every_reason_with_its_status():
    code, table = reasons_in_the_code(), reasons_in_the_table()
    missing = sorted(code - table)
    assert not missing, "SECURITY.md's error table lacks:\n" + "\n".join(
        f"| `{reason}` | {status} | ... |" for reason, status in missing)
    assert not sorted(table - code), f"SECURITY.md lists reasons the code never sends: " \
                                     f"{sorted(table - code)}"


def test_each_reason_has_one_status():
    code = reasons_in_the_code()
    statuses: dict[str, set[str]] = {}
    for reason, status in code:
        statuses.setdefault(reason, set()).add(status)
    assert {r: s for r, s in statuses.items() if len(s) > 1} == {}
