"""EIP-3009 transfer authorizations: sign, verify and settle one, on its own.

A holder signs, off chain, the EIP-712 message TransferWithAuthorization(from, to, value,
validAfter, validBefore, nonce) for the token's domain (name, version, chainId, contract);
anyone may then submit it to the token, which moves the money once per nonce. This is what an
x402 `exact` payment on an EVM chain carries (`{"signature", "authorization": {...}}`), so a
facilitator is these two functions: `verify_authorization` (everything the chain will check,
without spending gas) and `settle_authorization` (submit it, signed by the facilitator's own
account, which pays the gas). The USDC rail (`wallets.evm.rail`) needs neither for its own
deposits and payouts; they are here for the facilitator of the x402 gateway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from web3 import Web3
from web3.contract import Contract

from wallets.errors import FailedPrecondition, InvalidArgument

TYPES = {"TransferWithAuthorization": [
    {"name": "from", "type": "address"}, {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"}, {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"}, {"name": "nonce", "type": "bytes32"}]}
GAS_LIMIT = 150_000


class AuthorizationRefused(FailedPrecondition):
    """An authorization the token would refuse: reason AUTHORIZATION_SIGNATURE, _NOT_YET_VALID,
    _EXPIRED, _USED, _INSUFFICIENT_BALANCE or _REVERTED."""

    reason = "AUTHORIZATION_REFUSED"


@dataclass(frozen=True, slots=True)
class TransferAuthorization:
    from_address: str
    to_address: str
    value_units: int
    valid_after_s: int
    valid_before_s: int
    nonce: bytes
    signature: bytes  # 65 bytes: r, s, v

    @classmethod
    def sign(cls, private_key: Any, token: Contract, to_address: str, value_units: int, *,
             nonce: bytes, valid_after_s: int = 0, valid_before_s: int | None = None,
             name: str, version: str) -> TransferAuthorization:
        """The holder's signature (its key never leaves it; `name`/`version`: the token's
        EIP-712 domain)."""
        account = Account.from_key(private_key)
        valid_before = valid_before_s if valid_before_s is not None else int(time.time()) + 3600
        auth = cls(account.address, Web3.to_checksum_address(to_address), value_units,
                   valid_after_s, valid_before, nonce, b"")
        signed = Account.sign_message(auth.signable(token, name=name, version=version),
                                      account.key)
        return replace(auth, signature=bytes(signed.signature))

    def message(self) -> dict[str, Any]:
        return {"from": self.from_address, "to": self.to_address, "value": self.value_units,
                "validAfter": self.valid_after_s, "validBefore": self.valid_before_s,
                "nonce": self.nonce}

    def signable(self, token: Contract, *, name: str, version: str) -> Any:
        domain = {"name": name, "version": version, "chainId": token.w3.eth.chain_id,
                  "verifyingContract": token.address}
        return encode_typed_data(domain_data=domain, message_types=TYPES,
                                 message_data=self.message())

    # ---- x402's exact EVM payload ----------------------------------------------------------

    def to_x402(self) -> dict[str, Any]:
        return {"signature": "0x" + self.signature.hex(), "authorization": {
            "from": self.from_address, "to": self.to_address, "value": str(self.value_units),
            "validAfter": str(self.valid_after_s), "validBefore": str(self.valid_before_s),
            "nonce": "0x" + self.nonce.hex()}}

    @classmethod
    def from_x402(cls, payload: dict[str, Any]) -> TransferAuthorization:
        try:
            auth = payload["authorization"]
            nonce = bytes.fromhex(auth["nonce"].removeprefix("0x"))
            signature = bytes.fromhex(payload["signature"].removeprefix("0x"))
            found = cls(Web3.to_checksum_address(auth["from"]),
                        Web3.to_checksum_address(auth["to"]), int(auth["value"]),
                        int(auth["validAfter"]), int(auth["validBefore"]), nonce, signature)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InvalidArgument(f"not an EIP-3009 authorization payload: {error}") from None
        if len(nonce) != 32 or len(signature) != 65 or found.value_units < 0:
            raise InvalidArgument("an authorization has a 32-byte nonce, a 65-byte signature "
                                  "and a non-negative value")
        return found


def verify_authorization(token: Contract, auth: TransferAuthorization, *, name: str,
                         version: str, now_s: int | None = None) -> str:
    """Check what the token will check, reading the chain but spending nothing; returns the
    signer (= the payer). Raises AuthorizationRefused with the reason."""
    recovered = Account.recover_message(auth.signable(token, name=name, version=version),
                                        signature=auth.signature)
    if recovered != auth.from_address:
        raise AuthorizationRefused(f"the signature is by {recovered}, not {auth.from_address}",
                                   reason="AUTHORIZATION_SIGNATURE")
    now = now_s if now_s is not None else int(token.w3.eth.get_block("latest").timestamp)
    if now <= auth.valid_after_s:
        raise AuthorizationRefused("the authorization is not valid yet",
                                   reason="AUTHORIZATION_NOT_YET_VALID")
    if now >= auth.valid_before_s:
        raise AuthorizationRefused("the authorization has expired",
                                   reason="AUTHORIZATION_EXPIRED")
    if token.functions.authorizationState(auth.from_address, auth.nonce).call():
        raise AuthorizationRefused("the authorization's nonce is already used",
                                   reason="AUTHORIZATION_USED")
    if token.functions.balanceOf(auth.from_address).call() < auth.value_units:
        raise AuthorizationRefused("the payer's balance is below the authorized value",
                                   reason="AUTHORIZATION_INSUFFICIENT_BALANCE")
    return recovered


def settle_authorization(token: Contract, auth: TransferAuthorization, relayer_key: Any, *,
                         name: str, version: str, timeout_s: float = 120) -> str:
    """Verify, then submit the authorization signed by the relayer (which pays the gas); wait
    for its receipt. Returns the transaction hash. Safe to repeat: a used nonce is refused by
    the token, so an authorization moves money at most once."""
    verify_authorization(token, auth, name=name, version=version)
    w3 = token.w3
    relayer = Account.from_key(relayer_key)
    r, s, v = auth.signature[:32], auth.signature[32:64], auth.signature[64]
    call = token.functions.transferWithAuthorization(
        auth.from_address, auth.to_address, auth.value_units, auth.valid_after_s,
        auth.valid_before_s, auth.nonce, v, r, s)
    base_fee = int(w3.eth.get_block("latest").get("baseFeePerGas", 0))
    tx = call.build_transaction({
        "from": relayer.address, "nonce": w3.eth.get_transaction_count(relayer.address),
        "gas": GAS_LIMIT, "maxPriorityFeePerGas": 10**9,
        "maxFeePerGas": 2 * base_fee + 10**9, "chainId": w3.eth.chain_id})
    signed = relayer.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout_s)
    if receipt.status != 1:
        raise AuthorizationRefused("the token reverted the authorization",
                                   reason="AUTHORIZATION_REVERTED")
    return "0x" + bytes(tx_hash).hex()
