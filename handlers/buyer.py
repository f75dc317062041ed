"""The buyer side of the conversation: greeting, FAQ, claim intake, waiting, rating."""

from __future__ import annotations

import re

from handlers.claims import CLAIMS, OrderNumbers, next_slot
from handlers.context import Context, Outcome
from handlers.handoff import hand_off, open_case
from handlers.matcher import normalize
from handlers.model import BuyerMessage, ClaimDraft, Conversation, FaqGiven
from handlers.turn import CLAIM_BUTTONS, MENU, Turn, detect_locale
from state.keys import session_key

_SAFE_REF = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_RATING = re.compile(r"^(?:[1-5]|[一二三四五])(?:分|星|颗星)?$")
_CN_DIGITS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5}
_RATING_IN = re.compile(r"(?<![0-9])([1-5一二三四五])\s*(?:分|星|颗星|stars?|/5)")
_STARS = ("⭐", "★", "🌟")
_STARS_AND_SPACE = re.compile(r"[⭐★🌟\s\ufe0f]+")
MENU_FAQ = {"menu:track": "track_parcel", "menu:returns": "return_policy"}


def new_conversation(ev: BuyerMessage, ctx: Context) -> Conversation:
    return Conversation(
        session=session_key(ev.channel.platform, ev.channel.bot, ev.channel.chat),
        channel=ev.channel, buyer=ev.buyer, locale=ctx.cfg.locale,
    )


async def handle_buyer(ev: BuyerMessage, convo: Conversation | None, ctx: Context) -> Outcome:
    c = convo or new_conversation(ev, ctx)
    if ev.buyer.name and ev.buyer.name != c.buyer.name:
        c.buyer = ev.buyer
    t = Turn(ctx, c, ev.at)
    text = ev.text.strip()
    # One stray English word ("ok", "thx") does not switch a Chinese conversation.
    locale = detect_locale(text, 1 if c.turns == 0 else 2) if text and not ev.payload else None
    if locale and locale in ctx.wording.messages:
        c.locale = locale
    payload = ev.payload or t.button_for_text(text)
    new_visit = c.turns == 0 or ev.at - c.last_buyer_at > ctx.cfg.idle_minutes * 60
    c.turns += 1
    c.last_buyer_at = ev.at
    if new_visit:
        c.visit_started_at, c.faq_given, c.misses = ev.at, [], 0
    if c.turns == 1 and ev.locale:
        hint = "zh-CN" if ev.locale.lower().startswith("zh") else "en" if ev.locale.lower().startswith("en") else None
        if hint and hint in ctx.wording.messages and not locale:
            c.locale = hint
    orders = OrderNumbers(ctx.cfg)
    if ev.order_no and _SAFE_REF.match(ev.order_no.strip()):
        # From the shop's own link (e.g. a deep link on the order page): trusted as given.
        c.known_order_no = ev.order_no.strip()

    if c.stage in ("with_agent", "waiting_agent"):
        case = await t.case(c.case_id)
        if case is not None and case.status != "resolved":
            if c.stage == "waiting_agent" and case.status == "taken":
                c.stage = "with_agent"
            if c.stage == "with_agent":
                await _relay_to_agent(t, ev, case)
            else:
                if new_visit:
                    t.say("greeting_back", case_id=case.id, purpose="greeting")
                await _while_waiting(t, ev, text, payload, case)
            return t.outcome()
        c.stage, c.case_id = "idle", None  # the case ended without us hearing: start afresh

    if new_visit or payload == "start":
        t.say("greeting", buttons=MENU, purpose="greeting")
    if payload == "start":
        return t.outcome()
    if payload and payload.startswith("rate:"):
        await _rate_by_payload(t, payload)
        return t.outcome()
    if c.stage == "rating":
        if await _rate_by_text(t, text):
            return t.outcome()
        c.stage, c.rating_case = "idle", None
    if c.stage in ("claim", "confirm", "edit") and c.claim is not None:
        await _claim_turn(t, ev, text, payload, orders)
    else:
        c.stage = "idle"
        await _idle_turn(t, ev, text, payload, orders, new_visit)
    return t.outcome()


# --- idle: menu, FAQ, starting claims and handoffs --------------------------------------


