"""Redis key names. Every key of one team carries the team as its hash tag, so all keys one request
touches live in one Redis Cluster slot and a single Lua script may use them."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from gateway.quota.limits import Scope, ScopeKind

# Per-scope keys, in the order the Lua scripts expect them (see lua/common.lua).
SCOPE_KEY_SUFFIXES = ("rpm", "tpm", "tpm_amt", "live", "live_amt", "acct")

_SCOPE_PREFIX = {ScopeKind.TEAM: "t", ScopeKind.KEY: "k", ScopeKind.MODEL: "m"}
_SCOPE_FROM_PREFIX = {v: k for k, v in _SCOPE_PREFIX.items()}


def _escape(text: str) -> str:
    # Percent-encoding removes ':', '{', '}' and '/' from names, so no name can reach into another key.
    return quote(text, safe="")


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "ward:quota"

    def team_tag(self, team: str) -> str:
        return f"{self.prefix}:{{{_escape(team)}}}"

    def scope_keys(self, team: str, scope: Scope) -> list[str]:
        base = f"{self.team_tag(team)}:{scope_segment(scope)}"
        return [f"{base}:{suffix}" for suffix in SCOPE_KEY_SUFFIXES]

    def reservation(self, team: str, reservation_id: str) -> str:
        return f"{self.team_tag(team)}:r:{reservation_id}"

    def usage(self, team: str, day: str) -> str:
        return f"{self.team_tag(team)}:usage:{day}"

    def overrides(self) -> str:
        """One HASH for all admin-set limits (a single key: fine on Cluster)."""
        return f"{self.prefix}:overrides"


def scope_segment(scope: Scope) -> str:
    prefix = _SCOPE_PREFIX[scope.kind]
    return prefix if scope.kind is ScopeKind.TEAM else f"{prefix}:{_escape(scope.name)}"


def override_field(team: str, scope: Scope) -> str:
    return f"{_escape(team)}/{scope_segment(scope)}"


def parse_override_field(field: str) -> tuple[str, Scope]:
    team, segment = field.split("/", 1)
    prefix, _, name = segment.partition(":")
    return unquote(team), Scope(_SCOPE_FROM_PREFIX[prefix], unquote(name))


def usage_model_field(model: str | None) -> str:
    """The model part of a usage field: empty for requests without a model (model names are never empty)."""
    return "" if model is None else _escape(model)


def parse_usage_model_field(field: str) -> str | None:
    return None if field == "" else unquote(field)
