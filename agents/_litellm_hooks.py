"""Every litellm call a paid skill makes is metered, through litellm's own callback API.

`agents.llm.complete` and `stream` record usage themselves, but a skill may call
`litellm.completion`, `litellm.acompletion` or a stream of either directly. `MeteringCallback`
(a `litellm.integrations.custom_logger.CustomLogger` in `litellm.callbacks`) sees them all:

- before the call (`log_pre_api_call`, in the caller's thread, where the paid call's meter is
  current): the prompt is counted with the model's tokenizer and billed at once, and the call
  is remembered by its litellm call id;
- when litellm reports success (`log_success_event` / `async_log_success_event`, from its
  logging thread or event loop, for a stream once it is consumed): the reported usage replaces
  the count; on failure the prompt is taken off again.

The seller waits briefly for those reports before it bills a unary call, and bills by rule a
call whose report never came (`Meter.settle_llm`). Calls made by `agents.llm` are skipped here
(`sdk_call`), so nothing is counted twice. Calls made from threads a skill starts itself carry
no meter (context variables do not cross threads): they record nothing, and the "no usage"
rule applies (`agents._serving`).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import weakref
from typing import Any

from agents._context import Scoped
from agents._tokens import count_tokens, load_litellm
from agents.metering import Meter, _current

log = logging.getLogger("agentmarket.llm")
_sdk_call: contextvars.ContextVar[bool] = contextvars.ContextVar("agentmarket_sdk_llm_call",
                                                                 default=False)
_install_lock = threading.Lock()
_installed: Any = None


def sdk_call() -> Scoped[bool]:
    """`with sdk_call():` the litellm call inside is metered by agents.llm itself."""
    return Scoped(_sdk_call, True)


def _usage(response: Any) -> tuple[int, int] | None:
    usage = getattr(response, "usage", None)
    if usage is None and isinstance(response, dict):
        usage = response.get("usage")
    if usage is None:
        return None
    get = usage.get if isinstance(usage, dict) else lambda k, d=0: getattr(usage, k, d)
    return int(get("prompt_tokens", 0) or 0), int(get("completion_tokens", 0) or 0)


def _make_callback() -> Any:
    from litellm.integrations.custom_logger import CustomLogger

    class MeteringCallback(CustomLogger):  # type: ignore[misc]
        """Bills the litellm calls of paid skills (see the module docstring)."""

        def __init__(self) -> None:
            super().__init__()
            # call id -> the meter it counts on, for reports made outside the caller's context
            self._meters: weakref.WeakValueDictionary[str, Meter] = \
                weakref.WeakValueDictionary()

        def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
            meter = _current.get()
            if meter is None or _sdk_call.get():
                return
            call_id = str((kwargs or {}).get("litellm_call_id") or "")
            if not call_id:
                return
            try:
                prompt = count_tokens(str(model or ""), messages=list(messages or []))
            except Exception:  # a prompt the tokenizer cannot read: its report will say
                prompt = 0
            self._meters[call_id] = meter
            meter.begin_llm(call_id, prompt)

        def _done(self, kwargs: Any, response: Any, ok: bool) -> None:
            call_id = str((kwargs or {}).get("litellm_call_id") or "")
            meter = self._meters.pop(call_id, None) if call_id else None
            if meter is None:
                return
            if not ok:
                meter.end_llm(call_id, None, 0)
                return
            found = _usage(response) or _usage((kwargs or {}).get("complete_streaming_response"))
            if found is None:
                return  # no usage reported: it stays pending, billed by rule at settlement
            meter.end_llm(call_id, *found)

        def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                              end_time: Any) -> None:
            self._done(kwargs, response_obj, True)

        async def async_log_success_event(self, kwargs: Any, response_obj: Any,
                                          start_time: Any, end_time: Any) -> None:
            self._done(kwargs, response_obj, True)

        def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                              end_time: Any) -> None:
            self._done(kwargs, response_obj, False)

        async def async_log_failure_event(self, kwargs: Any, response_obj: Any,
                                          start_time: Any, end_time: Any) -> None:
            self._done(kwargs, response_obj, False)

    return MeteringCallback()


def install() -> Any:
    """Add the metering callback to `litellm.callbacks` once per process (idempotent, and kept
    there if an application resets the list: re-added on the next paid call)."""
    global _installed
    litellm = load_litellm()
    with _install_lock:
        if _installed is None:
            _installed = _make_callback()
        if _installed not in litellm.callbacks:
            litellm.callbacks.append(_installed)
    return _installed


def installed() -> bool:
    """Whether the callback is in litellm's list now (cheap: for the paid-call path)."""
    import sys

    litellm = sys.modules.get("litellm")
    return litellm is not None and _installed is not None and _installed in litellm.callbacks
