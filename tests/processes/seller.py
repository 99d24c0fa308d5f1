"""A seller agent in its own process, for tests that span processes.

    python -m tests.processes.seller MARKETPLACE_ADDRESS SPAN_STORE_PATH

Prints its endpoint on the first line of stdout, then serves until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator

from pydantic import BaseModel

from agents import SellerAgent, per_call, skill
from marketplace.tracing import setup_tracing


class Upper(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def upper(text: str) -> Upper:
    """Upper-case a text."""
    return Upper(text=text.upper())


@skill(price=per_call("0.001", "USD"))
def spell(text: str) -> Iterator[str]:
    """Spell a text out in capitals, one letter at a time (a streamed skill)."""
    for letter in text:
        yield letter.upper()


def main() -> None:
    marketplace, spans = sys.argv[1], sys.argv[2]
    provider = setup_tracing("seller-process", span_store_path=spans, synchronous=True)
    seller = SellerAgent("upper", skills=[upper, spell], marketplace=marketplace,
                         tracer_provider=provider).serve()
    print(seller.endpoint, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    seller.stop(0)
    provider.shutdown()


if __name__ == "__main__":
    main()
