"""Each package's public API is a sorted `__all__` of exactly its public names (as httpx's
tests/test_exported_members.py pins httpx's): a name imported into a package without being
exported, or exported without existing, fails here."""

from __future__ import annotations

import importlib
import types

import pytest


@pytest.mark.parametrize("package", ["agents", "marketplace", "wallets"])
def test_all_is_sorted_and_importable(package: str):
    module = importlib.import_module(package)
    names = module.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n)), "keep __all__ sorted"
    for name in names:
        assert hasattr(module, name), f"{package}.{name} is exported but missing"
        assert not name.startswith("_")


@pytest.mark.parametrize("package", ["agents", "marketplace", "wallets"])
def test_all_is_exactly_the_public_names(package: str):
    module = importlib.import_module(package)
    public = {name for name, value in vars(module).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    lazy = set(getattr(module, "_LAZY", {}))  # loaded on first use by the package's __getattr__
    assert public | lazy == set(module.__all__)


def test_the_sdk_exports_its_whole_error_tree_and_results():
    import agents
    import agents.errors

    assert set(agents.errors.__all__) <= set(agents.__all__)
    for name in ("AsyncBuyerAgent", "Money", "Escrow", "Wallet", "Usage", "CallResult",
                 "AgreementState", "Deal"):
        assert name in agents.__all__