async def _idle_turn(
    t: Turn, ev: BuyerMessage, text: str, payload: str | None, orders: OrderNumbers, new_visit: bool
) -> None:
    c = t.c
    if ev.photos:
        room = t.ctx.cfg.max_photos_per_case - len(c.pending_photos)
        c.pending_photos.extend(ev.photos[: max(room, 0)])
        if not text:
            t.say("photo_unprompted", buttons=CLAIM_BUTTONS)
            return
    if ev.files and not text:
        _file_note(t, ev)
        return
    handled = payload is not None and await _on_payload(t, payload)
    c.clarified_text = None
    if handled:
        return
    if not text:
        if not new_visit:
            t.say("unsure", buttons=MENU)
        return
    if c.last_answer and (t.is_phrase(text, "unhelpful") or t.is_phrase(text, "no")):
        _unhelpful(t)  # "不对" right after an answer: it was the wrong one
        return
    order_no, _ = orders.find(text)
    # "衣服发错了 订单号 3849…": route what the buyer said, not the number and its label.
    words = orders.strip(text, order_no) if order_no else ""
    route = t.ctx.router.route(words or text)
    label = route.label
    if label in ("human", "complaint"):
        await hand_off(t, "complaint" if label == "complaint" else "buyer_request")
    elif label.startswith("claim:") and label[6:] in CLAIMS:
        await _start_claim(t, label[6:], text, order_no, orders)
    elif (order_no and label in ("none", "clarify") and c.last_answer and c.faq_given
          and len(normalize(words)) >= 4):
        # Right after an answer, an order number with details ("订单号… 改成杭州市…"): the buyer is
        # giving a person something to act on, so a person gets it, with the conversation.
        c.known_order_no = order_no
        await hand_off(t, "order_details")
    elif order_no and label in ("none", "clarify", "greeting", "thanks"):
        c.known_order_no = order_no
        c.clarified_text = text
        t.say("order_noted", buttons=CLAIM_BUTTONS, order_no=order_no)
    elif label == "greeting":
        if not new_visit:
            t.say("greeting_reply", buttons=MENU)
    elif label == "thanks":
        c.misses = 0
        t.say("thanks_reply")
    elif t.ctx.wording.faq(label, c.locale) is not None:
        _answer_faq(t, label, text)
    elif label == "clarify" and (choices := [
        p for p in dict.fromkeys(_payload_for(x) for x in route.candidates) if p and p != "human"
    ]):
        c.misses = 0
        c.clarified_text = text  # if the buyer picks a claim, this message already describes it
        t.say("clarify", buttons=choices + ["human"])
    else:  # nothing known, or a "did you mean" with nothing to offer but a person
        c.misses += 1
        t.miss(text, "unknown")
        if c.misses >= t.ctx.cfg.misses_before_handoff:
            await hand_off(t, "bot_stuck")
        else:
            t.say("unsure", buttons=MENU)


def _file_note(t: Turn, ev: BuyerMessage) -> None:
    """A file where a photo is expected, or something we cannot show (voice, sticker)."""
    if any(f.reason == "unsupported" for f in ev.files):
        t.say("unsupported_message")
    else:
        t.say("not_a_photo")


def _payload_for(label: str) -> str:
    if label.startswith("claim:") or label == "human":
        return label
    if label == "complaint":
        return "human"
    if label in ("greeting", "thanks", "none", "clarify"):
        return ""
    return f"faq:{label}"


async def _on_payload(t: Turn, payload: str) -> bool:
    """A button press outside a claim. False: not ours, treat the text as typed."""
    w, loc = t.ctx.wording, t.c.locale
    if payload in MENU_FAQ and w.faq(MENU_FAQ[payload], loc):
        _answer_faq(t, MENU_FAQ[payload])
    elif payload == "menu:problem":
        t.say("problem_menu", buttons=CLAIM_BUTTONS)
    elif payload == "human":
        await hand_off(t, "buyer_request")
    elif payload.startswith("claim:") and payload[6:] in CLAIMS:
        orders = OrderNumbers(t.ctx.cfg)
        said_before = t.c.clarified_text or ""
        await _start_claim(t, payload[6:], said_before, orders.find(said_before)[0] if said_before else None, orders)
    elif payload.startswith("faq:") and w.faq(payload[4:], loc):
        _answer_faq(t, payload[4:])
    elif payload == "helpful:no":
        _unhelpful(t)
    else:
        return False
    return True


def _answer_faq(t: Turn, faq_id: str, question: str = "") -> None:
    c, w = t.c, t.ctx.wording
    entry = w.faq(faq_id, c.locale)
    assert entry is not None
    text = w.faq_answer(faq_id, c.locale, **t.values())
    t.say_text(text, buttons=list(entry.buttons) + ["helpful:no"])
    c.faq_given.append(FaqGiven(at=t.now, faq_id=faq_id, title=entry.title))
    c.last_answer, c.last_question, c.misses = faq_id, question or c.last_question, 0


