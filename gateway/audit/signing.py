"""Ed25519 keys that sign checkpoints and the chain head, and the trusted keys that check them.

A signed statement is the canonical JSON of ``{"seq", "entry_hash", "time", "key_id"}``: "the chain
held ``seq`` entries, the last of which hashed to ``entry_hash``, at ``time``". Whoever holds only the
public key can check every statement; only the private key's holder can make one. The private key
should live outside the database (and, in production, outside the database host).
"""
from __future__ import annotations

import base64
import hashlib
import os
import pathlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.canonical import canonical_json, utc_iso
from gateway.audit.errors import SigningKeyError

PUBLIC_SUFFIX = ".pub.pem"


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """A short stable name of a public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def statement(seq: int, entry_hash: str, time: datetime, key_id: str) -> bytes:
    """The bytes a checkpoint or chain-head signature covers."""
    return canonical_json({"seq": seq, "entry_hash": entry_hash, "time": utc_iso(time), "key_id": key_id}).encode()


def export_statement(through_seq: int, sha256: str, records: int, time: datetime, key_id: str,
                     selection: dict[str, Any] | None = None) -> bytes:
    """The bytes an export's signature covers (a purpose of its own: never readable as a checkpoint).

    ``selection`` (which records were asked for) is covered too, so a filtered export cannot pass for
    the whole log; exports signed before it existed have none and keep verifying."""
    fields = {"purpose": "ward-audit-export", "through_seq": through_seq, "sha256": sha256, "records": records,
              "time": utc_iso(time), "key_id": key_id}
    if selection is not None:
        fields["selection"] = selection
    return canonical_json(fields).encode()


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def public_key_path_for(private_key_path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(private_key_path)
    return path.with_name(path.name.removesuffix(".pem") + PUBLIC_SUFFIX)


class Signer:
    """Signs statements with one private key."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    def sign(self, seq: int, entry_hash: str, time: datetime) -> str:
        """Base64 signature of statement(seq, entry_hash, time, self.key_id)."""
        return base64.b64encode(self._private_key.sign(statement(seq, entry_hash, time, self.key_id))).decode("ascii")

    def sign_export(self, through_seq: int, sha256: str, records: int, time: datetime,
                    selection: dict[str, Any] | None = None) -> str:
        """Base64 signature of export_statement(...) with this key."""
        message = export_statement(through_seq, sha256, records, time, self.key_id, selection)
        return base64.b64encode(self._private_key.sign(message)).decode("ascii")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Signer:
        """The existing key at path. Raises SigningKeyError when it is missing or not an Ed25519 key."""
        path = pathlib.Path(path)
        if not path.exists():
            raise SigningKeyError(f"the audit signing key {path} does not exist (pass the gateway's key)")
        return cls(_load_private_key(path))

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> Signer:
        """The key at path (PEM, PKCS#8); created with mode 0600 when absent, its public key written beside it.

        Safe when several gateways start at once: exactly one creates the file, the others read it.
        Raises SigningKeyError when the file exists but is not an Ed25519 private key.
        """
        path = pathlib.Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            # Write whole, then link into place: a reader never sees a half-written key, and
            # link() fails if another process got there first.
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, pem)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        signer = cls(_load_private_key(path))
        public_path = public_key_path_for(path)
        if not public_path.exists():
            # Whole or not at all, even with several processes doing this at once.
            tmp = public_path.with_name(f".{public_path.name}.{os.getpid()}.tmp")
            tmp.write_text(public_pem(signer.public_key), encoding="ascii")
            os.replace(tmp, public_path)
        return signer


def _load_private_key(path: pathlib.Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(f"cannot load the audit signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file; a private-key PEM is accepted too (its public half is used)."""
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read public key {path}: {exc}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{path} holds no PEM key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys whose signatures verification accepts, by key id."""

    keys: dict[str, Ed25519PublicKey]

    @classmethod
    def from_keys(cls, keys: list[Ed25519PublicKey]) -> TrustedKeys:
        return cls({key_id_of(key): key for key in keys})

    def check(self, seq: int, entry_hash: str, time: datetime, key_id: str, signature: str) -> str | None:
        """None when the signature is valid under a trusted key, else why not."""
        key = self.keys.get(key_id)
        if key is None:
            return f"signed by key {key_id}, which is not trusted"
        try:
            key.verify(base64.b64decode(signature, validate=True), statement(seq, entry_hash, time, key_id))
        except (InvalidSignature, ValueError):
            return "signature is invalid"
        return None

    def check_export(self, through_seq: int, sha256: str, records: int, time: datetime, key_id: str, signature: str,
                     selection: dict[str, Any] | None = None) -> str | None:
        """None when an export's signature is valid under a trusted key, else why not."""
        key = self.keys.get(key_id)
        if key is None:
            return f"signed by key {key_id}, which is not trusted"
        try:
            message = export_statement(through_seq, sha256, records, time, key_id, selection)
            key.verify(base64.b64decode(signature, validate=True), message)
        except (InvalidSignature, ValueError):
            return "signature is invalid"
        return None
