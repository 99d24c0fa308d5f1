"""An async buyer's connections: to its marketplace node, and to each seller it dials.

Sellers come from listings strangers advertise, so the seller connections kept are bounded
(`marketplace.channel_cache`): the least recently used seller's channels are closed beyond
MAX_CHANNELS, gracefully, so that calls still running on them may end (up to LINGER_S).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from opentelemetry.trace import TracerProvider

from agents.v1 import agent_pb2_grpc
from marketplace.aio_client import aio_channel, bare_aio_channel
from marketplace.channel_cache import ChannelCache, GracefulClose
from marketplace.identity import AgentKey
from marketplace.v1 import registry_pb2_grpc, settlement_pb2_grpc
from wallets.v1 import wallet_pb2_grpc


@dataclass
class Market:
    channel: grpc.aio.Channel
    registry: registry_pb2_grpc.RegistryServiceStub
    settlement: settlement_pb2_grpc.SettlementServiceStub
    wallets: wallet_pb2_grpc.WalletServiceStub


@dataclass
class Seller:
    """A seller seen through a signing channel, an unsigned one (tracing only) and a bare one
    (no interceptor: a call revealing a new payword, its own proof, while tracing is off)."""

    signed_channel: grpc.aio.Channel
    unsigned_channel: grpc.aio.Channel
    bare_channel: grpc.aio.Channel
    signed: agent_pb2_grpc.AgentServiceStub
    unsigned: agent_pb2_grpc.AgentServiceStub
    bare: agent_pb2_grpc.AgentServiceStub

    def channels(self) -> tuple[grpc.aio.Channel, ...]:
        return self.signed_channel, self.unsigned_channel, self.bare_channel


class SellerChannels:
    """Each dialed seller's `Seller`, made on first use in the buyer's event loop."""

    def __init__(self, key: AgentKey, credentials: grpc.ChannelCredentials | None,
                 tracer_provider: TracerProvider | None) -> None:
        self.key, self.credentials, self.tracer_provider = key, credentials, tracer_provider
        self._retired = GracefulClose()
        self._cache: ChannelCache[Seller] = ChannelCache(
            self._open, lambda seller: self._retired.retire(*seller.channels()), linger_s=0)

    def get(self, endpoint: str) -> Seller:
        return self._cache.get(endpoint)

    def _open(self, endpoint: str) -> Seller:
        signed = aio_channel(endpoint, self.key, self.credentials,
                             tracer_provider=self.tracer_provider)
        unsigned = aio_channel(endpoint, None, self.credentials,
                               tracer_provider=self.tracer_provider)
        bare = bare_aio_channel(endpoint, self.credentials)
        return Seller(signed, unsigned, bare, agent_pb2_grpc.AgentServiceStub(signed),
                      agent_pb2_grpc.AgentServiceStub(unsigned),
                      agent_pb2_grpc.AgentServiceStub(bare))

    async def aclose(self, *others: grpc.aio.Channel) -> None:
        """Close every seller's channels now (and `others`): the buyer is done."""
        await self._retired.aclose(
            *(c for seller in self._cache.drain() for c in seller.channels()), *others)


__all__ = ["Market", "Seller", "SellerChannels"]
