"""Agent identity: an ed25519 key pair; the hex public key is the agent's id everywhere.

Keys are made and kept with `cryptography`; signing and checking use libsodium (PyNaCl), which
does both in about 60% of OpenSSL's time here: a task costs some 16 checks and 14 signatures
across its parties. Ed25519 signatures are deterministic, so both give the same bytes."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError

from marketplace.errors import InvalidArgument

_AGENT_ID = re.compile(r"^[0-9a-f]{64}\Z")
_SEED = re.compile(r"^[0-9a-fA-F]{64}\Z")
SIGNATURE_BYTES = 64


class AgentKey:
    """A private signing key. Keep it secret; share `agent_id`."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.agent_id = raw.hex()
        self._secret = crypto_sign_seed_keypair(self.seed())[1]  # libsodium's seed + key

    @classmethod
    def generate(cls) -> AgentKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> AgentKey:
        """Deterministic key from 32 secret bytes (for keys kept in a file or vault)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AgentKey:
        """The key in a key file: its 32-byte seed as 64 hex characters (`agentmarket keys
        new`, `save`). InvalidArgument names the file when it holds anything else."""
        file = Path(path)
        try:
            text = file.read_text().strip()
        except FileNotFoundError:
            raise InvalidArgument(f"no key file at {file} (make one: agentmarket keys new "
                                  f"{file})") from None
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidArgument(f"cannot read the key file {file}: {error}") from None
        if not _SEED.match(text):
            raise InvalidArgument(f"{file} does not hold a key (64 hex characters)")
        return cls.from_seed(bytes.fromhex(text))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the seed to a new file readable by its owner only (never overwrites one)."""
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise InvalidArgument(f"{file} exists; refusing to overwrite a key") from None
        with os.fdopen(fd, "w") as out:
            out.write(self.seed().hex() + "\n")
        return file

    @classmethod
    def kept(cls, path: str | os.PathLike[str]) -> AgentKey:
        """The key in `path`, made and saved (mode 600) the first time it is asked for; one
        made at the same moment by another process is the one used."""
        file = Path(path)
        if file.exists():
            return cls.load(file)
        key = cls.generate()
        try:
            key.save(file)
        except InvalidArgument:
            return cls.load(file)
        return key

    def seed(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> bytes:
        return crypto_sign(message, self._secret)[:SIGNATURE_BYTES]


def check_agent_id(agent_id: str, field: str = "agent_id") -> str:
    if not isinstance(agent_id, str) or not _AGENT_ID.match(agent_id):
        raise InvalidArgument(f"{field} must be a 64-hex-character ed25519 public key")
    return agent_id


def verify(agent_id: str, message: bytes, signature: bytes) -> bool:
    """True when `signature` is agent_id's ed25519 signature of `message`. Only an id
    spelled as ids are (64 lowercase hex characters) verifies: `bytes.fromhex` would also read
    "<id>\n" or an upper-case id, other strings naming the same key."""
    if len(signature) != SIGNATURE_BYTES or not isinstance(agent_id, str) \
            or not _AGENT_ID.match(agent_id):
        return False
    try:
        crypto_sign_open(bytes(signature) + message, bytes.fromhex(agent_id))
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True
