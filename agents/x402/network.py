"""The agentmarket ledger as an x402 network: its id, assets, payloads and signed bytes.

PROTOCOL.md, section 17 "x402 over agentmarket", is the normative text; this module is its
code. In short:

- network `agentmarket:<first 32 hex characters of the node's key>` (CAIP-2: namespace
  `agentmarket`, reference naming the node whose ledger settles);
- assets `USD`, `USDC`, `ECNY`, amounts in their atomic units (9 decimals, `wallets.currencies`);
- schemes `exact` (a per-call price) and `upto` (a per-call maximum; what is captured is what
  was metered);
- payloads (the `payload` object of an x402 PaymentPayload), told apart by `kind`:
  `open` (a buyer-signed agreement at the list price and its first PayWord voucher; a session),
  `voucher` (the next voucher of an open session), `authorization` (a signed one-off transfer,
  for resource servers that are not agentmarket sellers, through the facilitator).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from pydantic import ValidationError
from x402.schemas import PaymentPayload

from marketplace.identity import AgentKey, verify
from marketplace.receipt_verify import orjson_canonical
from marketplace.v1 import agreement_pb2
from wallets.currencies import CURRENCIES

NAMESPACE = "agentmarket"
EXACT, UPTO = "exact", "upto"
SCHEMES = (EXACT, UPTO)
ASSETS = tuple(sorted(CURRENCIES))
AUTHORIZATION_DOMAIN = b"agentmarket x402 authorization v1\n"
RESPONSE_DOMAIN = b"agentmarket x402 payment response v1\n"
MAX_PAYLOAD_FIELD_CHARS = 64 * 1024
# How deep a PaymentPayload may nest: a real one nests a few levels (an extension's schema);
# x402's extension checks recurse through the whole of it.
MAX_PAYLOAD_DEPTH = 32
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_NETWORK = re.compile(r"^agentmarket:[0-9a-f]{32}\Z")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class PayloadError(ValueError):
    """A payload that cannot be read: `reason` is the x402 error reason it earns."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def network_id(node_id: str) -> str:
    """The CAIP-2 id of the ledger of the node whose key is `node_id`."""
    return f"{NAMESPACE}:{node_id[:32]}"


def is_network(network: str) -> bool:
    return bool(_NETWORK.match(network))


def decimals(asset: str) -> int:
    return CURRENCIES[asset].scale


