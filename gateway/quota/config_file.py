"""Loads config/quotas.yaml and reloads it when it changes; a bad file is refused and the old one kept."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import ValidationError

from gateway.quota import metrics
from gateway.quota.config import EMPTY_CONFIG, QuotaConfig
from gateway.quota.errors import QuotaError

log = logging.getLogger(__name__)


class QuotaConfigError(QuotaError):
    """The quota file cannot be used; ``str()`` says where and why, one problem per line."""


def parse_quota_config(text: str, *, source: str = "quota config") -> QuotaConfig:
    """Parse and validate the YAML text of a quota file. Raises QuotaConfigError with a readable message."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise QuotaConfigError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        return EMPTY_CONFIG
    if not isinstance(data, dict):
        raise QuotaConfigError(f"{source}: the top level must be a mapping with `defaults` and/or `teams`")
    try:
        return QuotaConfig.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise QuotaConfigError(f"{source}: invalid quota configuration:\n{problems}") from exc


def load_quota_config(path: Path) -> QuotaConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise QuotaConfigError(f"{path}: cannot read the quota file: {exc.strerror or exc}") from exc
    return parse_quota_config(text, source=str(path))


class QuotaConfigFile:
    """The current quota configuration from one file, re-read when its size, mtime or inode changes.

    ``current()`` looks at the file at most every ``check_interval_s`` (a stat call), so it is cheap
    enough to call per request. The first load raises QuotaConfigError; later bad versions are logged,
    counted and ignored until the file changes again. ``on_change(old, new)`` runs after each accepted
    reload (the service uses it to audit the change).
    """

    def __init__(
        self,
        path: Path,
        *,
        check_interval_s: float = 1.0,
        on_change: Callable[[QuotaConfig, QuotaConfig], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = Path(path)
        self._interval = check_interval_s
        self.on_change = on_change
        self._clock = clock
        self._signature = self._stat()
        self._config = load_quota_config(self.path)
        self._checked_at = clock()
        self.last_error: str | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> QuotaConfig:
        now = self._clock()
        if now - self._checked_at >= self._interval:
            self._checked_at = now
            self.reload_if_changed()
        return self._config

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed since the last look; True when a new configuration was accepted."""
        signature = self._stat()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            new = load_quota_config(self.path)
        except QuotaConfigError as exc:
            self.last_error = str(exc)
            metrics.CONFIG_RELOADS.labels(result="rejected").inc()
            log.error("quota file rejected, the previous configuration stays in force: %s", exc)
            return False
        old, self._config, self.last_error = self._config, new, None
        metrics.CONFIG_RELOADS.labels(result="accepted").inc()
        log.info("quota file reloaded: %s", self.path)
        if self.on_change is not None and old != new:
            self.on_change(old, new)
        return True


class StaticQuotaConfig:
    """A fixed configuration with the same ``current()`` interface (no file, or tests)."""

    def __init__(self, config: QuotaConfig = EMPTY_CONFIG):
        self._config = config

    def current(self) -> QuotaConfig:
        return self._config
