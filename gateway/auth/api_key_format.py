"""The text of an API key: `ward-<key_id>.<secret>`.

The key id is public (it names the database row); the secret is 32 random bytes, urlsafe base64,
stored only as a SHA-256 hash. Keys are high-entropy, so a slow password KDF adds nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "ward-"
_KEY_ID_BYTES = 8  # 16 hex characters
_SECRET_BYTES = 32
_KEY_RE = re.compile(r"^ward-([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    secret: str


def new_key_id() -> str:
    return secrets.token_hex(_KEY_ID_BYTES)


def new_key(key_id: str | None = None) -> tuple[str, str]:
    """A fresh key: (key_id, full key text). The text is shown once and never stored."""
    key_id = key_id or new_key_id()
    return key_id, f"{KEY_PREFIX}{key_id}.{secrets.token_urlsafe(_SECRET_BYTES)}"


def parse_key(text: str) -> ParsedKey | None:
    """The parts of a well-formed key, or None (callers answer 401 without saying why)."""
    m = _KEY_RE.match(text)
    return ParsedKey(m.group(1), m.group(2)) if m else None


def hash_secret(key_id: str, secret: str) -> str:
    """SHA-256 of `key_id.secret`, hex. Binding the id means a hash copied onto another row is useless."""
    return hashlib.sha256(f"{key_id}.{secret}".encode()).hexdigest()


def secret_matches(key_id: str, secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(hash_secret(key_id, secret), stored_hash)


def looks_like_ward_key(text: str) -> bool:
    return text.startswith(KEY_PREFIX)
