"""The seams between adapters, handler and storage: Events in, Actions out,
and the Conversation and Case documents. Frozen where they cross a boundary."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

ClaimType = Literal["wrong_item", "damaged", "quality", "missing_item", "not_received"]
CLAIM_TYPES: tuple[str, ...] = ("wrong_item", "damaged", "quality", "missing_item", "not_received")
CaseType = Literal["wrong_item", "damaged", "quality", "missing_item", "not_received", "human", "complaint"]
CaseStatus = Literal["open", "taken", "resolved"]
Verb = Literal["take", "reply", "note", "resolve", "reopen", "show"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Channel(Frozen):
    """Where a buyer is: platform, which bot/account of it, which chat."""

    platform: str
    bot: str = "default"
    chat: str


class Buyer(Frozen):
    id: str
    name: str = ""


class Media(Frozen):
    """A stored photo (see state.media); `id` is what storage and adapters share."""

    id: str
    content_type: str = "image/jpeg"
    size: int = 0
    width: int | None = None
    height: int | None = None


class FileInfo(Frozen):
    """An upload that is not a photo (kept out of the case, answered politely)."""

    name: str = ""
    content_type: str = ""
    size: int = 0
    reason: str = ""


class Button(Frozen):
    text: str
    payload: str


# --- events -----------------------------------------------------------------


class BuyerMessage(Frozen):
    """One buyer turn: text, a button press, one photo or an album, or a file."""

    type: Literal["buyer"] = "buyer"
    message_id: str
    channel: Channel
    buyer: Buyer
    at: float
    text: str = ""
    payload: str | None = None
    photos: tuple[Media, ...] = ()
    files: tuple[FileInfo, ...] = ()
    order_no: str | None = None  # known from the entry point (e.g. a deep link)
    locale: str | None = None  # the buyer's app language, when the platform tells it


class AgentCommand(Frozen):
    """An agent acting on a case from a desk."""

    type: Literal["agent"] = "agent"
    message_id: str
    case_id: str
    verb: Verb
    agent: str
    at: float
    text: str = ""
    photos: tuple[Media, ...] = ()
    desk: str = "web"
    delivered: bool = False  # a reply the agent already sent in the platform's own app: only record it


class SendFailed(Frozen):
    """The dispatcher gave up on a send; the case must show it."""

    type: Literal["send_failed"] = "send_failed"
    message_id: str
    session: str
    at: float
    case_id: str | None = None
    text: str = ""
    error: str = ""
    reason: str = ""  # a key of the send_fail_reasons labels: why, in the agents' words


Event = Annotated[Union[BuyerMessage, AgentCommand, SendFailed], Field(discriminator="type")]


# --- actions ------------------------------------------------------------------


class Reply(Frozen):
    """Say something to the buyer in their channel."""

    type: Literal["reply"] = "reply"
    channel: Channel
    text: str = ""
    buttons: tuple[Button, ...] = ()
    photo: Media | None = None
    sender: Literal["bot", "agent"] = "bot"
    agent: str | None = None
    case_id: str | None = None
    # What the message is for, so a channel can do what its platform asks at that moment:
    # greeting (WeCom's welcome code), handoff (a case was opened), taken (a person joined:
    # `agent`), resolved (the outcome and the rating request).
    purpose: str = ""
    delivered: bool = False  # the platform already showed it (an agent wrote in the platform's own app)


class DeskAction(Frozen):
    """Tell the desk(s) about a case.

    kind: card (post the full card), update (the card changed: edit it in
    place), message (something happened in the case thread), notice (an
    answer to an agent's command, only for the desk it came from).
    """

    type: Literal["desk"] = "desk"
    case_id: str
    kind: Literal["card", "update", "message", "notice"]
    who: Literal["buyer", "bot", "agent", "system", ""] = ""
    text: str = ""
    photos: tuple[Media, ...] = ()
    agent: str | None = None
    desk: str | None = None  # None: every desk
    origin: str | None = None  # the desk an agent's message came from (it already shows it)


Action = Annotated[Union[Reply, DeskAction], Field(discriminator="type")]


# --- documents --------------------------------------------------------------------


class ClaimDraft(BaseModel):
    """Slots collected for a claim; the next question is the first empty slot."""

    type: ClaimType
    order_no: str | None = None
    order_failures: int = 0
    order_unverified: bool = False
    photos: list[Media] = Field(default_factory=list)
    photos_done: bool = False
    photos_skipped: bool = False
    photo_nudged: bool = False
    description: str | None = None
    asking: str | None = None  # the slot the bot asked for last
    started_at: float = 0.0


class FaqGiven(BaseModel):
    at: float
    faq_id: str
    title: str


class Conversation(BaseModel):
    session: str
    channel: Channel
    buyer: Buyer
    locale: str = "zh-CN"
    stage: Literal["idle", "claim", "confirm", "edit", "waiting_agent", "with_agent", "rating"] = "idle"
    claim: ClaimDraft | None = None
    case_id: str | None = None  # the case waiting for or with an agent
    rating_case: str | None = None
    known_order_no: str | None = None
    pending_photos: list[Media] = Field(default_factory=list)
    visit_started_at: float = 0.0
    last_buyer_at: float = 0.0
    last_case_closed_at: float = 0.0
    misses: int = 0
    faq_given: list[FaqGiven] = Field(default_factory=list)
    last_answer: str | None = None  # FAQ id of the last answer (for "did not help")
    last_question: str | None = None  # what the buyer asked when that answer was given
    clarified_text: str | None = None  # the message a "您是不是想问" was about
    buttons: list[Button] = Field(default_factory=list)
    turns: int = 0


class Note(BaseModel):
    at: float
    agent: str
    text: str


class Promise(BaseModel):
    at: float
    by: str  # "bot" or an agent
    text: str
    due: float | None = None


class HistoryEntry(BaseModel):
    at: float
    event: str  # created, taken, reply, note, resolved, reopened, rated, buyer_message, send_failed
    by: str = ""
    text: str = ""


class Case(BaseModel):
    id: str
    session: str
    channel: Channel
    buyer: Buyer
    locale: str = "zh-CN"
    type: CaseType
    reason: str = ""  # claim | buyer_request | complaint | bot_stuck | order_unverified | order_details
    status: CaseStatus = "open"
    order_no: str | None = None
    order_verified: bool = False
    photos: list[Media] = Field(default_factory=list)
    description: str | None = None
    faq_given: list[FaqGiven] = Field(default_factory=list)
    promises: list[Promise] = Field(default_factory=list)
    notes: list[Note] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(default_factory=list)
    assignee: str | None = None
    resolution: str | None = None
    rating: int | None = None
    created_at: float
    taken_at: float | None = None
    first_reply_at: float | None = None
    resolved_at: float | None = None
    rated_at: float | None = None
    transcript_since: float = 0.0
    transcript_until: float | None = None
    send_failures: int = 0

    def log(self, at: float, event: str, by: str = "", text: str = "") -> None:
        self.history.append(HistoryEntry(at=at, event=event, by=by, text=text))
