"""Per-key request quotas of the VirusTotal simulator.

VirusTotal documents that daily quotas reset at 00:00 UTC and monthly quotas at
00:00 UTC on the 1st. How the per-minute window works is not documented; here the
minute and hourly windows slide, so a call counts for exactly 60 or 3600 seconds.
Only accepted calls count; a call rejected with 429 is not used quota.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

QUOTA_NAMES = ("minute", "hourly", "daily", "monthly")

# NOTE: premium keys report very large allowances (for example 1,000,000,000 a month);
# this value stands for a quota that a plan leaves unlimited.
UNLIMITED_ALLOWANCE = 1_000_000_000

# Quota entries besides the request counters that overall_quotas also lists, with
# zero allowance as for a key without VirusTotal Intelligence.
_OTHER_QUOTAS = (
    "intelligence_downloads_monthly",
    "intelligence_searches_monthly",
    "monitor_storage_bytes",
)


@dataclass(frozen=True)
class QuotaPlan:
    """Allowed calls per minute, hour, UTC day and UTC month; None is unlimited.

    The defaults are those of a free (public) API key.
    """

    minute: int | None = 4
    hourly: int | None = 240
    daily: int | None = 500
    monthly: int | None = 15500


class KeyQuota:
    """The accepted calls, day and month counters and 429 rejections of one API key."""

    def __init__(self, plan: QuotaPlan) -> None:
        self.plan = plan
        self.accepted: list[datetime] = []
        self.rejections: dict[str, int] = {name: 0 for name in QUOTA_NAMES}
        self._day: tuple[int, int, int] | None = None
        self._month: tuple[int, int] | None = None
        self._daily = 0
        self._monthly = 0

    def admit(self, now: datetime) -> str | None:
        """Count the call and return None, or return the name of the quota it exceeds."""
        self._roll(now)
        exceeded = self._exceeded(now)
        if exceeded is not None:
            self.rejections[exceeded] += 1
            return exceeded
        self.accepted.append(now)
        self._daily += 1
        self._monthly += 1
        return None

    def used(self, now: datetime) -> dict[str, int]:
        """Return the calls counted in each quota at ``now``."""
        self._roll(now)
        return {
            "minute": self._calls_within(now, 60),
            "hourly": self._calls_within(now, 3600),
            "daily": self._daily,
            "monthly": self._monthly,
        }

    def set_used(
        self, now: datetime, *, daily: int | None = None, monthly: int | None = None
    ) -> None:
        """Overwrite the calls counted today and this month."""
        self._roll(now)
        if daily is not None:
            self._daily = daily
        if monthly is not None:
            self._monthly = monthly

    def overall_quotas(self, now: datetime) -> dict:
        """Return the ``data`` of GET /users/{key}/overall_quotas.

        As in VirusTotal's response, there is no per-minute entry.
        """
        used = self.used(now)
        data = {
            "api_requests_daily": _entry(self.plan.daily, used["daily"]),
            "api_requests_hourly": _entry(self.plan.hourly, used["hourly"]),
            "api_requests_monthly": _entry(self.plan.monthly, used["monthly"]),
        }
        for name in _OTHER_QUOTAS:
            data[name] = _entry(0, 0)
        return data

    def _exceeded(self, now: datetime) -> str | None:
        plan = self.plan
        checks = (
            ("monthly", plan.monthly, self._monthly),
            ("daily", plan.daily, self._daily),
            ("hourly", plan.hourly, None),
            ("minute", plan.minute, None),
        )
        for name, limit, count in checks:
            if limit is None:
                continue
            if count is None:
                count = self._calls_within(now, 3600 if name == "hourly" else 60)
            if count >= limit:
                return name
        return None

    def _calls_within(self, now: datetime, seconds: int) -> int:
        """Count accepted calls made less than ``seconds`` before ``now``."""
        return len(self.accepted) - bisect_right(self.accepted, now - timedelta(seconds=seconds))

    def _roll(self, now: datetime) -> None:
        utc = now.astimezone(UTC)
        day = (utc.year, utc.month, utc.day)
        if day != self._day:
            self._day = day
            self._daily = 0
        if day[:2] != self._month:
            self._month = day[:2]
            self._monthly = 0


def _entry(limit: int | None, used: int) -> dict:
    allowed = UNLIMITED_ALLOWANCE if limit is None else limit
    return {"user": {"allowed": allowed, "used": used}}
