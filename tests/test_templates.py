"""The shipped wording and the safety of rendering it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from handlers.setup import DEFAULT_TEMPLATES, router_entries
from handlers.wording import SAMPLE_VARS, TemplateProblem, Wording


@pytest.fixture(scope="module")
def wording() -> Wording:
    return Wording(DEFAULT_TEMPLATES)


def test_the_sample_shop_has_twenty_plus_faqs_in_both_languages(wording: Wording) -> None:
    zh, en = wording.faqs["zh-CN"], wording.faqs["en"]
    assert len(zh) >= 20 and set(zh) == set(en)
    for fid, entry in zh.items():
        assert len(entry.questions) >= 3, fid
        answer = wording.faq_answer(fid, "zh-CN", **SAMPLE_VARS)
        assert answer.startswith("亲"), fid
        assert wording.faq_answer(fid, "en", **SAMPLE_VARS), fid
    for core in ("track_parcel", "return_policy", "ship_time", "delivery_days", "return_shipping", "invoice",
                 "size_guide", "change_address", "cancel_order", "coupon"):
        assert core in zh


def test_every_message_exists_in_every_locale(wording: Wording) -> None:
    assert set(wording.messages["zh-CN"]) == set(wording.messages["en"])
    assert set(wording.labels["zh-CN"]["buttons"]) == set(wording.labels["en"]["buttons"])
    assert set(wording.labels["zh-CN"]["ui"]) == set(wording.labels["en"]["ui"])


def test_faq_buttons_are_known_payloads(wording: Wording) -> None:
    known = set(wording.labels["zh-CN"]["buttons"])
    for entries in wording.faqs.values():
        for entry in entries.values():
            assert set(entry.buttons) <= known, entry.id


def test_intents_cover_the_claims_and_a_person(wording: Wording) -> None:
    labels = set(router_entries(wording))
    for label in ("claim:wrong_item", "claim:damaged", "claim:quality", "claim:missing_item",
                  "claim:not_received", "human", "complaint"):
        assert label in labels


def copy_templates(tmp_path: Path) -> Path:
    dst = tmp_path / "templates"
    shutil.copytree(DEFAULT_TEMPLATES, dst)
    return dst


def test_a_syntax_error_is_reported_with_file_and_line(tmp_path: Path) -> None:
    root = copy_templates(tmp_path)
    (root / "messages" / "zh-CN" / "greeting.j2").write_text("亲，欢迎\n{% if shop_name %}没有结束", "utf-8")
    with pytest.raises(TemplateProblem) as err:
        Wording(root)
    assert any("greeting.j2:2" in p for p in err.value.problems)


def test_an_unknown_variable_is_reported(tmp_path: Path) -> None:
    root = copy_templates(tmp_path)
    (root / "faq" / "zh-CN" / "invoice.yaml").write_text(
        "id: invoice\ntitle: 发票\nquestions: [发票]\nanswer: 亲，{{ shopp_name }}\n", "utf-8")
    with pytest.raises(TemplateProblem) as err:
        Wording(root)
    assert any("invoice.yaml" in p and "shopp_name" in p for p in err.value.problems)


@pytest.mark.parametrize("evil", [
    "{{ ''.__class__.__mro__ }}",
    "{{ shop_name.__class__.__base__.__subclasses__() }}",
    "{{ local.__globals__ }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
])
def test_templates_cannot_escape_the_sandbox(tmp_path: Path, evil: str) -> None:
    root = copy_templates(tmp_path)
    (root / "messages" / "zh-CN" / "thanks_reply.j2").write_text(evil, "utf-8")
    with pytest.raises(TemplateProblem) as err:
        Wording(root)
    assert any("thanks_reply.j2" in p for p in err.value.problems)


def test_faq_files_are_validated(tmp_path: Path) -> None:
    root = copy_templates(tmp_path)
    (root / "faq" / "zh-CN" / "broken.yaml").write_text("id: other\ntitle: x\nquestions: [a]\nanswer: b\n", "utf-8")
    (root / "faq" / "zh-CN" / "bad_yaml.yaml").write_text("id: [unclosed\n", "utf-8")
    with pytest.raises(TemplateProblem) as err:
        Wording(root)
    text = "\n".join(err.value.problems)
    assert "broken.yaml" in text and "must match the file name" in text
    assert "bad_yaml.yaml" in text and "invalid YAML" in text


def test_an_faq_answer_may_only_use_what_answers_are_given(tmp_path: Path) -> None:
    root = copy_templates(tmp_path)
    (root / "faq" / "zh-CN" / "invoice.yaml").write_text(
        "id: invoice\ntitle: 发票\nquestions: [发票]\nanswer: 亲，订单{{ order_no }}可以开票\n", "utf-8")
    with pytest.raises(TemplateProblem) as err:
        Wording(root)
    assert any("invoice.yaml" in p and "order_no" in p for p in err.value.problems)
