"""Editing wording while kefu runs: validated before it is stored, sandboxed, live at once."""

from __future__ import annotations

from tests.conftest import Running
from tests.support import WebBuyer, texts

ADMIN = {"Authorization": "Bearer test-admin-token"}


def faq(answer: str, fid: str = "invoice") -> str:
    return f"id: {fid}\ntitle: 发票\nquestions: [能开发票吗, 发票怎么开]\nanswer: |\n  {answer}\n"


async def test_edits_need_the_admin_token(running: Running) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}):
        async with running.http.get(running.base + "/api/admin/templates", headers=headers) as resp:
            assert resp.status == 401


async def test_a_good_edit_is_served_at_once_and_a_bad_one_is_refused_with_the_line(running: Running) -> None:
    url = running.base + "/api/admin/templates/faq/zh-CN/invoice"
    async with running.http.put(url, json={"source": faq("亲，{{ shop_name }}可以开电子发票哦（已更新）")},
                                headers=ADMIN) as resp:
        assert resp.status == 200 and (await resp.json())["version"] >= 1
    buyer = WebBuyer(running.http, running.base)
    assert "小满生活馆可以开电子发票哦（已更新）" in texts(await buyer.say("能开发票吗"))
    broken = faq("亲，{% if %}坏了")
    async with running.http.put(url, json={"source": broken}, headers=ADMIN) as resp:
        body = await resp.json()
        assert resp.status == 422 and any("invoice" in p and ":" in p for p in body["problems"])
    # The old version keeps serving.
    assert "（已更新）" in texts(await buyer.say("发票怎么开"))
    async with running.http.get(url, headers=ADMIN) as resp:
        assert "（已更新）" in (await resp.json())["source"]


async def test_sandbox_escapes_and_unknown_variables_are_refused(running: Running) -> None:
    url = running.base + "/api/admin/templates/messages/zh-CN/thanks_reply"
    for evil in ("{{ ''.__class__.__mro__ }}", "{{ shop_name.__class__.__base__.__subclasses__() }}",
                 "{{ secret_key }}", "{{ cycler.__init__.__globals__ }}"):
        async with running.http.put(url, json={"source": evil}, headers=ADMIN) as resp:
            assert resp.status == 422, evil
    buyer = WebBuyer(running.http, running.base)
    await buyer.say("你好")
    assert "不客气" in texts(await buyer.say("谢谢"))


async def test_a_new_faq_entry_can_be_added_and_removed(running: Running) -> None:
    url = running.base + "/api/admin/templates/faq/zh-CN/pet_friendly"
    source = ("id: pet_friendly\ntitle: 宠物用品\nquestions: [有没有宠物用品, 卖猫砂吗, 狗狗用的东西有吗]\n"
              "answer: 亲，店里暂时没有宠物用品哦～\n")
    async with running.http.put(url, json={"source": source}, headers=ADMIN) as resp:
        assert resp.status == 200
    buyer = WebBuyer(running.http, running.base)
    assert "暂时没有宠物用品" in texts(await buyer.say("卖猫砂吗"))
    async with running.http.delete(url, headers=ADMIN) as resp:
        assert resp.status == 200
    assert "暂时没有宠物用品" not in texts(await buyer.say("卖猫砂吗"))
    async with running.http.put(running.base + "/api/admin/templates/../../etc/passwd", json={"source": "x"},
                                headers=ADMIN) as resp:
        assert resp.status in (400, 404)
