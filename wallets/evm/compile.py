"""Recompile the token contract offline: `python -m wallets.evm.compile` (needs the dev extra's
vyper). Writes token.json (ABI, bytecode, compiler version, SHA-256 of the source) next to
token.vy; a test recompiles and compares, so the committed artifact always matches its source.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "token.vy"
ARTIFACT = HERE / "token.json"


def compile_token() -> dict[str, Any]:
    import vyper

    source = SOURCE.read_text()
    out = vyper.compile_code(source, output_formats=["abi", "bytecode"])
    return {"contract": "token.vy", "compiler": f"vyper {vyper.__version__}",
            "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
            "abi": out["abi"], "bytecode": out["bytecode"]}


def render(artifact: dict[str, Any]) -> str:
    return json.dumps(artifact, indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    ARTIFACT.write_text(render(compile_token()))
    print(f"wrote {ARTIFACT}")
