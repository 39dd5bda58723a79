"""Personal data (receiver name, phone, address) is masked everywhere a person or a log shipper
reads: the masking helpers, the log filter/formatters, and the metrics (never a label)."""

from __future__ import annotations

import asyncio
import io
import logging
import logging.config
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import peakroute.data
from peakroute.domain import pii
from peakroute.domain.pii import mask_address, mask_name, mask_payload, mask_phone, scrub_text
from peakroute.domain.provinces import PROVINCES
from peakroute.logs import JsonFormatter, PiiFilter, logging_config, make_handler

# Clear (unmasked) personal data as a channel that does not mask would send it.
NAME, PHONE, STREET = "欧阳娜娜", "13912345678", "文三路477号华星科技大厦3楼"
ADDRESS = "浙江省杭州市西湖区" + STREET

# --------------------------------------------------------------------------- the helpers


@pytest.mark.parametrize("raw,masked", [
    ("张三丰", "张**"), ("张三", "张**"), ("欧阳娜娜", "欧**"), ("张", "*"), ("", ""), (None, ""), ("  李四 ", "李**"),
    ("John Smith", "J**"), ("张*", "张**"), ("#ENC#d4e5#", "#**"),
])
def test_mask_name(raw, masked) -> None:
    assert mask_name(raw) == masked


@pytest.mark.parametrize("raw,masked", [
    ("13812345678", "138****5678"), ("+86 138 1234 5678", "138****5678"), ("86-138-1234-5678", "138****5678"),
    ("8613812345678", "138****5678"), (13812345678, "138****5678"), ("138****0000", "138****0000"),
    ("0571-88886666", "057****6666"), ("88886666", "****6666"), ("12345", "****"), ("", ""), (None, ""),
    ("#ENC#f6a7#", "****"), ("no digits", "****"),
])
def test_mask_phone(raw, masked) -> None:
    assert mask_phone(raw) == masked


@pytest.mark.parametrize("raw,masked", [
    ("浙江省杭州市西湖区文三路100号", "浙江省杭州市***"), ("北京朝阳区望京街道***", "北京***"),
    ("北京市朝阳区望京街道1号", "北京市***"), ("上海市浦东新区世纪大道1号", "上海市***"),
    ("广西壮族自治区南宁市青秀区民族大道1号", "广西壮族自治区南宁市***"), ("内蒙古呼和浩特市新城区", "内蒙古呼和浩特市***"),
    ("浙江温州鹿城区", "浙江温州***"), ("广东省 深圳市 南山区 粤海街道", "广东省深圳市***"),
    ("新疆维吾尔自治区伊犁哈萨克自治州伊宁市", "新疆维吾尔自治区伊犁哈萨克自治州***"),
    ("四川成都武侯区", "四川***"), ("文三路100号", "***"), ("", ""), (None, ""),
    ("广东省123号楼", "广东省***"),
])
def test_mask_address_keeps_province_and_city_only(raw, masked) -> None:
    assert mask_address(raw) == masked


_mobiles = st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)
_hanzi = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5)


@given(_mobiles)
def test_any_mobile_loses_its_middle_four_digits(phone: str) -> None:
    out = mask_phone(phone)
    assert out == phone[:3] + "****" + phone[-4:] and phone not in out


@given(st.text(_hanzi, min_size=2, max_size=6))
def test_any_name_keeps_only_its_first_character(name: str) -> None:
    assert mask_name(name) == name[0] + "**"


@given(st.sampled_from(PROVINCES), st.text(_hanzi, min_size=1, max_size=4),
       st.text(_hanzi, min_size=2, max_size=4), st.text(_hanzi, min_size=2, max_size=8), st.integers(1, 9999))
def test_any_address_keeps_nothing_below_the_city(p, city, district, road, number) -> None:
    street = f"{district}区{road}路{number}号"
    out = mask_address(f"{p.name}{city}市{street}")
    assert out.startswith(p.name) and out.endswith("***")
    assert str(number) not in out and f"{road}路" not in out and f"{district}区" not in out


@given(st.text(max_size=60), _mobiles, st.text(max_size=60))
def test_scrub_text_finds_a_mobile_anywhere(before: str, phone: str, after: str) -> None:
    # A digit glued to the number makes it part of a longer number, which is not a phone.
    before = before.rstrip("0123456789+")
    after = after.lstrip("0123456789")
    out = scrub_text(before + phone + after)
    assert phone not in out
    assert scrub_text(out) == out  # idempotent


