"""Agent Cards (A2A v1.0) for listings: skills as AgentSkills, prices in the payment extension.

    card = listing_card(listing, marketplace="127.0.0.1:7000", key=seller_key)
    card_json = card_dict(card)          # what /.well-known/agent-card.json serves

AgentSkill has no price field (a2aproject/A2A#142), so each skill's price model, currencies,
verification methods and JSON schemas go in `capabilities.extensions[]` (the payment
extension, `marketplace.a2a_extension.URI`), under `params.skills[<skill id>]`. The card is
signed as A2A says (AgentCardSignature: a JWS over the RFC 8785 canonical card without its
signatures) with an ed25519 key, alg EdDSA, `kid` the signer's agent id: a seller signs its own
card, the node signs the catalogue's copies. a2a-sdk's signer does the canonical form and the
JWS; any JOSE library verifies it (the public key is the agent id's 32 bytes, an OKP JWK).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from a2a.types import a2a_pb2
from google.protobuf import json_format

from marketplace import a2a_extension as ext
from marketplace.identity import AgentKey
from marketplace.v1 import registry_pb2

PROTOCOL_VERSION = "1.0"
JSON = "application/json"
TEXT = "text/plain"
CARD_PATH = "/.well-known/agent-card.json"


def _single_text_field(schema: dict[str, Any]) -> str:
    """The one string property an input schema requires ('' if not exactly one): a text part
    is then that property."""
    if not isinstance(schema, dict):  # true or false: a valid schema with no properties
        return ""
    props = schema.get("properties") or {}
    strings = [name for name, spec in props.items()
               if isinstance(spec, dict) and spec.get("type") == "string"]
    return strings[0] if len(strings) == 1 and len(props) == 1 else ""


def agent_skill(skill: registry_pb2.Skill, *, streams: bool = False) -> a2a_pb2.AgentSkill:
    schema = json.loads(skill.input_schema_json or "{}")
    inputs = [JSON, TEXT] if _single_text_field(schema) else [JSON]
    return a2a_pb2.AgentSkill(id=skill.name, name=skill.name,
                              description=skill.description or skill.name,
                              tags=list(skill.tags) or [skill.name], input_modes=inputs,
                              output_modes=[TEXT, JSON] if streams else [JSON])


def skill_params(skill: registry_pb2.Skill, *, free: bool = False, streams: bool = False
                 ) -> dict[str, Any]:
    return {"free": free, "streams": streams,
            "prices": [] if free else [ext.price_params(p) for p in skill.prices],
            "verificationMethods": [ext.VERIFICATIONS.get(v, str(v))
                                    for v in skill.verification_methods],
            "inputSchema": json.loads(skill.input_schema_json or "{}"),
            "outputSchema": json.loads(skill.output_schema_json or "{}")}


def listing_card(listing: registry_pb2.Listing, *, marketplace: str, key: AgentKey | None,
                 free: frozenset[str] = frozenset(), streaming: frozenset[str] = frozenset(),
                 card_url: str = "") -> a2a_pb2.AgentCard:
    """The card of a listing. `free`: skills any A2A client calls without paying;
    `streaming`: skills whose text streams (SendStreamingMessage); `key`: signs the card."""
    currencies = sorted({p.currency for s in listing.skills if s.name not in free
                         for p in s.prices})
    params = {"version": "1", "agentId": listing.agent_id, "marketplace": marketplace,
              "currencies": currencies,
              "negotiate": {"service": "agents.v1.AgentService", "method": "Negotiate",
                            "endpoint": listing.endpoint},
              "skills": {s.name: skill_params(s, free=s.name in free,
                                              streams=s.name in streaming)
                         for s in listing.skills}}
    if card_url:
        params["cardUrl"] = card_url
    extension = a2a_pb2.AgentExtension(
        uri=ext.URI, required=False,
        description="Priced skills: pay per call with PayWord vouchers under an agreement "
                    "negotiated and escrowed at the marketplace (PROTOCOL.md)")
    extension.params.update(params)
    card = a2a_pb2.AgentCard(
        name=listing.name, description=f"agentmarket seller {listing.name}: "
        + ", ".join(s.name for s in listing.skills),
        supported_interfaces=[a2a_pb2.AgentInterface(
            url=listing.endpoint, protocol_binding="GRPC", protocol_version=PROTOCOL_VERSION)],
        provider=a2a_pb2.AgentProvider(organization="agentmarket",
                                       url="https://agentmarket.dev"),
        version="1.0.0",
        capabilities=a2a_pb2.AgentCapabilities(streaming=True, push_notifications=False,
                                               extensions=[extension],
                                               extended_agent_card=True),
        default_input_modes=[JSON, TEXT], default_output_modes=[JSON],
        skills=[agent_skill(s, streams=s.name in streaming) for s in listing.skills])
    return sign(card, key) if key is not None else card


def sign(card: a2a_pb2.AgentCard, key: AgentKey) -> a2a_pb2.AgentCard:
    """Add a JWS signature (EdDSA, kid = the signer's agent id) with a2a-sdk's signer."""
    from a2a.utils.signing import create_agent_card_signer  # PyJWT: loaded when signing

    header: Any = {"kid": key.agent_id, "alg": "EdDSA", "typ": "JOSE"}
    signer = create_agent_card_signer(key._key, header)
    return signer(card)


def public_jwk(agent_id: str) -> dict[str, str]:
    """The OKP JWK of an agent id (its ed25519 public key), for JOSE libraries."""
    raw = bytes.fromhex(agent_id)
    return {"kty": "OKP", "crv": "Ed25519",
            "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}


def card_dict(card: a2a_pb2.AgentCard) -> dict[str, Any]:
    """The card as served: the proto's JSON form (camelCase), as A2A v1.0 defines it."""
    return json_format.MessageToDict(card)


def parse_card(data: dict[str, Any]) -> a2a_pb2.AgentCard:
    card = a2a_pb2.AgentCard()
    json_format.ParseDict(data, card, ignore_unknown_fields=True)
    return card


def payment_params(card: a2a_pb2.AgentCard) -> dict[str, Any] | None:
    """The payment extension's params of a card (None: the agent takes no payment)."""
    for extension in card.capabilities.extensions:
        if extension.uri == ext.URI:
            return json_format.MessageToDict(extension.params)
    return None