def _answer_missed(t: Turn) -> str | None:
    """The last answer did not help: note it for the admin's misses page, forget it, return it."""
    c = t.c
    last, c.last_answer = c.last_answer, None
    if last and c.last_question:
        t.miss(c.last_question, "unhelpful", last)
    return last


def _unhelpful(t: Turn) -> None:
    """The buyer says the last answer did not help: offer the next best, or a person."""
    c = t.c
    last = _answer_missed(t)
    entry = t.ctx.wording.faq(last, c.locale) if last else None
    others: list[str] = []
    if entry is not None:
        # The next best entries for what the buyer asked (else for the entry that missed),
        # as long as they score within a tenth of the best of them.
        about_entry = entry.title + " " + " ".join(entry.questions[:3])
        for probe in dict.fromkeys(q for q in (c.last_question, about_entry) if q):
            ranked = [(label, score) for label, score in t.ctx.router.scores(probe)
                      if label != last and t.ctx.wording.faq(label, c.locale)]
            others = [f"faq:{label}" for label, score in ranked[:3] if score >= ranked[0][1] * 0.1]
            if others:
                break
    if others:
        t.say("faq_unhelpful", buttons=others + ["human"])
    else:
        t.say("faq_unhelpful_none", buttons=["human"])


# --- claims ---------------------------------------------------------------------------------


_LEAD = re.compile(r"^[\s,，。.!！~～、]+")


SMALL_TALK = ("thanks", "greeting")
MAX_DESCRIPTION = 1000


def _more(description: str | None, detail: str) -> str:
    """The claim's description with another detail the buyer gave (each said once)."""
    if not description:
        return detail[:MAX_DESCRIPTION]
    if detail in description:
        return description
    return f"{description}；{detail}"[:MAX_DESCRIPTION]


def _description_from(
    t: Turn, text: str, order_no: str | None, orders: OrderNumbers, minimum: int
) -> str | None:
    rest = orders.strip(text, order_no)
    # "你好，收到的盘子碎了" -> "收到的盘子碎了": greetings are not part of what happened.
    greetings = sorted(t.ctx.wording.intents.get(t.c.locale, {}).get("greeting", []), key=len, reverse=True)
    changed = True
    while changed:
        changed = False
        for g in greetings:
            if rest.lower().startswith(g.lower()) and len(rest) > len(g):
                rest, changed = _LEAD.sub("", rest[len(g):]), True
                break
    if len(normalize(rest)) < minimum:
        return None
    if minimum > 2 and t.ctx.router.is_example(rest):
        return None  # volunteered "快递一直没到" only names the claim; asked for, it is an answer
    return rest


async def _start_claim(t: Turn, claim_type: str, text: str, order_no: str | None, orders: OrderNumbers) -> None:
    c = t.c
    draft = ClaimDraft(type=claim_type, started_at=t.now)  # type: ignore[arg-type]
    draft.order_no = order_no or c.known_order_no
    draft.photos = list(c.pending_photos)
    c.pending_photos = []
    # A buyer who already told us what happened is not asked again.
    draft.description = _description_from(t, text, order_no, orders, 6) if text else None
    c.claim, c.stage = draft, "claim"
    await _ask_next(t)


async def _ask_next(t: Turn) -> None:
    c = t.c
    draft = c.claim
    assert draft is not None
    slot = next_slot(draft)
    if slot is None:
        c.stage = "confirm"
        draft.asking = None
        _confirm(t)
        return
    c.stage = "claim"
    draft.asking = slot
    specific = f"ask_{draft.type}_{slot}"
    template = specific if t.ctx.wording.has(specific, c.locale) and specific in t.ctx.wording.messages.get(
        c.locale if c.locale in t.ctx.wording.messages else t.ctx.wording.default_locale, {}) else f"ask_{slot}"
    buttons: list[str] = []
    if slot == "photos":
        buttons = ["photos_done", "photos_skip"] if draft.photo_nudged else ["photos_done"]
    elif slot == "order_no":
        buttons = ["human"]
    t.say(template, buttons=buttons)


def _confirm(t: Turn) -> None:
    draft = t.c.claim
    assert draft is not None
    t.say(
        "confirm_claim", buttons=["confirm:yes", "confirm:no", "human"],
        claim_type=draft.type, claim_name=t.ctx.wording.label("case_types", draft.type, t.c.locale),
        order_no=draft.order_no or "", photo_count=len(draft.photos), description=draft.description or "",
    )


