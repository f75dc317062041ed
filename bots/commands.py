"""Agents' typed desk commands ("接单 K1042", "reply 1042 ...") shared by the chat desks (WeCom, DingTalk)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from handlers.desk import normalize_case_id

CMD = re.compile(r"^\s*/?(take|reply|note|resolve|reopen|case|接单|回复|备注|解决|结案|重新打开|重开|查看)\s*"
                 r"(?:#?[Kk]?(\d{1,9})\b)?\s*(.*)$", re.S)
VERBS = {"take": "take", "接单": "take", "reply": "reply", "回复": "reply", "note": "note", "备注": "note",
         "resolve": "resolve", "解决": "resolve", "结案": "resolve", "reopen": "reopen", "重新打开": "reopen",
         "重开": "reopen", "case": "show", "查看": "show"}


@dataclass(frozen=True)
class Command:
    verb: str  # a handlers.model.Verb
    case_id: str | None  # None: the case the agent has in hand
    text: str


def parse_command(text: str) -> Command | None:
    """A command, or None for plain text (which the desks treat as a reply to the case in hand)."""
    m = CMD.match(text)
    if not m:
        return None
    return Command(VERBS[m.group(1).lower()], normalize_case_id(m.group(2)) if m.group(2) else None,
                   m.group(3).strip())
