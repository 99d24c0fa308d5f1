"""Agent keys sign and check with libsodium: the signatures are RFC 8032's, the same bytes
OpenSSL (`cryptography`) makes and accepts, and anything malformed is a plain `False`."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from marketplace.identity import AgentKey, check_agent_id, verify

MESSAGE = b"agentmarket \x00 receipt"


def test_signatures_are_openssls_bytes_both_ways():
    key = AgentKey.from_seed(bytes(range(32)))
    signature = key.sign(MESSAGE)
    assert signature == key._key.sign(MESSAGE)  # deterministic: the very same bytes
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.agent_id)).verify(signature, MESSAGE)
    assert verify(key.agent_id, MESSAGE, key._key.sign(MESSAGE))


def test_rfc_8032_test_vector_one():
    key = AgentKey.from_seed(bytes.fromhex(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    assert key.agent_id == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert key.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")


@pytest.mark.parametrize("agent_id, message, signature", [
    ("other", MESSAGE, "good"),          # not hex
    ("short", MESSAGE, "good"),          # 31 bytes of key
    ("someone", MESSAGE, "good"),        # another key
    ("signer", MESSAGE + b"!", "good"),  # another message
    ("signer", MESSAGE, "short"),        # 63 bytes of signature
    ("signer", MESSAGE, "long"),         # 65 bytes
    ("signer", MESSAGE, "flipped"),      # one bit off
    ("signer", MESSAGE, "empty"),
])
def test_anything_malformed_or_foreign_is_false(agent_id, message, signature):
    signer = AgentKey.generate()
    good = signer.sign(MESSAGE)
    ids = {"signer": signer.agent_id, "other": "zz" * 32, "short": signer.agent_id[:62],
           "someone": AgentKey.generate().agent_id}
    signatures = {"good": good, "short": good[:63], "long": good + b"\x00",
                  "flipped": bytes([good[0] ^ 1]) + good[1:], "empty": b""}
    assert verify(signer.agent_id, MESSAGE, good)
    assert verify(ids[agent_id], message, signatures[signature]) is False


@pytest.mark.parametrize("tail", ["\n", " ", "\r\n", "\t"])
def test_an_id_with_anything_after_it_is_no_id(tail):
    """Patterns end at the string's end, not before a final line break (`$` would let
    "<id>\\n" pass: another string naming the same key, so a second account, a payment to
    oneself under another name, a second rate-limit bucket)."""
    from agents.keystore import key_path
    from marketplace.errors import InvalidArgument
    from wallets.grpc_fields import hex_id
    from wallets.mandates import is_key

    signer = AgentKey.generate()
    named = signer.agent_id + tail
    assert verify(named, MESSAGE, signer.sign(MESSAGE)) is False
    assert not is_key(named)
    assert hex_id(64, "an agent id")(named)  # a complaint, not ""
    with pytest.raises(InvalidArgument):
        check_agent_id(named)
    with pytest.raises(InvalidArgument):
        key_path("seller" + tail)