async def _claim_turn(t: Turn, ev: BuyerMessage, text: str, payload: str | None, orders: OrderNumbers) -> None:
    c, cfg = t.c, t.ctx.cfg
    draft = c.claim
    assert draft is not None
    if payload == "human":
        await hand_off(t, "buyer_request")
        return
    if payload == "cancel_claim" or (text and t.is_phrase(text, "cancel")):
        c.claim, c.stage = None, "idle"
        t.say("claim_cancelled", buttons=MENU)
        return
    words = orders.without_numbers(text) if text and not payload else ""
    if words:  # an order number alone ("PDD-12345678") is an answer, never a new request
        label = t.ctx.router.route(words).label
        if label in ("human", "complaint"):
            await hand_off(t, "complaint" if label == "complaint" else "buyer_request")
            return

    added = 0
    if ev.photos:
        room = cfg.max_photos_per_case - len(draft.photos)
        new = [p for p in ev.photos if p.id not in {x.id for x in draft.photos}][: max(room, 0)]
        draft.photos.extend(new)
        added = len(new)
        if len(new) < len(ev.photos) and room <= len(new):
            t.say("photo_limit", max_photos=cfg.max_photos_per_case)
    if ev.files and not ev.photos:
        _file_note(t, ev)
        if not text:
            return

    if c.stage == "confirm":
        await _confirm_turn(t, ev, text, payload, orders, added)
        return
    if c.stage == "edit":
        if payload in ("edit:order_no", "edit:photos", "edit:description"):
            slot = payload[5:]
            if slot == "order_no":
                draft.order_no, draft.order_failures, draft.order_unverified = None, 0, False
            elif slot == "photos":
                draft.photos, draft.photos_done, draft.photos_skipped = [], False, False
            else:
                draft.description = None
            await _ask_next(t)
            return
        c.stage = "claim"  # anything else is new input for the claim

    order_no, attempted = orders.find(text) if text else (None, False)
    if order_no:
        draft.order_no, draft.order_unverified = order_no, False
    asking = draft.asking

    if asking == "order_no" and not draft.order_no:
        if ev.photos and not text:
            t.say("photo_received", photo_count=len(draft.photos))
            await _ask_next(t)
            return
        route = t.ctx.router.route(text) if text else None
        where = t.mentions(text, "where_is_it")  # "where do I find it?": the re-ask says where
        if route and not attempted and not where and t.ctx.wording.faq(route.label, c.locale):
            _answer_faq(t, route.label, text)  # a side question: answer it, then carry on
            await _ask_next(t)
            return
        draft.order_failures += 1
        if draft.order_failures >= cfg.max_order_attempts:
            draft.order_unverified = True
            await open_case(t, draft.type, "order_unverified", draft)
            return
        t.say("order_invalid", buttons=["human"], example=cfg.order_example,
              attempts_left=cfg.max_order_attempts - draft.order_failures)
        return

    if asking == "photos":
        done = payload == "photos_done" or (text and t.is_phrase(text, "done"))
        skip = payload == "photos_skip" or (text and t.is_phrase(text, "skip"))
        if skip:
            draft.photos_skipped = True
        elif done:
            if draft.photos:
                draft.photos_done = True
            else:
                draft.photo_nudged = True
                t.say("photos_needed", buttons=["photos_skip", "human"])
                return
        else:
            if ev.photos:
                if text and not order_no and draft.description is None:
                    draft.description = _description_from(t, text, None, orders, 2)
                t.say("photo_received", buttons=["photos_done"], photo_count=len(draft.photos))
                return
            if text and not order_no:
                route = t.ctx.router.route(text)
                if t.ctx.wording.faq(route.label, c.locale):
                    _answer_faq(t, route.label, text)  # a side question ("运费谁出?"): answered, then carry on
                elif route.label not in SMALL_TALK:
                    detail = _description_from(t, text, None, orders, 2)
                    if detail:  # more about what happened: kept with the claim, and said so
                        draft.description = _more(draft.description, detail)
                        t.say("description_noted")
    elif asking == "description":
        desc = _description_from(t, text, order_no, orders, 2) if text else None
        if desc and not t.is_phrase(desc, "yes") and not t.is_phrase(desc, "no"):
            draft.description = desc
        elif ev.photos:
            t.say("photo_received", photo_count=len(draft.photos))
            return
    elif text and draft.description is None:
        draft.description = _description_from(t, text, order_no, orders, 6)
    await _ask_next(t)