def canonical(value: Any) -> bytes:
    """RFC 8785 bytes for what these payloads hold (PROTOCOL.md 14.1): orjson's where it
    writes the standard library's bytes ten times faster (a chained receipt per call), the
    standard library's otherwise."""
    fast = orjson_canonical(value)
    if fast is not None:
        return fast
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def strict_loads(raw: bytes | str) -> Any:
    """JSON as `json.loads` reads it, refusing (ValueError) a lone surrogate escape such as
    \\ud800: `json.loads` takes it, but no UTF-8 encoder can write it back (canonical bytes, a
    fingerprint, a protobuf string), so it is the caller's malformed input, found here."""
    value = json.loads(raw)
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if _SURROGATE_ESCAPE.search(data):  # rare: pay for the full check only then
        canonical(value)  # UnicodeEncodeError (a ValueError) for a lone one
    return value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > MAX_PAYLOAD_FIELD_CHARS:
        raise PayloadError("invalid_payload", f"{what} must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError("invalid_payload", f"{what} is not base64") from None


def unhex(text: Any, what: str, size: int) -> bytes:
    if not isinstance(text, str) or len(text) != 2 * size:
        raise PayloadError("invalid_payload", f"{what} must be {size} bytes of hex")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise PayloadError("invalid_payload", f"{what} is not hex") from None


# ---- session payloads ----------------------------------------------------------------------


@dataclass(frozen=True)
class OpenPayload:
    """A session's first payment: the buyer-signed agreement and its first voucher; `finish`
    (the buyer's signature over `finish|<agreement id>`) makes it a one-call session."""

    agreement: agreement_pb2.SignedAgreement
    body: agreement_pb2.AgreementBody
    voucher: agreement_pb2.Voucher
    finish: bytes = b""


@dataclass(frozen=True)
class VoucherPayload:
    """The next voucher of an open session."""

    agreement_id: str
    voucher: agreement_pb2.Voucher


@dataclass(frozen=True)
class Authorization:
    """A signed one-off transfer: `payer` pays `amount` of `asset` to `pay_to` for `resource`
    on `network`, before `valid_before_ms`, once per `nonce`."""

    payer: str
    pay_to: str
    amount_atomic: int
    asset: str
    network: str
    resource: str
    valid_before_ms: int
    nonce: str
    signature: bytes

    def fields(self) -> dict[str, Any]:
        return {"amount": str(self.amount_atomic), "asset": self.asset, "from": self.payer,
                "network": self.network, "nonce": self.nonce, "resource": self.resource,
                "to": self.pay_to, "validBefore": self.valid_before_ms}

    def signed_bytes(self) -> bytes:
        return AUTHORIZATION_DOMAIN + canonical(self.fields())

    def verifies(self) -> bool:
        return verify(self.payer, self.signed_bytes(), self.signature)


def sign_authorization(key: AgentKey, *, pay_to: str, amount_atomic: int, asset: str,
                       network: str, resource: str, valid_before_ms: int, nonce: str
                       ) -> dict[str, Any]:
    """The `payload` object of an authorization (kind `authorization`)."""
    unsigned = Authorization(key.agent_id, pay_to, amount_atomic, asset, network, resource,
                             valid_before_ms, nonce, b"")
    return {"kind": "authorization", "authorization": unsigned.fields(),
            "signature": key.sign(unsigned.signed_bytes()).hex()}


def open_payload(agreement: agreement_pb2.SignedAgreement, voucher: agreement_pb2.Voucher,
                 finish: bytes = b"") -> dict[str, Any]:
    found: dict[str, Any] = {"kind": "open", "agreement": b64(agreement.SerializeToString()),
                             "voucher": b64(voucher.SerializeToString())}
    if finish:
        found["finish"] = finish.hex()
    return found


def is_v2(version: Any) -> bool:
    """`x402Version` is the integer 2 (not 2.0, "2" or true, which x402's decoder lets by)."""
    return type(version) is int and version == 2


def v2_payload(data: Any) -> PaymentPayload:
    """An x402 v2 PaymentPayload from its JSON, or PayloadError: x402's own decoder reads any
    `x402Version` but 1 (0, 3, "2", true ...) as v2, so the version is checked here first."""
    if not isinstance(data, dict):
        raise PayloadError("invalid_payload", "a PaymentPayload is a JSON object")
    if not is_v2(data.get("x402Version")):
        raise PayloadError("invalid_payload", "x402 v2 payloads only (x402Version 2)")
    if deeper_than(data, MAX_PAYLOAD_DEPTH):
        raise PayloadError("invalid_payload", f"a PaymentPayload nests at most "
                                              f"{MAX_PAYLOAD_DEPTH} levels deep")
    try:
        return PaymentPayload.model_validate(data)
    except ValidationError as error:
        raise PayloadError("invalid_payload", f"not an x402 v2 PaymentPayload: {error}"[:300]
                           ) from None


def deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests objects or arrays more than `limit` levels deep; walked
    without recursion, as what reads a payload later (x402's extension checks) recurses."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def voucher_payload(voucher: agreement_pb2.Voucher) -> dict[str, Any]:
    return {"kind": "voucher", "agreementId": voucher.agreement_id,
            "voucher": b64(voucher.SerializeToString())}


def atomic_text(amount: Any) -> bool:
    """Whether `amount` is an amount in atomic units as x402 writes one: a decimal string of
    ASCII digits, at most 19 (`str.isdigit` also takes superscript and non-Latin digits)."""
    return isinstance(amount, str) and amount.isascii() and amount.isdigit() \
        and 0 < len(amount) <= 19


def parse(payload: Any) -> OpenPayload | VoucherPayload | Authorization:
    """The payment in an x402 payload object, or PayloadError (`invalid_payload`)."""
    if not isinstance(payload, dict):
        raise PayloadError("invalid_payload", "the payload must be an object")
    kind = payload.get("kind")
    if kind == "open":
        signed = _message(agreement_pb2.SignedAgreement, payload.get("agreement"), "agreement")
        body = _message(agreement_pb2.AgreementBody, b64(signed.body), "agreement body")
        finish = payload.get("finish")
        return OpenPayload(signed, body, _voucher(payload),
                           unhex(finish, "finish", 64) if finish is not None else b"")
    if kind == "voucher":
        voucher = _voucher(payload)
        if payload.get("agreementId") != voucher.agreement_id:
            raise PayloadError("invalid_payload", "agreementId is not the voucher's agreement")
        return VoucherPayload(voucher.agreement_id, voucher)
    if kind == "authorization":
        return _authorization(payload)
    raise PayloadError("invalid_payload", "payload.kind is open, voucher or authorization")


def _voucher(payload: dict[str, Any]) -> agreement_pb2.Voucher:
    voucher = _message(agreement_pb2.Voucher, payload.get("voucher"), "voucher")
    if not _HEX64.match(voucher.agreement_id) or len(voucher.payword) != 32 \
            or voucher.payword_index < 1:
        raise PayloadError("invalid_payload", "the voucher names no agreement or word")
    return voucher


def _message(kind: Any, text: Any, what: str) -> Any:
    data = unb64(text, what)
    try:
        return kind.FromString(data)
    except DecodeError:
        raise PayloadError("invalid_payload", f"{what} is not a protobuf {kind.__name__}"
                           ) from None


def _authorization(payload: dict[str, Any]) -> Authorization:
    fields = payload.get("authorization")
    if not isinstance(fields, dict) or set(fields) != {
            "amount", "asset", "from", "network", "nonce", "resource", "to", "validBefore"}:
        raise PayloadError("invalid_payload", "authorization needs exactly amount, asset, "
                                              "from, network, nonce, resource, to, validBefore")
    amount, before = fields["amount"], fields["validBefore"]
    if not atomic_text(amount) or not isinstance(before, int) or isinstance(before, bool):
        raise PayloadError("invalid_payload", "amount is a decimal string, validBefore ms")
    texts = [fields[k] for k in ("asset", "from", "network", "nonce", "resource", "to")]
    if not all(isinstance(t, str) and len(t) <= 2048 for t in texts) \
            or not _HEX64.match(fields["from"]) or not 16 <= len(fields["nonce"]) <= 64:
        raise PayloadError("invalid_payload", "from is an agent id, nonce 16..64 characters")
    return Authorization(fields["from"], fields["to"], int(amount), fields["asset"],
                         fields["network"], fields["resource"], before, fields["nonce"],
                         unhex(payload.get("signature"), "signature", 64))
