"""kefu's phrasing bank (templates/bank): it loads, links each shop entry to the topic it
covers (and nothing to an entry it does not), and changes routing the way it promises:
paraphrases only the bank knows reach the shop's entry, and a topic the shop has no entry
for is "not sure" rather than a neighbouring entry's answer."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from handlers.bank import UNCOVERED, bank_for, is_action, load_bank
from handlers.config import ShopConfig
from handlers.matcher import canonical, normalize
from handlers.model import CLAIM_TYPES
from handlers.semantic import Embedder, SemanticRouter
from handlers.setup import DEFAULT_TEMPLATES, build_context, make_router
from handlers.wording import Wording


@pytest.fixture(scope="module")
def bank() -> dict:
    return load_bank(DEFAULT_TEMPLATES)


def test_the_shipped_bank_is_large_distinct_and_names_kefus_own_labels(bank: dict) -> None:
    assert len(bank) >= 40
    assert all(len(t.phrasings) >= 30 for t in bank.values()), {t.id: len(t.phrasings) for t in bank.values()}
    owner: dict[str, str] = {}
    twice = []
    for t in bank.values():
        for p in t.phrasings:
            key = normalize(canonical(p))
            if owner.setdefault(key, t.id) != t.id:
                twice.append((p, owner[key], t.id))
    assert not twice, twice  # a phrasing in two topics would teach the router both
    actions = {t for t in bank if is_action(t)}
    assert actions == {f"claim:{c}" for c in CLAIM_TYPES} | {"human", "none"}
    intents = Wording(DEFAULT_TEMPLATES).intents["zh-CN"]
    assert actions <= set(intents)  # each links to a label kefu has


def test_bank_files_merge_and_a_broken_one_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "bank").mkdir()
    (tmp_path / "bank" / "a.yaml").write_text(
        "topics:\n  cod:\n    title: 货到付款\n    phrasings: [到付行吗, 能到付吗]\n", "utf-8")
    (tmp_path / "bank" / "b.yaml").write_text(
        "topics:\n  cod:\n    phrasings: ['cash on delivery?', 到付行吗]\n  empty:\n    phrasings: []\n", "utf-8")
    (tmp_path / "bank" / "c.yaml").write_text("topics: [unclosed\n", "utf-8")
    with caplog.at_level(logging.WARNING, "kefu.routing"):
        got = load_bank(tmp_path)
    assert list(got) == ["cod"] and got["cod"].phrasings == ("到付行吗", "能到付吗", "cash on delivery?")
    assert "c.yaml" in caplog.text
    assert bank_for(tmp_path) == got and load_bank(tmp_path / "nowhere") == {}


def test_every_sample_shop_entry_links_to_its_own_topic(tmp_path: Path) -> None:
    """kefu's sample shop names its entries like the bank's topics, so the right link is known."""
    ctx = build_context(ShopConfig(), None, cache_dir=tmp_path)  # type: ignore[arg-type]
    router = ctx.router
    assert isinstance(router, SemanticRouter)
    faq_ids = set(ctx.wording.faqs["zh-CN"])
    wrong = {label: topics for label, topics in router.links.items() if topics[0] != label}
    assert not wrong, wrong
    assert faq_ids <= set(router.links), faq_ids - set(router.links)
    # ship_time's examples include "我都拍了两天了咋还没发货": it covers urging too.
    more = {label: topics[1:] for label, topics in router.links.items() if topics[1:]}
    assert more == {"ship_time": ["urge_shipping"]}, more
    for action in ("claim:damaged", "claim:not_received", "human", "none"):
        assert router.links[action] == [action]
    uncovered = {lb[len(UNCOVERED):] for lb in router.labels if lb.startswith(UNCOVERED)}
    assert {"store", "promotion", "expiry"} <= uncovered and not uncovered & faq_ids


def shop(tmp_path: Path, entries: dict[str, list[str]], answers: dict[str, str] | None = None,
         bank: bool = True) -> SemanticRouter:
    intents = Wording(DEFAULT_TEMPLATES).intents
    merged = {k: list(v) for k, v in entries.items()}
    for per_locale in intents.values():
        for label, examples in per_locale.items():
            merged.setdefault(label, []).extend(examples)
    router = make_router(merged, answers or {}, ShopConfig(route_method="semantic"), tmp_path,
                         load_bank(DEFAULT_TEMPLATES) if bank else None)
    assert isinstance(router, SemanticRouter)
    return router


def test_a_shop_worded_its_own_way_is_linked_by_meaning(tmp_path: Path) -> None:
    router = shop(tmp_path, {
        "pay_later": ["到付政策", "可以收货时候付钱不", "支持到付吗"],
        "tickets": ["开票说明", "怎么开票", "公司报销要票"],
        "pets": ["可以带狗狗来店里吗", "宠物友好吗", "猫能进门店吗"],  # no bank topic is about this
    })
    assert router.links["pay_later"] == ["cod"]
    assert router.links["tickets"] == ["invoice"]
    assert "pets" not in router.links


def test_the_bank_routes_paraphrases_the_shop_never_wrote(tmp_path: Path) -> None:
    entries = {
        "cod": ["货到付款", "支持货到付款吗", "能到付吗"],
        "invoice": ["发票", "能开发票吗", "发票怎么开"],
        "ship_when": ["发货时间", "什么时候发货", "下单后多久发货"],
    }
    with_bank, without = shop(tmp_path, entries), shop(tmp_path, entries, bank=False)
    assert with_bank.links and not without.links
    paraphrases = {
        "快递员来了我再付钱可以吗": "cod",
        "can I pay the delivery guy": "cod",
        "公司要报销 能给张票吗": "invoice",
        "今天下单明天能发出来吗": "ship_when",
        "付款后几天寄出": "ship_when",
    }
    banked = {normalize(canonical(p)) for t in load_bank(DEFAULT_TEMPLATES).values() for p in t.phrasings}
    for text, want in paraphrases.items():
        assert normalize(canonical(text)) not in banked  # not a bank phrasing typed as it is
        got = with_bank.route(text)
        assert got.label == want, (text, got)
        assert not any(c.startswith(UNCOVERED) for c in got.candidates)
    # Without the bank, at least one of them is missed or answered wrongly.
    assert sum(without.route(t).label == w for t, w in paraphrases.items()) < len(paraphrases)


def test_a_topic_the_shop_has_no_entry_for_is_not_answered_with_a_neighbour(tmp_path: Path) -> None:
    router = shop(tmp_path, {
        "cod": ["货到付款", "支持货到付款吗", "能到付吗"],
        "courier": ["发什么快递", "能发顺丰吗", "可以指定快递吗"],
    })
    for text in ("可以用花呗分三期吗", "我的快递单号是多少 想查下到哪了", "你们有实体店吗 想去试试"):
        got = router.route(text)
        assert got.label == "none", (text, got)
        assert not any(c.startswith(UNCOVERED) for c in got.candidates)
    assert [lb for lb, _ in router.scores("可以用花呗分三期吗")][0].startswith(UNCOVERED)


def test_bank_vectors_are_cached_with_the_examples(tmp_path: Path) -> None:
    Embedder._memory.clear()
    Embedder._loaded.clear()
    shop(tmp_path, {"cod": ["货到付款", "能到付吗"]})
    size = next(tmp_path.glob("embeddings-*.npz")).stat().st_size
    assert size > 1000 * 512 * 4  # the bank's phrasings are in it, so the next start embeds none
