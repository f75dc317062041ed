"""The case card: everything an agent needs, built the same for every desk.

Desks render it their own way (the web desk as HTML, chat desks as the text
of `case_card.j2`). Phone numbers and addresses are masked here, once.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from handlers.context import Context
from handlers.model import Case
from handlers.privacy import mask


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def buyer_label(case: Case) -> str:
    return case.buyer.name or f"{case.channel.platform}-{case.buyer.id[-4:]}"


def case_summary(ctx: Context, case: Case, now: float) -> dict[str, Any]:
    loc = ctx.cfg.desk_locale
    label = ctx.wording.label
    return {
        "id": case.id,
        "type": case.type,
        "type_name": label("case_types", case.type, loc),
        "status": case.status,
        "status_name": label("status", case.status, loc),
        "reason": case.reason,
        "reason_name": label("reasons", case.reason, loc) if case.reason else "",
        "buyer": {"id": case.buyer.id, "name": buyer_label(case), "platform": case.channel.platform,
                  "bot": case.channel.bot},
        "order_no": case.order_no,
        "order_verified": case.order_verified,
        "assignee": case.assignee,
        "photo_count": len(case.photos),
        "rating": case.rating,
        "created_at": iso(case.created_at),
        "waiting_seconds": int((case.taken_at or case.resolved_at or now) - case.created_at),
        "send_failures": case.send_failures,
    }


async def build_card(ctx: Context, case: Case, now: float) -> dict[str, Any]:
    store, loc = ctx.store, ctx.cfg.desk_locale
    transcript = await store.transcript(case.session, case.transcript_since, case.transcript_until)
    earlier_rows = await store.find_cases(session=case.session, limit=50)
    earlier = [Case.model_validate(r.data) for r in earlier_rows if r.id != case.id and r.created_at <= case.created_at]
    card = case_summary(ctx, case, now)
    card.update({
        "description": mask(case.description or ""),
        "photos": [p.model_dump(mode="json") for p in case.photos],
        "transcript": [
            {
                "at": iso(e.get("at")), "who": e.get("who"), "agent": e.get("agent"),
                "text": mask(e.get("text") or ""), "photos": e.get("photos") or [],
                "buttons": e.get("buttons") or [], "files": e.get("files") or [],
            }
            for e in transcript
        ],
        "faq_given": [{"at": iso(f.at), "faq_id": f.faq_id, "title": f.title} for f in case.faq_given],
        "earlier_cases": [
            {"id": e.id, "type": e.type, "type_name": ctx.wording.label("case_types", e.type, loc),
             "status": e.status, "status_name": ctx.wording.label("status", e.status, loc),
             "created_at": iso(e.created_at), "resolution": e.resolution, "rating": e.rating}
            for e in earlier
        ],
        "promises": [
            {"at": iso(p.at), "by": p.by, "text": p.text, "due": iso(p.due),
             "overdue": bool(p.due and now > p.due and case.taken_at is None and case.status == "open")}
            for p in case.promises
        ],
        "notes": [{"at": iso(n.at), "agent": n.agent, "text": n.text} for n in case.notes],
        "history": [{"at": iso(h.at), "event": h.event, "by": h.by, "text": h.text} for h in case.history],
        "resolution": case.resolution,
        "taken_at": iso(case.taken_at),
        "first_reply_at": iso(case.first_reply_at),
        "resolved_at": iso(case.resolved_at),
        "rated_at": iso(case.rated_at),
        "locale": case.locale,
    })
    card["text"] = render_card_text(ctx, card)
    return card


def render_card_text(ctx: Context, card: dict[str, Any]) -> str:
    """The card as plain text, for desks that are group chats."""
    tz = ZoneInfo(ctx.cfg.timezone)

    def local(value: str | None) -> str:
        if not value:
            return ""
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(tz).strftime("%m-%d %H:%M")

    who = {k: ctx.wording.label("who", k, ctx.cfg.desk_locale) for k in ("buyer", "bot", "agent", "system")}
    return ctx.wording.render("case_card", ctx.cfg.desk_locale, card=card, local=local, who=who,
                              shop_name=ctx.cfg.shop_name)


def card_text_within(ctx: Context, card: dict[str, Any], fits: Any) -> str:
    """The text card, dropping the oldest transcript lines until `fits(text)` (a platform's size limit)."""
    trimmed = dict(card)
    text = render_card_text(ctx, trimmed)
    keep = len(card.get("transcript", []))
    while not fits(text) and keep > 0:
        keep = keep // 2 if keep > 8 else keep - 1
        trimmed["transcript"] = card["transcript"][-keep:] if keep else []
        text = render_card_text(ctx, trimmed)
    return text