@pytest.mark.parametrize("template", [
    '{{"receiver_name": "{n}", "receiver_mobile": "{p}", "receiver_address": "{a}"}}',
    "{{'fullname': '{n}', 'mobile': '{p}', 'fullAddress': '{a}'}}",
    "user_name={n} tel_number={p} detail_info={a}",
    '{{\\"user_name\\": \\"{n}\\", \\"tel_number\\": \\"{p}\\", \\"detail_info\\": \\"{a}\\"}}',
    "RECEIVER_NAME: {n}; Mobile: {p}; Address: {a}",
    '{{"receiver_mobile": {p}}} {{"consignee": "{n}"}} {{"receiver_address": "{a}"}}',
])
def test_scrub_text_masks_keyed_fields_in_any_notation(template: str) -> None:
    out = scrub_text(template.format(n=NAME, p=PHONE, a=ADDRESS))
    assert NAME not in out and PHONE not in out and STREET not in out and "西湖区" not in out
    assert "欧**" in out and "139****5678" in out and "浙江省杭州市***" in out
    assert scrub_text(out) == out


@pytest.mark.parametrize("text", [
    "douyin order 6912345678901234567 at 1794326403 (1794326403000 ms), partition 3 offset 12345678901",
    "tmall:4123456789012345678 routed to WH-EAST, SKU-LIPSTICK-07 x2, paid 39800 fen",
    "receiver_state=浙江省 receiver_city=杭州市 receiver_district=西湖区 province=广东省",
    "2026-11-11T00:00:01Z webhook refused: channel=jd reason=timestamp outside the accepted window",
])
def test_scrub_text_leaves_ids_timestamps_and_regions_alone(text: str) -> None:
    assert scrub_text(text) == text


def _clear_pii_payloads() -> dict[str, dict]:
    """The four channel samples with clear (unmasked) personal data in every personal field."""
    base = Path(peakroute.data.__file__).parent / "samples"
    docs = {ch: orjson.loads((base / f"{ch}.json").read_bytes()) for ch in ("tmall", "jd", "douyin", "wxmini")}
    t = docs["tmall"]["trade_fullinfo_get_response"]["trade"]
    t.update(receiver_name=NAME, receiver_mobile=PHONE, receiver_address=STREET, buyer_nick=NAME)
    docs["jd"]["consigneeInfo"].update(fullname=NAME, mobile=PHONE, fullAddress=ADDRESS, telephone=PHONE)
    d = docs["douyin"]["data"]["shop_order_detail"]
    d.update(encrypt_post_receiver=NAME, encrypt_post_tel=PHONE)
    d["post_addr"]["encrypt_detail"] = STREET
    a = docs["wxmini"]["order"]["order_detail"]["delivery_info"]["address_info"]
    a.update(user_name=NAME, tel_number=PHONE, detail_info=STREET)
    return docs


@pytest.mark.parametrize("channel", ["tmall", "jd", "douyin", "wxmini"])
def test_mask_payload_masks_every_personal_field_of_every_channel(channel: str) -> None:
    doc = _clear_pii_payloads()[channel]
    raw = orjson.dumps(doc).decode()
    assert NAME in raw and PHONE in raw and STREET in raw
    masked = orjson.dumps(mask_payload(doc)).decode()
    assert NAME not in masked and PHONE not in masked and STREET not in masked
    # ...and nothing routing needs is touched: province / city / district stay
    for region in ("浙江省", "杭州市", "广东省", "深圳市", "四川省", "成都市"):
        assert region not in raw or region in masked
    # the free-text scrubber alone does as well on the serialized payload
    scrubbed = scrub_text(raw)
    assert NAME not in scrubbed and PHONE not in scrubbed and STREET not in scrubbed


def test_pii_field_names_are_lower_case_and_disjoint_by_kind() -> None:
    for group in (pii.NAME_FIELDS, pii.PHONE_FIELDS, pii.ADDRESS_FIELDS):
        assert all(f == f.lower() for f in group)
    assert not (pii.NAME_FIELDS & pii.PHONE_FIELDS) and not (pii.NAME_FIELDS & pii.ADDRESS_FIELDS)
    assert not (pii.PHONE_FIELDS & pii.ADDRESS_FIELDS)


# --------------------------------------------------------------------------- logs


