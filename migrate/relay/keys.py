"""The one-off ed25519 key pair of a transfer, made here (cryptography: already paramiko's dependency)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private_openssh: bytes  # the OpenSSH private key file (no passphrase: it lives 0600 for one transfer)
    public: str  # `ssh-ed25519 AAAA...`

    def __repr__(self) -> str:  # never print the private key
        return f"KeyPair(public={self.public!r})"


def new_key_pair() -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return KeyPair(private, public.decode())
