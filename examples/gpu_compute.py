"""A GPU compute seller billed per GPU-second, with escrow.

The seller prices its `train` skill per unit ("gpu_second") and declares the most one job may
use; escrow holds that maximum for every job the buyer expects. Each job meters the seconds it
actually used, and the buyer pays exactly those: the rest of the escrow comes back.
"""

import tempfile
import time

from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, current_meter, per_unit, skill
from marketplace import MarketplaceNode
from wallets import currency


class Job(BaseModel):
    steps: int
    loss: str
    gpu_seconds: int


@skill(price=per_unit("0.0004", "USD", "gpu_second"), max_units=3_600)
def train(steps: int) -> Job:
    """Train for `steps` steps (simulated: each step takes 12 GPU-seconds)."""
    started = time.monotonic()
    loss = 1.0 / (1 + steps)
    gpu_seconds = steps * 12 + int(time.monotonic() - started)
    current_meter().add_units(gpu_seconds)  # what this job is billed for
    return Job(steps=steps, loss=f"{loss:.4f}", gpu_seconds=gpu_seconds)


usd = currency("USD")
with MarketplaceNode(f"sqlite:///{tempfile.mkdtemp()}/market.db") as node:
    gpus = SellerAgent("gpu-farm", skills=[train], marketplace=node.address).serve()
    lab = BuyerAgent("lab", marketplace=node.address)
    lab.fund("10.00", "USD")

    listing = lab.discover("train", currency="USD")[0]
    deal = lab.negotiate(listing, "train", quantity=3, budget="5.00", currency="USD")
    escrow = lab.hire(deal)
    price = deal.body.terms.unit_price_atomic
    print(f"{usd.format(price)} per {deal.body.terms.unit_name}; escrow holds "
          f"{usd.format(escrow.held_atomic)} (3 jobs x up to 3600 GPU-seconds)")
    for steps in (10, 40, 25):
        job = lab.invoke(deal, {"steps": steps})
        print(f"job of {steps:>2} steps: {job.usage.units:>4} GPU-seconds, loss "
              f"{job.output['loss']}, charged {usd.format(job.usage.charged_atomic)}")
    escrow = lab.finish(deal)
    print(f"paid {usd.format(escrow.captured_atomic)}, "
          f"refunded {usd.format(escrow.refunded_atomic)}")
    gpus.stop()
    lab.close()