def _capture(fmt: str) -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = make_handler(fmt, stream)
    log = logging.getLogger(f"peakroute.test-pii-{fmt}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log, stream, handler


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_and_tracebacks_never_show_personal_data(fmt: str) -> None:
    log, stream, _ = _capture(fmt)
    doc = _clear_pii_payloads()["jd"]
    log.info("payload %s", doc)
    log.warning("buyer called from %s: %r", PHONE, {"receiver_name": NAME, "receiver_address": ADDRESS})
    try:
        raise ValueError(f"cannot parse {doc!r}")
    except ValueError:
        log.exception("normalize failed")
    out = stream.getvalue()
    assert "normalize failed" in out and "ValueError" in out
    assert NAME not in out and PHONE not in out and STREET not in out, out
    if fmt == "json":
        assert all(orjson.loads(line) for line in out.splitlines() if line.startswith("{"))


def test_log_lines_never_show_credentials() -> None:
    log, stream, _ = _capture("text")
    log.error("redis at redis://default:hunter2@10.0.0.5:6379/0 unreachable")
    log.error("sent Authorization: Bearer sup3r-s3cret-t0ken to %s", "http://ops:pw0rd@api:8080/breakers")
    out = stream.getvalue()
    assert "hunter2" not in out and "sup3r-s3cret-t0ken" not in out and "pw0rd" not in out
    assert "redis://default:***@10.0.0.5:6379/0" in out


def test_dict_config_of_workers_masks_too(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for fmt in ("text", "json"):
            logging.config.dictConfig(logging_config("INFO", fmt))
            logging.getLogger("peakroute.agents").warning("order %s", {"receiver_mobile": PHONE, "fullname": NAME})
            logging.getLogger("faust.whatever").error("library says %s", PHONE)
        err = capsys.readouterr().err
        assert "139****5678" in err and PHONE not in err and NAME not in err
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_filter_keeps_bad_format_strings_for_the_handler_to_report() -> None:
    record = logging.LogRecord("peakroute.x", logging.INFO, __file__, 1, "%d", ("x",), None)
    assert PiiFilter().filter(record) is True
    assert JsonFormatter  # imported for the formatter path above


def test_internal_error_dead_letter_logs_no_personal_data() -> None:
    """A realistic pipeline step: the normalize agent's catch-all turns a handler failure into an
    ``internal_error`` dead letter and logs it with its traceback.  The payload (with clear personal
    data) goes to the DLQ topic unchanged, by design; the log must not show it."""
    from peakroute.agents.common import dead_letter_exception

    log, stream, handler = _capture("text")
    agents_log = logging.getLogger("peakroute.agents")
    saved = agents_log.handlers[:], agents_log.propagate, agents_log.level
    agents_log.handlers[:] = [handler]
    agents_log.propagate = False
    agents_log.setLevel(logging.INFO)
    raw = orjson.dumps(_clear_pii_payloads()["tmall"])
    sent: list[dict] = []

    class Dlq:
        async def send(self, key: bytes, value: bytes) -> None:
            sent.append(orjson.loads(value))

    msg = SimpleNamespace(topic="peakroute.raw.tmall", partition=0, offset=7, timestamp=1794326400.0,
                          key=b"4123456789012345678", value=raw)
    event = SimpleNamespace(message=msg)

    async def step() -> None:
        try:
            doc = orjson.loads(raw)
            raise KeyError(f"unexpected shape: {doc['trade_fullinfo_get_response']['trade']}")
        except KeyError as exc:
            await dead_letter_exception(Dlq(), event, exc, channel="tmall", stage="normalize")  # type: ignore[arg-type]

    try:
        asyncio.run(step())
    finally:
        agents_log.handlers[:], agents_log.propagate = saved[0], saved[1]
        agents_log.setLevel(saved[2])
    out = stream.getvalue()
    assert "normalize failed on peakroute.raw.tmall[0]@7" in out and "KeyError" in out
    assert NAME not in out and PHONE not in out and STREET not in out, out
    # by design the dead letter keeps the exact bytes (peakroute.dlq is not a log)
    assert len(sent) == 1 and sent[0]["reason"] == "internal_error" and PHONE in sent[0]["payload"]


# --------------------------------------------------------------------------- metrics


def _all_collectors() -> list:
    from prometheus_client import REGISTRY

    import peakroute.metrics.reconciler  # noqa: F401  (registers its metrics)
    import peakroute.metrics.registry  # noqa: F401

    return list(REGISTRY._collector_to_names)  # type: ignore[attr-defined]


FORBIDDEN_LABELS = pii.PII_FIELDS | {"order_id", "channel_order_id", "name", "buyer", "receiver", "address",
                                     "ship_to", "city", "district", "notes", "shipment_id", "line_id"}


def test_no_metric_label_is_personal_data_or_an_order_id() -> None:
    labelled = 0
    for collector in _all_collectors():
        names = getattr(collector, "_labelnames", ())
        labelled += bool(names)
        for label in names:
            assert label.lower() not in FORBIDDEN_LABELS, f"{collector._name}: label {label!r}"
            assert not pii.is_pii_field(label)
    assert labelled >= 10, "the registry's labelled metrics were found"


def test_metrics_output_never_holds_personal_data_after_a_pipeline_step() -> None:
    from prometheus_client import generate_latest

    from peakroute.domain.catalog import load_catalog
    from peakroute.domain.channels import normalize
    from peakroute.metrics import registry as m

    catalog = load_catalog(None)
    for channel, doc in _clear_pii_payloads().items():
        order = normalize(channel, orjson.dumps(doc), catalog)
        m.RAW_RECEIVED.labels(channel).inc()
        m.ORDERS_EMITTED.labels(order.channel, "new", order.status).inc()
        assert NAME not in orjson.dumps(order.to_dict()).decode()
        assert PHONE not in orjson.dumps(order.to_dict()).decode()
    text = generate_latest().decode()
    assert NAME not in text and PHONE not in text and STREET not in text
