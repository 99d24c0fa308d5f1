"""x402 `exact` on an EVM chain through agentmarket's facilitator: a third-party resource server
(x402's FastAPI middleware and HTTP facilitator client) prices a route in the sandbox USDC token
on the in-process chain; x402's own EVM client signs an EIP-3009 authorisation with the payer's
Ethereum key; the gateway's facilitator verifies it against the chain (reached over JSON-RPC)
and settles it on chain. The chain's own balances show the payment, once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("web3", reason="the EVM rail needs the evm extra (web3, eth-tester)")

from eth_account import Account
from fastapi import FastAPI
from x402 import x402Client, x402ResourceServer
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.http.clients.httpx import x402AsyncTransport
from x402.http.middleware.fastapi import payment_middleware
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
)
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact import (
    register_exact_evm_client,
    register_exact_evm_server,
)

from agents.x402 import Gateway
from agents.x402.evm import EvmSettlement, evm_network
from marketplace.http import HttpServer
from marketplace.node import MarketplaceNode
from wallets.evm.chain import sandbox_chain
from wallets.evm.rpc import ChainRpcServer

PRICE_UNITS = 250_000  # 0.25 USDC (6 decimals)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    chain = sandbox_chain()
    rpc = ChainRpcServer(chain).start()
    settler, payer, merchant = Account.create(), Account.create(), Account.create()
    chain.fund_gas(settler.address)  # the facilitator pays the gas of what it submits
    chain.mint(payer.address, 1_000_000)
    chain.mine()
    tmp: Path = tmp_path_factory.mktemp("x402-evm")
    node = MarketplaceNode(f"sqlite:///{tmp / 'market.db'}", sweep_interval_s=3600).start()
    gateway = Gateway(node, evm=EvmSettlement(rpc.url, settler.key.hex()))
    facilitator_http = HttpServer(gateway.app()).start()
    network = evm_network(chain.w3.eth.chain_id)
    server = x402ResourceServer(HTTPFacilitatorClient(FacilitatorConfig(
        url=f"{facilitator_http.url}/facilitator")))
    register_exact_evm_server(server, network)
    app = FastAPI()
    routes = {"GET /report": {"accepts": {
        "scheme": "exact", "payTo": merchant.address, "network": network,
        "price": {"amount": str(PRICE_UNITS), "asset": chain.token.address,
                  "extra": {"name": chain.name, "version": chain.version}}}}}
    middleware = payment_middleware(routes, server)

    @app.middleware("http")
    async def pay(request, call_next):  # type: ignore[no-untyped-def]
        return await middleware(request, call_next)

    @app.get("/report")
    async def report() -> dict:
        return {"report": "ready"}

    resource = HttpServer(app).start()
    yield {"chain": chain, "payer": payer, "merchant": merchant, "network": network,
           "url": f"{resource.url}/report", "gateway": gateway,
           "facilitator": facilitator_http.url}
    resource.stop(0)
    facilitator_http.stop(0)
    node.stop(0)
    rpc.stop()


def _balance(world: dict[str, Any], account: Any) -> int:
    return int(world["chain"].token.functions.balanceOf(account.address).call())


def _client(world: dict[str, Any], account: Any) -> x402Client:
    """x402's EVM client, told to pay in the sandbox token (x402 pays only tokens it knows
    unless the buyer lists others, with a cap per payment)."""
    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(account), world["network"])
    client.set_spend_controls({"allowed_assets": [{
        "network": world["network"], "asset": world["chain"].token.address,
        "max_amount_per_payment": str(PRICE_UNITS)}]})
    return client


def test_x402s_evm_client_pays_and_the_facilitator_settles_on_chain(world):
    client = _client(world, world["payer"])

    async def run() -> tuple[httpx.Response, httpx.Response]:
        sent: list[httpx.Request] = []

        class Recording(httpx.AsyncHTTPTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                sent.append(request)
                return await super().handle_async_request(request)

        async with httpx.AsyncClient(transport=x402AsyncTransport(client, Recording()),
                                     timeout=60) as http:
            paid = await http.get(world["url"])
            replay = await http.get(world["url"], headers={
                "PAYMENT-SIGNATURE": sent[-1].headers["payment-signature"]})
        return paid, replay

    before = _balance(world, world["payer"])
    paid, replay = asyncio.run(run())
    assert paid.status_code == 200, decode_payment_response_header(
        paid.headers["payment-response"])
    assert paid.json() == {"report": "ready"}
    settled = decode_payment_response_header(paid.headers["payment-response"])
    assert settled.success and settled.network == world["network"]
    assert settled.payer.lower() == world["payer"].address.lower()
    receipt = world["chain"].w3.eth.get_transaction_receipt(settled.transaction)
    assert receipt.status == 1 and receipt.to == world["chain"].token.address
    assert _balance(world, world["merchant"]) == PRICE_UNITS
    assert _balance(world, world["payer"]) == before - PRICE_UNITS
    # the same signed authorisation again: the chain has used its nonce, nothing moves twice
    assert replay.status_code == 402
    assert decode_payment_required_header(replay.headers["payment-required"]).error
    assert _balance(world, world["merchant"]) == PRICE_UNITS


def test_the_facilitator_lists_the_chain(world):
    supported = httpx.get(f"{world['facilitator']}/facilitator/supported").json()
    kinds = {(kind["scheme"], kind["network"]) for kind in supported["kinds"]}
    assert ("exact", world["network"]) in kinds


def test_an_authorisation_beyond_the_payers_balance_is_refused_and_moves_nothing(world):
    client = _client(world, Account.create())  # holds no token

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=x402AsyncTransport(client), timeout=60) as http:
            return await http.get(world["url"])

    merchant_before = _balance(world, world["merchant"])
    refused = asyncio.run(run())
    assert refused.status_code == 402
    assert "insufficient" in decode_payment_required_header(
        refused.headers["payment-required"]).error.lower()
    assert _balance(world, world["merchant"]) == merchant_before
