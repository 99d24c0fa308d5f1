"""The README says what the code does: its command table is `--help`'s, it shows how to install,
how LLM skills are billed and how to keep litellm offline at import.

Issue 15 findings 6 (the command table hid `agreements --db` and said `--operator KEYHEX` where
`--help` says an agent id), 11 (no install line), 2 (agents.llm.complete, mock_response and the
token bounds were not named) and 12 (importing litellm before agents waited on the network).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from marketplace.cli.main import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(title)
    following = README.find("\n## ", start + len(title))
    return README[start:following if following > 0 else len(README)]


def _cli_commands() -> dict[str, set[str]]:
    """'agentmarket trace last' -> its options (aliases, and an on/off flag's two halves,
    joined by '/'), from the CLI itself."""
    found: dict[str, set[str]] = {}

    def walk(command, path: list[str]) -> None:  # type: ignore[no-untyped-def]
        subcommands = getattr(command, "commands", None) or {}
        options = {"/".join([*p.opts, *p.secondary_opts]) for p in command.params
                   if p.param_type_name == "option" and "--help" not in p.opts}
        if path and (not subcommands or options):
            found[" ".join(["agentmarket", *path])] = options
        for name, sub in subcommands.items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def _documented() -> dict[str, set[str]]:
    """The command table's invocations: command -> the options it shows (over every row that
    shows it)."""
    table = _section("## The command line")
    rows = [line for line in table.splitlines() if line.startswith("| `agentmarket")]
    commands = _cli_commands()
    documented: dict[str, set[str]] = {}
    for row in rows:
        first_column = row.split(" | ")[0]
        for snippet in re.findall(r"`(agentmarket [^`]+)`", first_column):
            name = max((c for c in commands if snippet == c or snippet.startswith(c + " ")),
                       key=len, default=None)
            assert name is not None, f"the README documents {snippet!r}, which does not exist"
            documented.setdefault(name, set()).update(re.findall(r"(--[a-z][a-z-]*)", snippet))
    return documented


def test_the_command_table_matches_the_cli_exactly():
    commands, documented = _cli_commands(), _documented()
    assert set(documented) == set(commands), "every command is in the table, and only those"
    for name, options in commands.items():
        shown = documented[name]
        for option in options:
            assert set(option.split("/")) & shown, f"{name}: {option} is not in the README"
        every_alias = {alias for option in options for alias in option.split("/")}
        assert shown <= every_alias, f"{name}: the README shows {shown - every_alias}"


def test_the_table_names_agent_ids_as_help_does():
    table = _section("## The command line")
    assert "KEYHEX" not in table and "--operator ID" in table and "--arbiter ID" in table
    assert "agentmarket agreements [--db URL]" in table


def test_the_readme_shows_how_to_install():
    install = _section("## Install")
    assert "pip install ." in install and "agentmarket-0.1.0-py3-none-any.whl" in install


def test_the_readme_says_how_llm_skills_are_billed():
    llm = _section("### Skills that call LLMs")
    for named in ("agents.llm.complete", "acomplete", "mock_response", "max_input_tokens",
                  "max_output_tokens", "litellm.completion", "litellm.callbacks",
                  "LITELLM_LOCAL_MODEL_COST_MAP"):
        assert named in llm, named


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_importing_agents_then_litellm_as_the_readme_says_never_fetches(tmp_path: Path):
    done = _python("import agents, litellm, json\n"
                   "from litellm.litellm_core_utils.get_model_cost_map import "
                   "get_model_cost_map_source_info as info\n"
                   "print(json.dumps(info()))", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    source = json.loads(done.stdout.strip().splitlines()[-1])
    assert source["source"] == "local" and source["is_env_forced"], source
    assert not source["fallback_reason"], "litellm tried the network"


def test_agents_warns_when_litellm_came_first_without_the_variable(tmp_path: Path):
    # a stand-in for litellm already imported (the real one would spend seconds on the network)
    done = _python("import sys, types\nsys.modules['litellm'] = types.ModuleType('litellm')\n"
                   "import agents", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "litellm was imported before agents" in done.stderr
