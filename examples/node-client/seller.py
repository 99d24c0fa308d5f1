"""A seller of two skills for buyers written in any language (examples/node-client): `upper`
(one answer) and `spell` (streamed, a letter at a time), 0.001 USD a call each.

    python examples/node-client/seller.py MARKETPLACE_ADDRESS [SPAN_STORE_PATH]

Prints its endpoint on the first line of stdout, then serves until SIGTERM or Ctrl-C. Its
spans go to SPAN_STORE_PATH (an embedded span store) when given.
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
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python examples/node-client/seller.py MARKETPLACE_ADDRESS "
                 "[SPAN_STORE_PATH]")
    marketplace = sys.argv[1]
    spans = sys.argv[2] if len(sys.argv) == 3 else None
    provider = setup_tracing("seller-process", span_store_path=spans, synchronous=True) \
        if spans else None
    seller = SellerAgent("upper", skills=[upper, spell], marketplace=marketplace,
                         tracer_provider=provider).serve()
    print(seller.endpoint, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    seller.stop(0)
    if provider is not None:
        provider.shutdown()


if __name__ == "__main__":
    main()
