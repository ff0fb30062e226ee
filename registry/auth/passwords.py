"""Passwords of repository-scoped tokens: generated, then stored as a salted SHA-256.

Every password Berth stores is one it generated: 256 random bits. Against a secret that
large a slow hash adds nothing (no guessing can cover the space, offline or online), while
it costs tens of milliseconds of CPU per login, which an attacker can turn against the
registry. So new hashes are a salted SHA-256 compared in constant time. Hashes made by
earlier versions (scrypt) still verify, off the event loop, and are replaced on success.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_SCRYPT_N_MAX = 2**20  # refuse absurd cost parameters in a stored hash


def generate_password() -> str:
    return secrets.token_urlsafe(32)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.sha256(salt + password.encode()).digest()
    return f"sha256${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def is_legacy(stored: str) -> bool:
    """A hash from before this scheme (slow to check: do it in a thread)."""
    return stored.startswith("scrypt$")


def verify_password(password: str, stored: str) -> bool:
    parts = stored.split("$")
    try:
        if parts[0] == "sha256" and len(parts) == 3:
            salt, digest = base64.b64decode(parts[1]), base64.b64decode(parts[2])
            return hmac.compare_digest(hashlib.sha256(salt + password.encode()).digest(), digest)
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            if n > _SCRYPT_N_MAX:
                return False
            candidate = hashlib.scrypt(password.encode(), salt=base64.b64decode(parts[4]), n=n, r=r, p=p,
                                       dklen=32)
            return hmac.compare_digest(candidate, base64.b64decode(parts[5]))
    except ValueError:
        return False
    return False


# What an unknown name is checked against, so that it costs what a known one does.
DECOY_HASH = hash_password(generate_password())
