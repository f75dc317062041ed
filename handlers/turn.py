"""Builds the reply of one turn: rendered texts with buttons, desk actions, changed cases."""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterable

from handlers.context import Context, Outcome
from handlers.matcher import canonical, normalize
from handlers.model import Button, Case, Conversation, DeskAction, Media, Reply

MENU = ("menu:track", "menu:returns", "menu:problem", "human")
CLAIM_BUTTONS = ("claim:wrong_item", "claim:damaged", "claim:quality", "claim:missing_item", "claim:not_received", "human")
_CJK = re.compile(r"[\u3400-\u9fff]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


_CODE = re.compile(r"[A-Za-z0-9_\-#]*\d[A-Za-z0-9_\-#]*")


def detect_locale(text: str, min_words: int = 1) -> str | None:
    """zh-CN if the buyer writes Chinese, en if only Latin words; None if unclear.

    Codes with digits (order numbers like PDD-1234) say nothing about language."""
    if _CJK.search(text):
        return "zh-CN"
    t = _CODE.sub(" ", unicodedata.normalize("NFKC", text))
    words = _LATIN_WORD.findall(t)
    if len(words) >= min_words and sum(len(w) for w in words) >= 3:
        return "en"
    return None


class Turn:
    def __init__(self, ctx: Context, convo: Conversation, now: float) -> None:
        self.ctx = ctx
        self.c = convo
        self.now = now
        self.actions: list[Any] = []
        self.cases: dict[str, Case] = {}
        self.error: str | None = None
        self.detail = ""
        self.case_id: str | None = None
        self.misses: list[dict[str, str]] = []

    # --- wording ------------------------------------------------------------------
    def values(self, **extra: Any) -> dict[str, Any]:
        cfg = self.ctx.cfg
        return {
            "shop_name": cfg.shop_name,
            "buyer_name": self.c.buyer.name,
            "hours_open": cfg.hours_open,
            "hours_close": cfg.hours_close,
            **extra,
        }

    def render(self, template: str, locale: str | None = None, **values: Any) -> str:
        return self.ctx.wording.render(template, locale or self.c.locale, **self.values(**values))

    def button(self, payload: str) -> Button:
        w, loc = self.ctx.wording, self.c.locale
        if payload.startswith("faq:"):
            entry = w.faq(payload[4:], loc)
            return Button(text=entry.title if entry else payload[4:], payload=payload)
        if payload.startswith("rate:"):
            n = int(payload.rsplit(":", 1)[1])
            return Button(text="⭐" * n, payload=payload)
        return Button(text=w.label("buttons", payload, loc), payload=payload)

    def say(
        self, template: str, buttons: Iterable[str] = (), purpose: str = "", photo: Media | None = None, **values: Any
    ) -> None:
        self.say_text(self.render(template, **values), buttons, purpose=purpose, photo=photo)

    def say_text(
        self, text: str, buttons: Iterable[str] = (), purpose: str = "", photo: Media | None = None,
        sender: str = "bot", agent: str | None = None, delivered: bool = False,
    ) -> None:
        btns = tuple(self.button(b) for b in buttons)
        self.actions.append(Reply(
            channel=self.c.channel, text=text, buttons=btns, photo=photo, purpose=purpose,
            sender=sender, agent=agent, case_id=self.c.case_id, delivered=delivered,  # type: ignore[arg-type]
        ))
        if btns:
            self.c.buttons = list(btns)

    def desk(self, case_id: str, kind: str, **fields: Any) -> None:
        self.actions.append(DeskAction(case_id=case_id, kind=kind, **fields))  # type: ignore[arg-type]

    def notice(self, desk: str, case_id: str, template: str, to_agent: str | None = None, **values: Any) -> None:
        """An answer to an agent's command, for the desk (and the agent) it came from."""
        text = self.render(template, locale=self.ctx.cfg.desk_locale, case_id=case_id, **values)
        self.desk(case_id, "notice", who="system", text=text, desk=desk, agent=to_agent)

    # --- recognising what the buyer typed ------------------------------------------------
    def is_phrase(self, text: str, kind: str) -> bool:
        n = normalize(text)
        return bool(n) and n in {normalize(p) for p in self.ctx.wording.phrases(kind)}

    def mentions(self, text: str, kind: str) -> bool:
        """Does the message contain one of the phrases of this kind (in any locale)?"""
        n = normalize(canonical(text))
        return bool(n) and any(p and p in n for p in (normalize(canonical(x)) for x in self.ctx.wording.phrases(kind)))

    def button_for_text(self, text: str) -> str | None:
        """Typing a button's text does what pressing it does."""
        n = normalize(text)
        if not n:
            return None
        for b in self.c.buttons:
            if normalize(b.text) == n:
                return b.payload
        return None

    # --- cases -------------------------------------------------------------------------
    def keep(self, case: Case) -> Case:
        self.cases[case.id] = case
        return case

    async def case(self, case_id: str | None) -> Case | None:
        if not case_id:
            return None
        if case_id in self.cases:
            return self.cases[case_id]
        row = await self.ctx.store.get_case(case_id)
        return Case.model_validate(row.data) if row else None

    async def queue_position(self, case: Case) -> int:
        """1 = next in line: open cases created before this one, plus one."""
        return 1 + await self.ctx.store.count_cases("open", case.created_at)

    def miss(self, question: str, kind: str, answered: str = "") -> None:
        """Note a question the bot could not answer (or whose answer did not help)."""
        norm = normalize(question)
        if norm:
            self.misses.append({"question": question.strip()[:500], "norm": norm[:200], "kind": kind,
                                "answered": answered, "locale": self.c.locale})

    def outcome(self) -> Outcome:
        return Outcome(
            conversation=self.c, cases=list(self.cases.values()), actions=self.actions,
            error=self.error, detail=self.detail, case_id=self.case_id, misses=self.misses,
        )
