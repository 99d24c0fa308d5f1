"""The distribution: a wheel named agentmarket installs the three packages and the
`agentmarket` command, and the README's first program runs from outside the repository.

Issue 15 finding 11 (no install line; how a user installs what the README shows).

Kept fast: the wheel is built without build isolation (setuptools is in the project's
environment) and installed with --no-deps into a fresh venv made without pip; its dependencies
come from the project's environment, whose site-packages a .pth file puts on the fresh venv's
path (its editable install of this checkout is not activated there: that takes the
project venv's own .pth files, which a path entry does not run). So what is imported is the
wheel's copy of agents, marketplace and wallets, in the fresh venv, nothing from the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300


def _readme_program() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your first paid agent"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


@pytest.mark.slow
def test_the_wheel_installs_the_packages_and_the_command_and_runs_the_first_program(
        tmp_path: Path):
    source = tmp_path / "source"  # setuptools builds in the source tree: not the checkout's
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", ".agentmarket",
        "tests", "benchmarks", "examples", "*.db"))
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "--quiet", "-w", str(dist), str(source)],
                           capture_output=True, text=True, timeout=TIMEOUT_S)
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = list(dist.glob("*.whl"))
    assert [w.name for w in wheels] == ["agentmarket-0.1.0-py3-none-any.whl"]
    names = zipfile.ZipFile(wheels[0]).namelist()
    for package in ("agents", "marketplace", "wallets"):
        assert f"{package}/__init__.py" in names and f"{package}/v1/__init__.py" in names
        assert f"{package}/py.typed" in names  # typed (PEP 561)
        assert any(n.startswith(f"{package}/migrations/") for n in names), package
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in names)

    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                "get_paths()['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python),
                                "install", "--no-deps", "--quiet", str(wheels[0])],
                               capture_output=True, text=True, timeout=TIMEOUT_S)
    assert installed.returncode == 0, installed.stderr[-3000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "AGENTMARKET_HOME", "VIRTUAL_ENV")}
    where = subprocess.run([str(python), "-c", "import agents, marketplace, wallets; "
                            "print(agents.__file__, marketplace.__file__, wallets.__file__)"],
                           cwd=outside, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(path.startswith(str(site)) for path in where.stdout.split()), where.stdout

    command = subprocess.run([str(fresh / "bin" / "agentmarket"), "--help"], cwd=outside,
                             env=env, capture_output=True, text=True, timeout=120)
    assert command.returncode == 0 and "serve" in command.stdout, command.stderr[-2000:]

    program = outside / "first.py"
    program.write_text(_readme_program())
    ran = subprocess.run([str(python), str(program)], cwd=outside, env=env,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.startswith("1.00 USD") and "settled: seller paid" in ran.stdout
