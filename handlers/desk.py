"""The agent side: take, reply, note, resolve, reopen, show a case."""

from __future__ import annotations

from handlers.context import Context, Outcome
from handlers.model import AgentCommand, Case, Conversation, DeskAction, Note, SendFailed
from handlers.turn import Turn


def normalize_case_id(raw: str) -> str:
    """Agents type k1042, K1042 or 1042."""
    s = raw.strip().upper().lstrip("#")
    return s if s.startswith("K") else f"K{s}"


def _conversation_for(case: Case, convo: Conversation | None) -> Conversation:
    return convo or Conversation(session=case.session, channel=case.channel, buyer=case.buyer, locale=case.locale)


async def handle_agent(ev: AgentCommand, convo: Conversation | None, ctx: Context) -> Outcome:
    case_id = normalize_case_id(ev.case_id)
    row = await ctx.store.get_case(case_id)
    if row is None:
        text = ctx.wording.render("notice_not_found", ctx.cfg.desk_locale, case_id=case_id)
        notice = DeskAction(case_id=case_id, kind="notice", who="system", text=text, desk=ev.desk, agent=ev.agent)
        return Outcome(conversation=None, actions=[notice], error="not_found", detail=text)
    case = Case.model_validate(row.data)
    c = _conversation_for(case, convo)
    t = Turn(ctx, c, ev.at)
    t.case_id = case.id
    verb = ev.verb
    # The buyer hears about this case in the case's language, not the desk's.
    c_locale = c.locale

    def fail(code: str, template: str, **values: object) -> Outcome:
        t.notice(ev.desk, case.id, template, to_agent=ev.agent, **values)
        t.error, t.detail = code, t.actions[-1].text
        return t.outcome()

    if verb == "show":
        t.desk(case.id, "card", desk=ev.desk)
        return t.outcome()
    if verb == "note":
        if not ev.text.strip():
            return fail("invalid", "notice_need_text")
        case.notes.append(Note(at=ev.at, agent=ev.agent, text=ev.text.strip()))
        case.log(ev.at, "note", ev.agent, ev.text.strip())
        t.keep(case)
        t.desk(case.id, "update")
        return t.outcome()
    if verb == "reopen":
        if case.status != "resolved":
            return fail("conflict", "notice_not_resolved")
        case.status, case.assignee, case.resolved_at, case.transcript_until = "open", None, None, None
        case.log(ev.at, "reopened", ev.agent, ev.text.strip())
        t.keep(case)
        if c.case_id in (None, case.id) or c.stage not in ("waiting_agent", "with_agent"):
            c.stage, c.case_id, c.rating_case, c.claim = "waiting_agent", case.id, None, None
        t.say("case_reopened", case_id=case.id)
        t.desk(case.id, "update")
        return t.outcome()

    # take / reply / resolve act on an unresolved case.
    if case.status == "resolved":
        return fail("conflict", "notice_resolved_already")
    if verb == "take" and case.status == "taken" and case.assignee not in (None, ev.agent):
        return fail("conflict", "notice_taken_by_other", agent=case.assignee or "")
    if verb == "reply" and not ev.text.strip() and not ev.photos:
        return fail("invalid", "notice_need_text")
    if verb == "resolve" and not ev.text.strip():
        return fail("invalid", "notice_need_summary")

    if case.status == "open" and verb in ("take", "reply"):
        # Replying to a waiting case takes it: the buyer must know a person is there.
        case.status, case.assignee = "taken", ev.agent
        case.taken_at = case.taken_at or ev.at
        case.log(ev.at, "taken", ev.agent)
        if c.case_id == case.id or c.stage not in ("waiting_agent", "with_agent"):
            c.stage, c.case_id = "with_agent", case.id
        c.locale = c_locale
        if not ev.delivered:  # an agent writing in WeCom's own client was announced by WeCom
            t.say("agent_joined", purpose="taken", agent=ev.agent, case_id=case.id)
            t.actions[-1] = t.actions[-1].model_copy(update={"agent": ev.agent})
    if verb == "reply":
        text = ev.text.strip()
        for i, photo in enumerate(ev.photos or (None,)):
            t.say_text(text if i == 0 else "", photo=photo, sender="agent", agent=ev.agent, delivered=ev.delivered)
        case.first_reply_at = case.first_reply_at or ev.at
        case.log(ev.at, "reply", ev.agent, text)
        t.desk(case.id, "message", who="agent", agent=ev.agent, text=text, photos=ev.photos, origin=ev.desk)
    if verb == "resolve":
        summary = ev.text.strip()
        case.status, case.resolution, case.resolved_at = "resolved", summary, ev.at
        case.assignee = case.assignee or ev.agent
        case.transcript_until = ev.at
        case.log(ev.at, "resolved", ev.agent, summary)
        if c.case_id == case.id:
            c.case_id = None
        if c.stage in ("waiting_agent", "with_agent") and c.case_id is None:
            c.stage = "rating"
        c.rating_case, c.last_case_closed_at = case.id, ev.at
        t.say("case_resolved", buttons=[f"rate:{case.id}:{n}" for n in (5, 4, 3, 2, 1)], purpose="resolved",
              case_id=case.id, summary=summary)
    t.keep(case)
    t.desk(case.id, "update")
    return t.outcome()


async def handle_send_failed(ev: SendFailed, convo: Conversation | None, ctx: Context) -> Outcome:
    """Record an undeliverable message on the case so an agent sees it; never reply to the buyer."""
    case_id = ev.case_id or (convo.case_id if convo else None) or (convo.rating_case if convo else None)
    if convo is None or case_id is None:
        return Outcome(conversation=convo)
    t = Turn(ctx, convo, ev.at)
    case = await t.case(case_id)
    if case is None:
        return Outcome(conversation=convo)
    case.send_failures += 1
    case.log(ev.at, "send_failed", "system", f"{ev.text[:200]} ({ev.error[:200]})")
    t.keep(case)
    why = ctx.wording.label("send_fail_reasons", ev.reason, ctx.cfg.desk_locale) if ev.reason else ""
    t.desk(case.id, "message", who="system",
           text=t.render("send_failed", locale=ctx.cfg.desk_locale, case_id=case.id, why=why))
    t.desk(case.id, "update")
    return t.outcome()
