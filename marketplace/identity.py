"""Agent identity: an ed25519 key pair; the hex public key is the agent's id everywhere."""

from __future__ import annotations

import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from marketplace.errors import InvalidArgument

_AGENT_ID = re.compile(r"^[0-9a-f]{64}$")


class AgentKey:
    """A private signing key. Keep it secret; share `agent_id`."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.agent_id = raw.hex()

    @classmethod
    def generate(cls) -> AgentKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> AgentKey:
        """Deterministic key from 32 secret bytes (for keys kept in a file or vault)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def check_agent_id(agent_id: str, field: str = "agent_id") -> str:
    if not isinstance(agent_id, str) or not _AGENT_ID.match(agent_id):
        raise InvalidArgument(f"{field} must be a 64-hex-character ed25519 public key")
    return agent_id


def verify(agent_id: str, message: bytes, signature: bytes) -> bool:
    """True when `signature` is agent_id's ed25519 signature of `message`."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(agent_id)).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
