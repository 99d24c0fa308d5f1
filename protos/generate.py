"""Regenerate the Python code for every .proto here (`make protos`).

Output mirrors the proto packages: protos/wallets/v1/*.proto -> wallets/v1/*_pb2*.py(i).
The tests call `generate()` into a scratch directory and compare, so stale code fails the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGES = ("wallets", "marketplace", "agents")


def proto_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (PROTO_ROOT / pkg / "v1").glob("*.proto"))


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    for pkg in PACKAGES:
        (out_dir / pkg / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for pkg in PACKAGES:
        init = out_dir / pkg / "v1" / "__init__.py"
        init.write_text('"""Generated from protos/; do not edit (run `make protos`)."""\n')


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT.parent)
