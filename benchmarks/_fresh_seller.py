"""A seller with one LLM skill priced per token, in a process of its own (warm_start.py).

    python -m benchmarks._fresh_seller MARKETPLACE_ADDRESS warm|cold

Prints its endpoint once it serves, then serves until SIGTERM (it then withdraws its listing).
"""

from __future__ import annotations

import sys
import time

from pydantic import BaseModel

from agents import SellerAgent, model_price, skill
from agents.llm import complete, text_of

MODEL = "gpt-4o-mini"


class Summary(BaseModel):
    summary: str


@skill(price=model_price(MODEL, "USD", markup_bps=2_000), max_input_tokens=1_000,
       max_output_tokens=100)
def summarize(text: str) -> Summary:
    """Summarise a text in one sentence."""
    reply = complete(MODEL, [{"role": "user", "content": f"Summarise: {text}"}],
                     mock_response=f"In short: {text[:40]}")
    return Summary(summary=text_of(reply))


def main() -> None:
    address, mode = sys.argv[1], sys.argv[2]
    seller = SellerAgent("fresh", skills=[summarize], marketplace=address)
    seller.serve(warm=mode == "warm")
    print(seller.endpoint, flush=True)
    while True:  # SIGTERM ends it: the seller is stopped at exit (agents._lifecycle)
        time.sleep(1)


if __name__ == "__main__":
    main()
