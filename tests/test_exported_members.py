"""Each package's public API is a sorted `__all__` of names that exist."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["agents", "marketplace", "wallets"])
def test_all_is_sorted_and_importable(package: str):
    module = importlib.import_module(package)
    names = module.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n)), "keep __all__ sorted"
    for name in names:
        assert hasattr(module, name), f"{package}.{name} is exported but missing"
        assert not name.startswith("_")
