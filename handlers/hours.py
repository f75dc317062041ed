"""Business hours: are agents at work now, and if not, when do they return."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time as dtime, timedelta
from zoneinfo import ZoneInfo

from handlers.config import ShopConfig


@dataclass(frozen=True)
class Availability:
    open_now: bool
    reply_by: float  # when the buyer can expect a person (epoch seconds)
    returns_at: datetime | None  # next opening, when closed (shop-local time)


def availability(cfg: ShopConfig, now: float) -> Availability:
    tz = ZoneInfo(cfg.timezone)
    local = datetime.fromtimestamp(now, tz)
    opens, closes = dtime.fromisoformat(cfg.hours_open), dtime.fromisoformat(cfg.hours_close)
    wait = timedelta(minutes=cfg.first_reply_minutes)

    def is_open(at: datetime) -> bool:
        if at.isoweekday() not in cfg.work_days:
            return False
        t = at.timetz().replace(tzinfo=None)
        if opens == closes:
            return True  # open around the clock, e.g. 00:00-00:00
        if opens < closes:
            return opens <= t < closes
        return t >= opens or t < closes  # hours past midnight, e.g. 20:00-02:00

    if is_open(local):
        return Availability(True, (local + wait).timestamp(), None)
    # The next opening within a week (work_days is never empty).
    day = local.date()
    for i in range(8):
        d = day + timedelta(days=i)
        candidate = datetime.combine(d, opens, tzinfo=tz)
        if candidate > local and candidate.isoweekday() in cfg.work_days:
            return Availability(False, (candidate + wait).timestamp(), candidate)
    raise AssertionError("work_days cannot be empty")  # pragma: no cover


def describe_return(returns_at: datetime, now: float, tz: str, locale: str) -> dict[str, str]:
    """Words-free facts the templates turn into "明天 09:00" / "tomorrow at 09:00"."""
    local_now = datetime.fromtimestamp(now, ZoneInfo(tz))
    days = (returns_at.date() - local_now.date()).days
    return {
        "day": "today" if days == 0 else "tomorrow" if days == 1 else "weekday",
        "weekday": str(returns_at.isoweekday()),
        "time": returns_at.strftime("%H:%M"),
        "date": returns_at.strftime("%m-%d"),
    }
