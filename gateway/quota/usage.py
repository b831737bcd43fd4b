"""Usage reports for admins: settled requests and tokens of one team, grouped by day or by model."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum

from gateway.quota.errors import InvalidQuotaRequest
from gateway.quota.store import UsageRecord

MAX_REPORT_DAYS = 366


class UsageGroupBy(str, Enum):
    DAY = "day"
    MODEL = "model"


@dataclass(frozen=True)
class UsageRow:
    group: str | None  # the day (ISO date) or the model name (None: requests that named no model)
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self, group_by: UsageGroupBy) -> dict:
        return {
            group_by.value: self.group,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


def check_report_range(first_day: dt.date, last_day: dt.date) -> None:
    if last_day < first_day:
        raise InvalidQuotaRequest("`from` must not be after `to`", param="from")
    if (last_day - first_day).days + 1 > MAX_REPORT_DAYS:
        raise InvalidQuotaRequest(f"a usage report covers at most {MAX_REPORT_DAYS} days", param="from")


def group_usage(records: list[UsageRecord], group_by: UsageGroupBy) -> list[UsageRow]:
    """Sum records per day (every day that had usage, in order) or per model (by name, no-model last)."""
    sums: dict[str | None, list[int]] = {}
    for rec in records:
        key = rec.day.isoformat() if group_by is UsageGroupBy.DAY else rec.model
        acc = sums.setdefault(key, [0, 0, 0])
        acc[0] += rec.requests
        acc[1] += rec.prompt_tokens
        acc[2] += rec.completion_tokens
    order = sorted(sums, key=lambda k: (k is None, k or ""))
    return [UsageRow(k, *sums[k]) for k in order]
