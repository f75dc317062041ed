"""What the conversation handler needs to know about the shop.

`bots.settings.Settings` extends this with platform settings and loads it from
a TOML file and `KEFU_*` variables; handlers only ever see this part.
"""

from __future__ import annotations

import re
from datetime import time as dtime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, field_validator


class ShopConfig(BaseModel):
    shop_name: str = "小满生活馆"
    locale: str = "zh-CN"  # the shop's default language; buyers writing English get English
    desk_locale: str = "zh-CN"
    # Taobao, Tmall and JD order numbers are 16-20 digits.
    order_pattern: str = r"\d{16,20}"
    order_example: str = "3849201756382910475"
    max_order_attempts: int = 3
    idle_minutes: float = 30.0
    timezone: str = "Asia/Shanghai"
    hours_open: str = "09:00"
    hours_close: str = "22:00"
    work_days: list[int] = [1, 2, 3, 4, 5, 6, 7]  # ISO weekdays, 1 = Monday
    first_reply_minutes: int = 10
    max_photos_per_case: int = 20
    # Routing (see README "Routing"): answer, "您是不是想问", or not sure. Scores are the
    # semantic router's label probabilities (0..1); the lexical fallback uses its own bands.
    # Defaults chosen by bench/route_train.py on kefu's sample shop (handlers/route_weights.json).
    route_method: str = "auto"  # auto: semantic if its model loads, else lexical; or "semantic" / "lexical"
    route_answer_score: float = 0.525
    route_margin: float = 0.2
    route_clarify_score: float = 0.325
    # kefu's phrasing bank (templates/bank): shop entries learn the many ways buyers ask about
    # their topic, and topics the shop has no entry for are "not sure" instead of a near guess.
    route_bank: bool = True
    misses_before_handoff: int = 2

    @field_validator("order_pattern")
    @classmethod
    def _pattern_compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"order_pattern is not a valid regular expression: {exc}") from exc
        return v

    @field_validator("timezone")
    @classmethod
    def _tz_exists(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {v!r}") from exc
        return v

    @field_validator("hours_open", "hours_close")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        try:
            dtime.fromisoformat(v)
        except ValueError as exc:
            raise ValueError(f"expected HH:MM, got {v!r}") from exc
        return v

    @field_validator("work_days")
    @classmethod
    def _days(cls, v: list[int]) -> list[int]:
        if not v or any(d < 1 or d > 7 for d in v):
            raise ValueError("work_days are ISO weekdays 1 (Monday) .. 7 (Sunday)")
        return sorted(set(v))
