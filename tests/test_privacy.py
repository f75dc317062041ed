from handlers.privacy import mask


def test_masks_mobile_numbers_but_not_order_numbers() -> None:
    assert mask("电话 13812345678") == "电话 138****5678"
    assert mask("+86 138-1234-5678") == "+86 138****5678"
    assert mask("订单3849201756382910475") == "订单3849201756382910475"
    assert mask("0571-88886666") == "0571-****6666"


def test_masks_street_numbers_and_rooms() -> None:
    out = mask("浙江省杭州市西湖区文三路398号东信大厦5栋2单元301室")
    assert "398" not in out and "301" not in out and "浙江省杭州市西湖区文三路" in out


def test_masks_emails() -> None:
    assert mask("my mail is alice.wang@example.com") == "my mail is a***@example.com"


def test_leaves_ordinary_text_alone() -> None:
    text = "杯子碎了两个，M码换L码，买了3件"
    assert mask(text) == text


def test_dates_and_sizes_are_not_addresses() -> None:
    text = "11月3号发的货，买了2楼梯凳？不，是3层置物架"
    assert mask(text) == text
