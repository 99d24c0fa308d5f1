"""litellm, loaded offline, and its tokenizers: what metering needs to count tokens.

`load_litellm()` imports litellm with LITELLM_LOCAL_MODEL_COST_MAP=True unless the environment
says otherwise, so the import reads litellm's bundled cost map and never waits on the network
(`agents` sets the variable when it is imported; a program importing litellm first must set
it itself, see the README). No project imports here: metering and the callbacks use it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

COST_MAP_ENV = "LITELLM_LOCAL_MODEL_COST_MAP"
DEFAULT_MODEL = "gpt-4o-mini"


def load_litellm() -> Any:
    os.environ.setdefault(COST_MAP_ENV, "True")
    import litellm

    return litellm


@functools.lru_cache(maxsize=32)
def _tokenizer(model: str) -> Any:
    """litellm's tokenizer for `model`, selected once (token_counter selects it per call)."""
    try:
        from litellm.utils import _select_tokenizer

        return _select_tokenizer(model)["tokenizer"]
    except Exception:  # a litellm without it: count through token_counter
        return None


def count_tokens(model: str, text: str = "", messages: list[dict[str, Any]] | None = None
                 ) -> int:
    """Tokens in `text` (or chat `messages`) for `model`, with litellm's tokenizer for it."""
    litellm = load_litellm()
    model = model or DEFAULT_MODEL
    if messages is not None:
        return int(litellm.token_counter(model=model, messages=messages))
    if not text:
        return 0
    tokenizer = _tokenizer(model)
    if tokenizer is None:
        return int(litellm.token_counter(model=model, text=text))
    encoded = tokenizer.encode(text)
    return len(getattr(encoded, "ids", encoded))
