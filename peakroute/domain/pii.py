"""Personal data of buyers (receiver name, phone, street address): masking for logs and printouts.

PeakRoute never *needs* personal data: the canonical order keeps only province, city and district.
Raw channel payloads do carry it (masked or encrypted by most channels, but not always), and raw
payloads stay on the raw and dead-letter topics unchanged, by design.  What must never show it is
everything a person or a log shipper reads: logs, metrics, command output.  This module is the one
place that knows what personal data looks like:

- :func:`mask_name` ``"张三丰"`` → ``"张**"`` (first character, then a fixed ``**``: no length leak);
- :func:`mask_phone` ``"13812345678"`` → ``"138****5678"`` (first 3 and last 4 digits when there
  are at least 11; else only the last 4, or nothing);
- :func:`mask_address` ``"浙江省杭州市西湖区文三路100号"`` → ``"浙江省杭州市***"`` (province and
  city only);
- :func:`mask_payload` masks the known personal fields of a parsed payload (any depth);
- :func:`scrub_text` masks what it can recognise in free text (a log line, an exception message,
  a ``repr`` of a payload): values of known personal fields in ``key: value`` / ``key=value`` form,
  and mainland-China phone numbers anywhere.

Free text cannot be scrubbed of a bare name nobody labelled, so code must still not log payloads;
:func:`scrub_text` is the safety net for the case where it happens anyway (an exception message).
"""

from __future__ import annotations

import re
from typing import Any

from .provinces import PROVINCES

MASK = "***"

#: Payload fields (any channel) holding a person's name; matched case-insensitively.
NAME_FIELDS = frozenset({
    "receiver_name", "receivername", "fullname", "full_name", "user_name", "username", "consignee",
    "consignee_name", "contact_name", "buyer_name", "buyer_nick", "buyernick", "nick", "nickname",
    "encrypt_post_receiver", "post_receiver", "receiver",
})
#: Payload fields holding a phone number.
PHONE_FIELDS = frozenset({
    "receiver_mobile", "receivermobile", "receiver_phone", "receiverphone", "mobile", "phone", "telephone",
    "tel", "tel_number", "telnumber", "contact_phone", "encrypt_post_tel", "post_tel",
})
#: Payload fields holding a street address (or a part finer than the city).
ADDRESS_FIELDS = frozenset({
    "receiver_address", "receiveraddress", "fulladdress", "full_address", "address", "detail_info",
    "detailinfo", "detail_address", "encrypt_detail", "street", "receiver_zip", "postal_code", "zip",
    "zip_code", "post_code",
})
#: Every field name that holds personal data (lower case).  Never a metric label either.
PII_FIELDS = NAME_FIELDS | PHONE_FIELDS | ADDRESS_FIELDS


def is_pii_field(name: str) -> bool:
    return name.lower() in PII_FIELDS


def mask_name(name: object) -> str:
    """``"张三丰"`` → ``"张**"``, ``"John Smith"`` → ``"J**"``; one character or less → ``"*"``."""
    text = "" if name is None else str(name).strip()
    if not text:
        return ""
    if len(text) <= 1:
        return "*"
    return text[0] + "**"


def mask_phone(phone: object) -> str:
    """Keep the first 3 and last 4 digits of a number with at least 11 (a Chinese mobile:
    ``"138****5678"``; a country code ``+86``/``86`` is dropped); with 7-10 digits only the last 4
    (``"****6666"``); fewer: ``"****"``.  Stars already in the input count as digits, so an already
    masked number (``"138****0000"``) comes back the same."""
    text = "" if phone is None else str(phone)
    digits = "".join(c for c in text if c.isascii() and (c.isdigit() or c == "*"))
    if not digits:
        return "" if not text.strip() else "****"
    if len(digits) >= 13 and digits.startswith("86"):
        digits = digits[2:]
    if len(digits) >= 11:
        return digits[:3] + "****" + digits[-4:]
    if len(digits) >= 7:
        return "****" + digits[-4:]
    return "****"


