"""Canonical bytes of audit entries and the hash chain over them.

Canonical JSON: keys sorted, no whitespace, UTF-8, no NaN/Infinity, timestamps as UTC ISO-8601 with
microseconds and a trailing ``Z``, floats in Python's shortest round-trip form. The hash of an entry
covers the stored text byte for byte, so verification never re-serialises what it checks.

    entry_hash = SHA-256( prev_hash "\\n" canonical_json(header) "\\n" data )

``header`` holds every column of the entry except the hashes; ``data`` is the entry's payload, itself
canonical JSON, stored verbatim. Neither part can hold a raw newline (JSON escapes it), so the
message splits one way only.
"""
from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from datetime import date, datetime, timezone
from enum import Enum
from typing import Any

from gateway.audit.errors import AuditInputError

GENESIS_HASH = "0" * 64  # prev_hash of the first entry ever written


def utc_iso(moment: datetime) -> str:
    """UTC ISO-8601 with microseconds and ``Z``. Raises AuditInputError for a naive datetime."""
    if moment.tzinfo is timezone.utc and moment.year >= 1000:  # the gateway's own clocks: one call, not three
        return moment.isoformat(timespec="microseconds")[:-6] + "Z"
    if moment.tzinfo is None:
        raise AuditInputError("timestamps must be timezone-aware (naive datetimes are ambiguous)")
    moment = moment.astimezone(timezone.utc)
    if moment.year < 1000:  # strftime does not pad such years; keep its text exactly
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # isoformat is several times faster than strftime and gives the same text here.
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_utc_iso(text: str) -> datetime:
    """The inverse of utc_iso (also accepts any ISO-8601 with an offset)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise AuditInputError(f"timestamp {text!r} has no timezone")
    return moment.astimezone(timezone.utc)


def as_utc(moment: datetime | None) -> datetime | None:
    """A datetime read back from the database, as aware UTC (SQLite returns naive UTC values)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _to_json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (set, frozenset)):
        return sorted(_to_json_value(v) for v in value)
    raise AuditInputError(f"value of type {type(value).__name__} cannot go into an audit record")


def canonical_json(value: Any) -> str:
    """Deterministic JSON text of value. Raises AuditInputError for what JSON cannot hold exactly."""
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_to_json_value
        )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates (legal in JSON input, not in UTF-8): escape everything instead.
            text = json.dumps(
                value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=_to_json_value
            )
        return text
    except ValueError as exc:  # NaN / Infinity
        raise AuditInputError(f"audit records cannot hold {exc}") from None
    except TypeError as exc:  # e.g. non-string dict keys that JSON cannot sort
        raise AuditInputError(f"audit record is not canonical JSON: {exc}") from None


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entry_hash(prev_hash: str, header: Mapping[str, Any], data: str) -> str:
    """The chained hash of one entry (see the module docstring)."""
    digest = hashlib.sha256()
    digest.update(prev_hash.encode("ascii"))
    digest.update(b"\n")
    digest.update(canonical_json(header).encode("utf-8"))
    digest.update(b"\n")
    digest.update(data.encode("utf-8"))
    return digest.hexdigest()
