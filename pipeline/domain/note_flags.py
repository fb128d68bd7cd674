"""Keyword flags read from buyer notes and line titles.

Buyers write free text (买家留言); warehouse and finance act on three things in it: an invoice
request, a gift (wrap, no price slip) and urgency. Gift cards and customised items are read from
line titles, because most platforms have no field for them.
"""
from __future__ import annotations

import re

_INVOICE = re.compile(r"发票|开票|invoice|fapiao", re.IGNORECASE)
_GIFT = re.compile(r"赠品|礼物|送人|\bgift\b(?!\s*card)", re.IGNORECASE)
# "急" alone counts (急用, 急需), but negated forms (不急, 不着急) must not
_NOT_URGENT = re.compile(r"不(?:着)?急|不用急|别急")
_URGENT = re.compile(r"加急|急|\burgent\b|\basap\b|\brush\b", re.IGNORECASE)

_GIFT_CARD_TITLE = re.compile(r"礼品卡|购物卡|储值卡|gift\s*card", re.IGNORECASE)
_CUSTOM_TITLE = re.compile(r"定制|刻字|custom|personali[sz]ed|engrav", re.IGNORECASE)


def note_flags(note: str | None) -> tuple[bool, bool, bool]:
    """(invoice, gift, urgent) from a buyer note."""
    if not note:
        return False, False, False
    urgent_text = _NOT_URGENT.sub("", note) if "急" in note else note
    return (_INVOICE.search(note) is not None,
            _GIFT.search(note) is not None,
            _URGENT.search(urgent_text) is not None)


def is_gift_card_title(title: str) -> bool:
    return bool(title) and _GIFT_CARD_TITLE.search(title) is not None


def is_custom_title(title: str) -> bool:
    return bool(title) and _CUSTOM_TITLE.search(title) is not None