_PROVINCE_PREFIXES = sorted({alias for p in PROVINCES for alias in (p.name, p.short)}, key=len, reverse=True)
_CITY = re.compile(r"^(.{1,8}?(?:自治州|地区|市|盟|州(?!市)))")
_MUNICIPALITY_SHORTS = {"北京", "天津", "上海", "重庆"}


def mask_address(address: object) -> str:
    """Province and city only: ``"浙江省杭州市西湖区文三路100号"`` → ``"浙江省杭州市***"``,
    ``"北京朝阳区望京街道"`` → ``"北京***"``; anything without a recognisable province → ``"***"``."""
    text = "" if address is None else str(address).strip().replace(" ", "")
    if not text:
        return ""
    for prefix in _PROVINCE_PREFIXES:
        if text.startswith(prefix):
            kept = prefix
            rest = text[len(prefix):]
            if prefix in _MUNICIPALITY_SHORTS and rest.startswith("市"):
                kept, rest = kept + "市", rest[1:]
            elif prefix not in _MUNICIPALITY_SHORTS and not prefix.endswith("市"):
                for suffix in ("省", "自治区"):
                    if rest.startswith(suffix):
                        kept, rest = kept + suffix, rest[len(suffix):]
                        break
                city = _CITY.match(rest)
                if city and not any(ch.isdigit() for ch in city.group(1)):
                    kept += city.group(1)
            return kept + MASK
    return MASK


def mask_field(name: str, value: Any) -> Any:
    """``value`` masked as the personal field ``name`` requires; other fields unchanged."""
    key = name.lower()
    if value is None or key not in PII_FIELDS:
        return value
    if isinstance(value, (dict, list)):
        return MASK
    if key in NAME_FIELDS:
        return mask_name(value)
    if key in PHONE_FIELDS:
        return mask_phone(value)
    if key in {"receiver_zip", "postal_code", "zip", "zip_code", "post_code"}:
        return MASK
    return mask_address(value)


def mask_payload(doc: Any) -> Any:
    """A copy of a parsed payload with every known personal field masked (any depth)."""
    if isinstance(doc, dict):
        return {k: (mask_field(k, v) if isinstance(k, str) and is_pii_field(k) else mask_payload(v))
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [mask_payload(v) for v in doc]
    return doc


# --------------------------------------------------------------------------- free text

#: A mainland mobile number (optionally +86 / 86, spaces or dashes as 3-4-4), not part of a longer
#: number (letters or CJK text around it are fine: "电话13812345678", "tel13812345678" are found).  Landlines are matched only in their area-code form (0xx-xxxxxxxx).
_PHONE = re.compile(
    r"(?<![0-9])(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?![0-9])"
    r"|(?<![0-9])0\d{2,3}-\d{7,8}(?![0-9])"
)
_FIELD_NAMES = "|".join(sorted((re.escape(f) for f in PII_FIELDS), key=len, reverse=True))
#: ``"field": "value"``, ``'field': 'value'``, ``field=value``, ``\"field\": \"value\"`` (escaped
#: JSON inside JSON), and ``field: value`` — the value up to its closing quote or a separator.
_KEYED = re.compile(
    r"""(?P<pre>(?P<kq>\\?["']?)\b(?P<key>""" + _FIELD_NAMES + r""")(?P=kq)\s*[:=]\s*)"""
    r"""(?:(?P<vq>\\?["'])(?P<qval>.*?)(?P=vq)|(?P<val>[^\s,;&{}\[\]"'|)]+))""",
    re.IGNORECASE,
)


def _keyed(m: re.Match[str]) -> str:
    key = m.group("key")
    if m.group("vq") is not None:
        return f"{m.group('pre')}{m.group('vq')}{mask_field(key, m.group('qval'))}{m.group('vq')}"
    return f"{m.group('pre')}{mask_field(key, m.group('val'))}"


def scrub_text(text: str) -> str:
    """``text`` with values of known personal fields and phone numbers masked (idempotent)."""
    if not text:
        return text
    text = _KEYED.sub(_keyed, text)
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)
