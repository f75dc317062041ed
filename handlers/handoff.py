"""Opening a case and handing the buyer to a person, with everything collected so far."""

from __future__ import annotations

from typing import Any

from handlers.claims import OrderNumbers
from handlers.hours import availability, describe_return
from handlers.model import Case, CaseType, ClaimDraft, Promise
from handlers.turn import Turn

TRANSCRIPT_LOOKBACK = 24 * 3600  # the card shows the last day of the conversation


async def open_case(t: Turn, case_type: CaseType, reason: str, draft: ClaimDraft | None = None) -> Case:
    c, cfg, now = t.c, t.ctx.cfg, t.now
    number = await t.ctx.store.next_case_number()
    case_id = f"K{1000 + number}"
    photos = list(draft.photos) if draft else list(c.pending_photos)
    c.pending_photos = []
    order_no = (draft.order_no if draft else None) or c.known_order_no
    case = Case(
        id=case_id, session=c.session, channel=c.channel, buyer=c.buyer, locale=c.locale,
        type=case_type, reason=reason, order_no=order_no,
        order_verified=bool(order_no) and OrderNumbers(cfg).valid(order_no or ""),
        photos=photos, description=draft.description if draft else None,
        faq_given=list(c.faq_given), created_at=now,
        transcript_since=max(now - TRANSCRIPT_LOOKBACK, c.last_case_closed_at),
    )
    avail = availability(cfg, now)
    ret = describe_return(avail.returns_at, now, cfg.timezone, c.locale) if avail.returns_at else {}
    when: dict[str, Any] = {
        "in_hours": avail.open_now, "eta_minutes": cfg.first_reply_minutes,
        "return_day": ret.get("day", "today"), "return_time": ret.get("time", ""),
        "return_weekday": ret.get("weekday", "1"), "return_date": ret.get("date", ""),
    }
    case.promises.append(Promise(
        at=now, by="bot", due=avail.reply_by,
        text=t.render("promise_first_reply", locale=cfg.desk_locale, **when),
    ))
    case.log(now, "created", "bot", reason)
    t.keep(case)
    t.case_id = case_id
    c.stage, c.case_id, c.claim, c.misses = "waiting_agent", case_id, None, 0
    position = await t.queue_position(case)
    t.say(
        "case_created", purpose="handoff", case_id=case_id, position=position,
        order_unverified=bool(draft and draft.order_unverified), **when,
    )
    t.desk(case_id, "card")
    return case


async def hand_off(t: Turn, reason: str) -> Case:
    """To a person now: a claim in progress keeps its type and what it collected."""
    draft = t.c.claim
    if draft is not None:
        return await open_case(t, draft.type, reason, draft)
    return await open_case(t, "complaint" if reason == "complaint" else "human", reason)
