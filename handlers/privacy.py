"""Mask buyers' phone numbers and street addresses before they reach a desk."""

from __future__ import annotations

import re

# Mainland mobile numbers, not part of a longer digit run (order numbers are 16-20 digits).
_MOBILE = re.compile(r"(?<!\d)(\+?86[- ]?)?(1[3-9]\d)[- ]?(\d{4})[- ]?(\d{4})(?!\d)")
# Landlines like 0571-88886666.
_LANDLINE = re.compile(r"(?<!\d)(0\d{2,3})-(\d{3,4})(\d{4})(?!\d)")
# The precise part of a street address: building/house numbers after a road, lane, estate.
_STREET_NO = re.compile(r"([\u4e00-\u9fa5A-Za-z]{1,12}(?:路|街|道|巷|弄|里|村|小区|花园|公寓|大厦))\s*[\dA-Za-z\-一二三四五六七八九十]+\s*(?:号|弄|栋|幢|座)")
_UNIT = re.compile(r"[\dA-Za-z\-一二三四五六七八九十]+\s*(?:号楼|栋|幢|单元|层|室|房)(?![\u4e00-\u9fa5]{0,1}(?:间|子))")
_ADDRESS_HINT = re.compile(r"(?:省|市|区|县|镇|路|街|巷|弄|小区|花园|公寓|大厦|号楼|地址)")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*(@[A-Za-z0-9.-]+\.[A-Za-z]{2,})")


def mask(text: str) -> str:
    if not text:
        return text
    out = _MOBILE.sub(lambda m: f"{m.group(1) or ''}{m.group(2)}****{m.group(4)}", text)
    out = _LANDLINE.sub(lambda m: f"{m.group(1)}-****{m.group(3)}", out)
    out = _STREET_NO.sub(lambda m: f"{m.group(1)}**号", out)
    if _ADDRESS_HINT.search(out):  # "3层置物架" is a product, "5栋2单元" in an address is not
        out = _UNIT.sub("**", out)
    out = _EMAIL.sub(lambda m: f"{m.group(1)}***{m.group(2)}", out)
    return out
