"""The gateway's OpenAPI 3.1 document (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from agents.x402.closing import CLOSE_PATH

_PROBLEM = {"type": "object", "properties": {"error": {"type": "string"},
                                              "message": {"type": "string"}}}


def openapi(network: str) -> dict[str, Any]:
    payment_header = {"name": "PAYMENT-SIGNATURE", "in": "header", "required": False,
                      "description": "x402 v2 PaymentPayload, base64 JSON; network "
                                     f"{network} (PROTOCOL.md, x402 over agentmarket)",
                      "schema": {"type": "string"}}
    paid = {"description": "the seller's answer; PAYMENT-RESPONSE carries the settlement",
            "headers": {"PAYMENT-RESPONSE": {"schema": {"type": "string"},
                                             "description": "x402 SettleResponse, base64 "
                                                            "JSON, with a node-signed receipt"}},
            "content": {"application/json": {"schema": {"type": "object", "properties": {
                "output": {}, "usage": {"type": "object"},
                "receipt": {"type": "string", "description": "the seller's call receipt, "
                                                             "base64 protobuf"}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "agentmarket HTTP/x402 gateway", "version": "1"},
        "paths": {
            "/v1/skills/{listing}/{skill}": {"post": {
                "summary": "Call a listed skill, paying with x402",
                "parameters": [
                    {"name": "listing", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                     "description": "the seller's agent id"},
                    {"name": "skill", "in": "path", "required": True,
                     "schema": {"type": "string"}},
                    payment_header, {"name": "traceparent", "in": "header",
                                     "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "description": "the skill's input"}}}},
                "responses": {
                    "200": paid,
                    "400": {"description": "not JSON, or a malformed PAYMENT-SIGNATURE",
                            "content": {"application/json": {"schema": _PROBLEM}}},
                    "402": {"description": "payment required or refused: PAYMENT-REQUIRED "
                                           "(x402 PaymentRequired, base64 JSON; `error` is "
                                           "the reason)",
                            "headers": {"PAYMENT-REQUIRED": {"schema": {"type": "string"}}}},
                    "404": {"description": "no such listing or skill"},
                    "409": {"description": "the session has a call in flight "
                                           "(`session_busy`), or the payment identifier was "
                                           "used with another payment or request "
                                           "(`payment_identifier_conflict`)",
                            "content": {"application/json": {"schema": _PROBLEM}}},
                    "413": {"description": "the body is over the limit"},
                    "414": {"description": "the request line outgrew the server's buffer "
                                           "(16 KiB still incomplete)"},
                    "431": {"description": "the request's line and headers outgrew the "
                                           "server's buffer (16 KiB still incomplete)"}}}},
            CLOSE_PATH: {"post": {
                "summary": "Close a session: the seller redeems, the node captures once",
                "parameters": [{"name": "agreement", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "required": ["finish"], "properties": {
                        "finish": {"type": "string", "description": "the buyer's ed25519 "
                                   "signature over finish|<agreement id>, hex"}}}}}},
                "responses": {"200": {"description": "the settlement and its signed receipt",
                                      "headers": {"PAYMENT-RESPONSE": {
                                          "schema": {"type": "string"}}}},
                              "400": {"description": "not {\"finish\": \"<hex>\"}",
                                      "content": {"application/json": {"schema": _PROBLEM}}},
                              "403": {"description": "the finish is not the session's "
                                                     "buyer's (`invalid_signature`)",
                                      "content": {"application/json": {"schema": _PROBLEM}}},
                              "404": {"description": "no such session (`session_unknown`)"},
                              "409": {"description": "another request is closing the "
                                                     "session (`session_busy`): retry"},
                              "502": {"description": "the seller did not finish "
                                                     "(`seller_refused`): close again",
                                      "content": {"application/json": {"schema": _PROBLEM}}}}}},
        },
    }
