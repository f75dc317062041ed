"""Every storage key kefu uses is built here, so they stay consistent."""

from __future__ import annotations

PREFIX = "kefu"


def _clean(part: str) -> str:
    # ':' separates key parts; keep ids that contain one unambiguous.
    return str(part).replace("%", "%25").replace(":", "%3A")


def session_key(platform: str, bot: str, chat: str) -> str:
    """One conversation = one buyer on one channel (NoneBot2's session id)."""
    return f"{PREFIX}:{_clean(platform)}:{_clean(bot)}:{_clean(chat)}"


def split_session_key(key: str) -> tuple[str, str, str]:
    prefix, platform, bot, chat = key.split(":", 3)
    if prefix != PREFIX:
        raise ValueError(f"not a kefu session key: {key!r}")
    unq = lambda s: s.replace("%3A", ":").replace("%25", "%")  # noqa: E731
    return unq(platform), unq(bot), unq(chat)


def message_key(platform: str, bot: str, message_id: str) -> str:
    """Dedupe key of one platform message (platform ids are unique per bot)."""
    return f"{PREFIX}:msg:{_clean(platform)}:{_clean(bot)}:{message_id}"


def buyer_target(session: str) -> str:
    """Outbox ordering key for sends to one buyer."""
    return f"buyer|{session}"


def desk_target(desk: str, case_id: str) -> str:
    """Outbox ordering key for one case's thread on one desk."""
    return f"desk|{desk}|{case_id}"


def mailbox_key(name: str) -> str:
    return f"{PREFIX}:box:{name}"


def platform_key(platform: str, bot: str, *parts: str | int) -> str:
    """Keys an adapter keeps for itself (update offsets, desk message maps)."""
    return ":".join([PREFIX, _clean(platform), _clean(bot), *(_clean(str(p)) for p in parts)])