async def _confirm_turn(
    t: Turn, ev: BuyerMessage, text: str, payload: str | None, orders: OrderNumbers, added: int
) -> None:
    c = t.c
    draft = c.claim
    assert draft is not None
    if payload == "confirm:yes" or (not payload and text and t.is_phrase(text, "yes")):
        await open_case(t, draft.type, "claim", draft)
        return
    if payload == "confirm:no" or (not payload and text and t.is_phrase(text, "no")):
        c.stage = "edit"
        t.say("edit_menu", buttons=["edit:order_no", "edit:photos", "edit:description", "human"])
        return
    if text:
        order_no, _ = orders.find(text)
        if order_no:
            draft.order_no, draft.order_unverified = order_no, False
        rest = orders.strip(text, order_no)
        route = t.ctx.router.route(rest) if rest else None
        if route and not order_no and t.ctx.wording.faq(route.label, c.locale):
            _answer_faq(t, route.label, rest)
        elif len(normalize(rest)) >= 2 and not (route and route.label in SMALL_TALK):
            draft.description = _more(draft.description, rest)  # more detail from the buyer
    _confirm(t)


# --- waiting for / with an agent -------------------------------------------------------------


async def _while_waiting(t: Turn, ev: BuyerMessage, text: str, payload: str | None, case) -> None:  # type: ignore[no-untyped-def]
    c = t.c
    _add_evidence(t, ev, case)
    t.desk(case.id, "message", who="buyer", text=_said(t, ev, text), photos=ev.photos)
    position = await t.queue_position(case)
    if payload == "human" or (text and t.ctx.router.route(text).label in ("human", "complaint")):
        t.say("case_already_queued", case_id=case.id, position=position)
        return
    if c.last_answer and (payload == "helpful:no" or (text and t.is_phrase(text, "unhelpful"))):
        _answer_missed(t)  # "没用" after an answer given while waiting: a person is coming anyway
        t.say("case_waiting_ack", case_id=case.id, position=position)
        return
    if text and not payload:
        route = t.ctx.router.route(text)
        if t.ctx.wording.faq(route.label, c.locale):
            _answer_faq(t, route.label, text)
            return
    if ev.files and not ev.photos:
        _file_note(t, ev)
        return
    t.say("case_waiting_ack", case_id=case.id, position=position)


async def _relay_to_agent(t: Turn, ev: BuyerMessage, case) -> None:  # type: ignore[no-untyped-def]
    # While a person has the case the bot stays quiet: the agent answers.
    _add_evidence(t, ev, case)
    t.desk(case.id, "message", who="buyer", text=_said(t, ev, ev.text.strip()), photos=ev.photos)


def _said(t: Turn, ev: BuyerMessage, text: str) -> str:
    if text:
        return text
    if ev.payload:
        return t.button(ev.payload).text
    if ev.files:
        return "📎 " + ", ".join(f.name or f.content_type or "file" for f in ev.files)
    return ""


def _add_evidence(t: Turn, ev: BuyerMessage, case) -> None:  # type: ignore[no-untyped-def]
    if ev.photos:
        known = {p.id for p in case.photos}
        room = t.ctx.cfg.max_photos_per_case - len(case.photos)
        case.photos.extend([p for p in ev.photos if p.id not in known][: max(room, 0)])
    t.keep(case)


# --- rating ------------------------------------------------------------------------------------


async def _rate_by_payload(t: Turn, payload: str) -> None:
    try:
        _, case_id, n = payload.split(":")
        await _rate(t, case_id, int(n))
    except ValueError:
        t.say("unsure", buttons=MENU)


async def _rate_by_text(t: Turn, text: str) -> bool:
    rating = _rating_in(t, text)
    if rating is None or not t.c.rating_case:
        return False
    await _rate(t, t.c.rating_case, rating)
    return True


def _rating_in(t: Turn, text: str) -> int | None:
    """A rating typed instead of pressed: "5", "五星好评", "给4分", "⭐⭐⭐", "非常满意", "terrible"."""
    stars = sum(text.count(s) for s in _STARS)
    if 1 <= stars <= 5 and not _STARS_AND_SPACE.sub("", text):
        return stars
    n = normalize(text)
    if _RATING.match(n):
        return int(_CN_DIGITS.get(n[0], n[0]))
    m = _RATING_IN.search(n)
    if m and len(n) <= 12:
        return int(_CN_DIGITS.get(m.group(1), m.group(1)))
    for rating in (5, 3, 1):
        if t.is_phrase(text, f"rate_{rating}"):
            return rating
    return None


async def _rate(t: Turn, case_id: str, rating: int) -> None:
    case = await t.case(case_id)
    if case is None or case.status != "resolved" or not 1 <= rating <= 5:
        t.say("unsure", buttons=MENU)
        return
    case.rating, case.rated_at = rating, t.now
    case.log(t.now, "rated", "buyer", str(rating))
    t.keep(case)
    t.case_id = case.id
    t.desk(case.id, "update")
    t.c.stage, t.c.rating_case = "idle", None
    t.say("rating_thanks" if rating >= 3 else "rating_sorry", rating=rating)
