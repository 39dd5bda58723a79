"""Peak-sale traffic simulator: realistic raw order payloads for the four channels, into Kafka.

Two halves, kept apart so that the interesting half is testable without a broker:

* :class:`PeakSaleSimulator` is a pure, seeded generator of :class:`SimEvent` (what each channel
  sends and when): new orders arriving as a Poisson process at ``rate`` per second, and their
  follow-ups (payment of unpaid orders, expiry, buyer cancellation, address change, verbatim
  re-sends).  Same arguments, same events, byte for byte.
* :func:`run_simulation` plays those events open-loop into the raw topics: each event is produced
  at its scheduled time whether or not the router keeps up, which is how a real sale behaves
  (channels do not slow down because our consumer lags).

Realism knobs and why they exist: the channel mix and Zipf SKU popularity give the hot-key
contention of a real sale; 满减 discounts spread over lines exercise fen-exact allocation; unpaid
orders, expiries, cancellations and re-sends exercise the order-state logic and deduplication;
the surge (a live-stream on Douyin pushing one lipstick) is the Double 11 moment that breaks
routers.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..config import CHANNELS
from ..domain.catalog import Catalog, CatalogItem
from ..domain.provinces import BY_CODE, PROVINCES, Province
from ..streams.topics import raw_topic
from .payloads import (
    CANCELLED,
    PAID,
    PENDING,
    OrderIdAllocator,
    SimAddress,
    SimBuyer,
    SimLine,
    SimOrder,
    build_payload,
)

# --------------------------------------------------------------------------------------------
# Defaults (documented in the report and the README's simulator section)
# --------------------------------------------------------------------------------------------

#: 2026-11-11 00:00:00 Beijing time: the default clock of a run, so runs are reproducible.
DOUBLE11_EPOCH = 1_794_326_400
#: Share of new orders per channel (Double 11 GMV order of magnitude).
CHANNEL_MIX: dict[str, float] = {"tmall": 0.45, "jd": 0.25, "douyin": 0.20, "wxmini": 0.10}
#: Zipf exponent of SKU popularity: a few head SKUs take most orders.
ZIPF_S = 1.1
#: Double 11 best-sellers that head the popularity ranking when the catalog has them; the other
#: SKUs follow in catalog order.  A fixed ranking (not seeded) keeps "the hot SKU" stable across runs.
HOT_SKUS: tuple[str, ...] = (
    "SKU-EARBUD-W", "SKU-PHONE-128", "SKU-LIPSTICK-07", "SKU-MILK-24", "SKU-MASK-10P",
    "SKU-DOWN-JACKET", "SKU-DIAPER-L", "SKU-AIRFRYER-5L", "SKU-TISSUE-24", "SKU-SERUM-30ML",
)
#: Lines per order: 1..5, mostly 1-2.
LINE_COUNT_WEIGHTS = (0.58, 0.26, 0.09, 0.045, 0.025)
#: Quantity per line: mostly 1, sometimes 2-3.
QTY_WEIGHTS = (0.82, 0.13, 0.05)
_LINE_COUNT_CUM = tuple(itertools.accumulate(LINE_COUNT_WEIGHTS))[:-1]
_QTY_CUM = tuple(itertools.accumulate(QTY_WEIGHTS))[:-1]
#: Distinct masked buyers per run: repeat buyers are normal in a sale, and a pool keeps the hot
#: path from formatting masks per order.
BUYER_POOL = 4096
#: Chance of a free gift line: Douyin live-streams give gifts with beauty items most often.
GIFT_PROB_BEAUTY = {"douyin": 0.6, "tmall": 0.25, "jd": 0.1, "wxmini": 0.15}
GIFT_PROB_OTHER = {"douyin": 0.12, "tmall": 0.04, "jd": 0.02, "wxmini": 0.03}
#: 满减 per channel: (chance the order qualifies for the promotion, threshold fen, off fen per
#: threshold reached).  Tmall/JD run 每满300减50-style cross-store rules; Douyin/WeChat 满199减20.
DISCOUNT_RULES: dict[str, tuple[float, int, int]] = {
    "tmall": (0.7, 30000, 5000), "jd": (0.6, 29900, 5000),
    "douyin": (0.5, 19900, 2000), "wxmini": (0.4, 9900, 1000),
}
#: Orders whose discounted goods are under this pay ``FREIGHT_FEN`` (Douyin is always free shipping).
FREE_SHIPPING_FROM_FEN = 3900
FREIGHT_FEN = 600
#: Domestic channels rarely ship outside the mainland: population weight is scaled by this.
OFFSHORE_WEIGHT = 0.02
OFFSHORE_CODES = frozenset({"71", "81", "82"})
#: Note probabilities.  Merchant "加急" is the ops team flagging an order for priority.
BUYER_NOTE_PROB = 0.12
MERCHANT_NOTE_PROB = 0.04
BUYER_NOTES: tuple[str, ...] = (
    "双11 请尽快发货", "送人的，不要放发票", "请用顺丰🙏", "放快递柜 📦，谢谢", "工作日白天送货",
    "麻烦包装好一点，送女朋友的🎁", "周末在家", "包装里不要有价格 💝", "请尽快发货，急用！",
    "Please ship ASAP 🚀", "不要打电话，放门口就行", "加急！明天要用", "颜色发错会差评😤",
    "小区进不去，请放菜鸟驿站", "生日礼物🎂 11月13日前要到", "加急，谢谢老板",
)
MERCHANT_NOTES: tuple[str, ...] = (
    "加急", "VIP客户", "大促赠品已备注", "已核对地址", "老客户，优先发货", "加急 - 客服已承诺次日达",
)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
MOBILE_PREFIXES = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151",
                   "152", "155", "156", "158", "159", "166", "177", "180", "181", "186", "187",
                   "188", "189", "191", "198", "199")
ROADS = ("中山路", "人民路", "解放路", "建设路", "文三路", "天府大道", "长江路", "和平路", "新华路",
         "幸福路", "青年路", "科技园路", "滨江大道", "东风路", "学府路", "南京路", "胜利街", "光明街")

# (city, city code, postcode, ((district, district code, street), ...)) per province code.
_City = tuple[str, str, str, tuple[tuple[str, str, str], ...]]
GEOGRAPHY: dict[str, tuple[_City, ...]] = {
    "11": (("北京市", "1101", "100000", (
        ("朝阳区", "110105", "望京街道"), ("海淀区", "110108", "中关村街道"),
        ("东城区", "110101", "东华门街道"), ("西城区", "110102", "金融街街道"),
        ("丰台区", "110106", "卢沟桥街道"), ("通州区", "110112", "新华街道"))),),
    "12": (("天津市", "1201", "300000", (
        ("和平区", "120101", "小白楼街道"), ("河西区", "120103", "友谊路街道"),
        ("南开区", "120104", "学府街道"), ("滨海新区", "120116", "塘沽街道"))),),
    "13": (("石家庄市", "1301", "050000", (
        ("长安区", "130102", "建北街道"), ("桥西区", "130104", "友谊街道"), ("裕华区", "130108", "裕兴街道"))),),
    "14": (("太原市", "1401", "030000", (
        ("小店区", "140105", "坞城街道"), ("迎泽区", "140106", "柳巷街道"), ("杏花岭区", "140107", "巨轮街道"))),),
    "15": (("呼和浩特市", "1501", "010000", (
        ("新城区", "150102", "海拉尔东路街道"), ("回民区", "150103", "中山西路街道"),
        ("赛罕区", "150105", "大学东路街道"))),),
    "21": (("沈阳市", "2101", "110000", (
        ("和平区", "210102", "太原街街道"), ("沈河区", "210103", "五里河街道"), ("浑南区", "210112", "五三街道"))),
        ("大连市", "2102", "116000", (
        ("中山区", "210202", "人民路街道"), ("沙河口区", "210204", "星海湾街道")))),
    "22": (("长春市", "2201", "130000", (
        ("南关区", "220102", "永吉街道"), ("朝阳区", "220104", "桂林街道"), ("绿园区", "220106", "正阳街道"))),),
    "23": (("哈尔滨市", "2301", "150000", (
        ("道里区", "230102", "中央大街"), ("南岗区", "230103", "花园街道"), ("香坊区", "230110", "香坊大街街道"))),),
    "31": (("上海市", "3101", "200000", (
        ("浦东新区", "310115", "陆家嘴街道"), ("徐汇区", "310104", "徐家汇街道"),
        ("静安区", "310106", "南京西路街道"), ("闵行区", "310112", "莘庄镇"),
        ("杨浦区", "310110", "五角场街道"), ("长宁区", "310105", "天山路街道"))),),
    "32": (("南京市", "3201", "210000", (
        ("玄武区", "320102", "新街口街道"), ("鼓楼区", "320106", "湖南路街道"), ("江宁区", "320115", "东山街道"))),
        ("苏州市", "3205", "215000", (
        ("姑苏区", "320508", "平江街道"), ("吴中区", "320506", "长桥街道"), ("虎丘区", "320505", "狮山街道"))),
        ("无锡市", "3202", "214000", (
        ("梁溪区", "320213", "崇安寺街道"), ("滨湖区", "320211", "蠡园街道")))),
    "33": (("杭州市", "3301", "310000", (
        ("西湖区", "330106", "文新街道"), ("上城区", "330102", "湖滨街道"), ("拱墅区", "330105", "米市巷街道"),
        ("滨江区", "330108", "西兴街道"), ("余杭区", "330110", "五常街道"))),
        ("宁波市", "3302", "315000", (
        ("鄞州区", "330212", "首南街道"), ("海曙区", "330203", "南门街道"))),
        ("温州市", "3303", "325000", (
        ("鹿城区", "330302", "五马街道"),))),
    "34": (("合肥市", "3401", "230000", (
        ("庐阳区", "340103", "逍遥津街道"), ("蜀山区", "340104", "三里庵街道"), ("包河区", "340111", "滨湖世纪社区"))),),
    "35": (("福州市", "3501", "350000", (
        ("鼓楼区", "350102", "东街街道"), ("台江区", "350103", "瀛洲街道"))),
        ("厦门市", "3502", "361000", (
        ("思明区", "350203", "鹭江街道"), ("湖里区", "350206", "湖里街道")))),
    "36": (("南昌市", "3601", "330000", (
        ("东湖区", "360102", "公园街道"), ("西湖区", "360103", "朝阳洲街道"), ("红谷滩区", "360113", "红角洲街道"))),),
    "37": (("济南市", "3701", "250000", (
        ("历下区", "370102", "泉城路街道"), ("市中区", "370103", "大观园街道"), ("历城区", "370112", "洪家楼街道"))),
        ("青岛市", "3702", "266000", (
        ("市南区", "370202", "八大关街道"), ("崂山区", "370212", "中韩街道"), ("黄岛区", "370211", "长江路街道")))),
    "41": (("郑州市", "4101", "450000", (
        ("中原区", "410102", "建设路街道"), ("二七区", "410103", "德化街街道"), ("金水区", "410105", "经八路街道"))),),
    "42": (("武汉市", "4201", "430000", (
        ("江汉区", "420103", "民族街道"), ("武昌区", "420106", "中华路街道"), ("洪山区", "420111", "珞南街道"))),),
    "43": (("长沙市", "4301", "410000", (
        ("芙蓉区", "430102", "五里牌街道"), ("天心区", "430103", "坡子街街道"), ("岳麓区", "430104", "橘子洲街道"))),),
    "44": (("广州市", "4401", "510000", (
        ("越秀区", "440104", "北京街道"), ("海珠区", "440105", "赤岗街道"), ("天河区", "440106", "天河南街道"),
        ("番禺区", "440113", "市桥街道"))),
        ("深圳市", "4403", "518000", (
        ("南山区", "440305", "粤海街道"), ("福田区", "440304", "华强北街道"), ("罗湖区", "440303", "东门街道"),
        ("宝安区", "440306", "新安街道"), ("龙岗区", "440307", "坂田街道"))),
        ("佛山市", "4406", "528000", (
        ("禅城区", "440604", "祖庙街道"), ("南海区", "440605", "桂城街道")))),
    "45": (("南宁市", "4501", "530000", (
        ("兴宁区", "450102", "民生街道"), ("青秀区", "450103", "新竹街道"), ("西乡塘区", "450107", "衡阳街道"))),),
    "46": (("海口市", "4601", "570000", (
        ("龙华区", "460106", "中山街道"), ("美兰区", "460108", "海府街道"))),),
    "50": (("重庆市", "5001", "400000", (
        ("渝中区", "500103", "解放碑街道"), ("江北区", "500105", "观音桥街道"),
        ("南岸区", "500108", "南坪街道"), ("渝北区", "500112", "龙溪街道"))),),
    "51": (("成都市", "5101", "610000", (
        ("锦江区", "510104", "春熙路街道"), ("青羊区", "510105", "草市街街道"), ("武侯区", "510107", "玉林街道"),
        ("成华区", "510108", "猛追湾街道"))),),
    "52": (("贵阳市", "5201", "550000", (
        ("南明区", "520102", "花果园街道"), ("云岩区", "520103", "中华路街道"), ("观山湖区", "520115", "金阳街道"))),),
    "53": (("昆明市", "5301", "650000", (
        ("五华区", "530102", "华山街道"), ("盘龙区", "530103", "拓东街道"), ("官渡区", "530111", "关上街道"))),),
    "54": (("拉萨市", "5401", "850000", (
        ("城关区", "540102", "八廓街道"), ("堆龙德庆区", "540103", "东嘎街道"))),),
    "61": (("西安市", "6101", "710000", (
        ("碑林区", "610103", "南院门街道"), ("未央区", "610112", "张家堡街道"), ("雁塔区", "610113", "小寨路街道"))),),
    "62": (("兰州市", "6201", "730000", (
        ("城关区", "620102", "张掖路街道"), ("七里河区", "620103", "西园街道"))),),
    "63": (("西宁市", "6301", "810000", (
        ("城中区", "630103", "人民街街道"), ("城西区", "630104", "西关大街街道"))),),
    "64": (("银川市", "6401", "750000", (
        ("兴庆区", "640104", "鼓楼街道"), ("金凤区", "640106", "满城北街街道"))),),
    "65": (("乌鲁木齐市", "6501", "830000", (
        ("天山区", "650102", "解放南路街道"), ("沙依巴克区", "650103", "友好南路街道"))),),
    "71": (("台北市", "7101", "100", (
        ("信义区", "710101", "信义里"), ("大安区", "710102", "大学里"))),),
    "81": (("香港", "8101", "999077", (
        ("中西区", "810101", "中环"), ("湾仔区", "810102", "铜锣湾"), ("油尖旺区", "810103", "尖沙咀"))),),
    "82": (("澳门", "8201", "999078", (
        ("花地玛堂区", "820101", "黑沙环"), ("大堂区", "820102", "新口岸"))),),
}


# --------------------------------------------------------------------------------------------
# Surge
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurgeSpec:
    """A Double 11 moment: one channel's order rate and one SKU's share jump for a while.

    Default: a Douyin live-stream, ×5 Douyin orders for 60 s starting at 30% of the run, during
    which the most popular beauty SKU (the streamer's lipstick) sells ×20 its normal share across
    all channels.  ``start_s`` None means ``start_fraction`` of the run; ``sku`` None means that
    default SKU.  The window is clipped to the run.
    """

    channel: str = "douyin"
    factor: float = 5.0
    start_s: float | None = None
    duration_s: float = 60.0
    sku: str | None = None
    sku_factor: float = 20.0
    start_fraction: float = 0.3

    def window(self, run_s: float) -> tuple[float, float]:
        """The surge window ``[start, end)`` in seconds from the run start, clipped to the run."""
        start = self.start_fraction * run_s if self.start_s is None else self.start_s
        start = min(max(start, 0.0), run_s)
        return start, min(start + self.duration_s, run_s)


_SURGE_KEYS = ("channel", "factor", "start", "duration", "sku", "sku_factor")


def parse_surge(text: str | None) -> SurgeSpec:
    """Parse the ``--surge`` text form into a :class:`SurgeSpec`.

    Comma-separated ``key=value`` pairs, every key optional, defaults as in :class:`SurgeSpec`::

        channel=douyin,factor=5,start=10,duration=60,sku=SKU-LIPSTICK-07,sku_factor=20

    ``start`` is seconds from the run start, or a percentage of the run (``start=30%``);
    ``duration`` is seconds (> 0); ``factor``/``sku_factor`` are multipliers (>= 0; 1 means no
    change).  Empty text or ``default`` gives the defaults; ``off``/``none`` a surge that changes
    nothing.  Anything else raises ``ValueError`` naming the offending part.  Whether ``sku`` is
    in the catalog is checked by :class:`PeakSaleSimulator`, which has the catalog.
    """
    raw = (text or "").strip()
    if raw.lower() in ("", "default"):
        return SurgeSpec()
    if raw.lower() in ("off", "none"):
        return SurgeSpec(factor=1.0, sku_factor=1.0)
    values: dict[str, str] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"surge: expected key=value, got {part!r}")
        if key not in _SURGE_KEYS:
            raise ValueError(f"surge: unknown key {key!r} (known: {', '.join(_SURGE_KEYS)})")
        if key in values:
            raise ValueError(f"surge: {key!r} given twice")
        values[key] = value

    def number(key: str, text: str, *, positive: bool = False) -> float:
        try:
            x = float(text)
        except ValueError:
            raise ValueError(f"surge: {key}={values[key]!r} is not a number") from None
        if not math.isfinite(x) or x < 0 or (positive and x == 0):
            kind = "positive" if positive else "non-negative"
            raise ValueError(f"surge: {key}={values[key]!r} must be a {kind} number")
        return x

    kwargs: dict[str, Any] = {}
    if "channel" in values:
        if values["channel"] not in CHANNELS:
            raise ValueError(f"surge: unknown channel {values['channel']!r} (channels: {', '.join(CHANNELS)})")
        kwargs["channel"] = values["channel"]
    if "factor" in values:
        kwargs["factor"] = number("factor", values["factor"])
    if "sku_factor" in values:
        kwargs["sku_factor"] = number("sku_factor", values["sku_factor"])
    if "duration" in values:
        kwargs["duration_s"] = number("duration", values["duration"].removesuffix("s"), positive=True)
    if "start" in values:
        start = values["start"]
        if start.endswith("%"):
            pct = number("start", start[:-1])
            if pct > 100:
                raise ValueError(f"surge: start={start!r} must be between 0% and 100%")
            kwargs["start_fraction"] = pct / 100.0
        else:
            kwargs["start_s"] = number("start", start.removesuffix("s"))
    if "sku" in values:
        kwargs["sku"] = values["sku"]
    return SurgeSpec(**kwargs)


# --------------------------------------------------------------------------------------------
# Events and stats
# --------------------------------------------------------------------------------------------

EVENT_KINDS: tuple[str, ...] = ("new", "paid", "expired", "cancelled", "resend", "address_change")


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One payload a channel sends: produce ``payload`` to ``raw_topic(channel)`` keyed by ``key``
    at ``at`` seconds after the run start.  ``status`` is the canonical status the payload encodes
    (what normalization must yield); ``order`` is the simulated state behind it (not compared)."""

    at: float
    channel: str
    key: str
    payload: bytes
    kind: str
    status: str = PAID
    order: SimOrder | None = field(default=None, compare=False, repr=False)


@dataclass
class SimStats:
    """What a run sent.  ``failed`` counts delivery errors and messages still queued at the end."""

    events: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_KINDS, 0))
    by_channel: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANNELS, 0))
    payload_bytes: int = 0
    delivered: int = 0
    failed: int = 0
    queue_full_retries: int = 0
    #: Largest delay behind schedule seen (s): when it grows, the producer, not the plan, sets the pace.
    max_lag_s: float = 0.0
    elapsed_s: float = 0.0
    #: True when the run was stopped early (Ctrl-C); the counts cover what was sent.
    interrupted: bool = False

    @property
    def new_orders(self) -> int:
        return self.by_kind.get("new", 0)

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def count(self, event: SimEvent) -> None:
        self.events += 1
        self.by_kind[event.kind] = self.by_kind.get(event.kind, 0) + 1
        self.by_channel[event.channel] = self.by_channel.get(event.channel, 0) + 1
        self.payload_bytes += len(event.payload)

    def snapshot(self) -> SimStats:
        return replace(self, by_kind=dict(self.by_kind), by_channel=dict(self.by_channel))

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events, "new_orders": self.new_orders, "by_kind": dict(self.by_kind),
            "by_channel": dict(self.by_channel), "payload_bytes": self.payload_bytes,
            "delivered": self.delivered, "failed": self.failed,
            "queue_full_retries": self.queue_full_retries, "max_lag_s": round(self.max_lag_s, 3),
            "elapsed_s": round(self.elapsed_s, 3), "events_per_s": round(self.events_per_s, 1),
            "interrupted": self.interrupted,
        }


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------


def _cumulative(weights: list[float]) -> list[float]:
    return list(itertools.accumulate(weights))


@dataclass(frozen=True, slots=True)
class _Rates:
    """Arrival rate and draw tables in force during one phase (normal or surge)."""

    rate: float
    channels: tuple[str, ...]
    channel_cum: list[float]
    sku_cum: list[float]


class PeakSaleSimulator:
    """Deterministic stream of channel payloads for a peak sale.

    ``rate`` is *new* orders per second outside the surge (the surge channel's share is multiplied
    inside it); follow-ups (payments, expiries, cancellations, address changes, re-sends) come on
    top.  Follow-ups that would fall after ``duration_s`` are dropped, so the event list depends on
    the arguments only.  ``start_epoch`` is the wall clock of offset 0 in the payloads' times
    (default :data:`DOUBLE11_EPOCH`; pass ``time.time()`` for live-looking times).

    Ratios: ``unpaid_ratio`` of new orders arrive unpaid; of those ``pay_later_ratio`` pay within
    seconds to minutes (always before ``pay_timeout_s``) and the rest expire at
    ``pay_timeout_s`` (the channel closes them).  ``cancel_ratio`` of paid orders are cancelled by
    the buyer; ``address_change_ratio`` of paid orders get a new address; every payload is re-sent
    verbatim with probability ``resend_ratio``.
    """

    def __init__(
        self,
        rate: float,
        duration_s: float,
        seed: int,
        catalog: Catalog,
        surge: SurgeSpec | None = None,
        start_epoch: float | None = None,
        unpaid_ratio: float = 0.08,
        cancel_ratio: float = 0.02,
        resend_ratio: float = 0.03,
        *,
        pay_later_ratio: float = 0.8,
        address_change_ratio: float = 0.01,
        pay_timeout_s: int = 300,
        channel_mix: dict[str, float] | None = None,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of orders per second, got {rate!r}")
        if not (duration_s > 0 and math.isfinite(duration_s)):
            raise ValueError(f"duration_s must be positive, got {duration_s!r}")
        for name, value in (("unpaid_ratio", unpaid_ratio), ("cancel_ratio", cancel_ratio),
                            ("resend_ratio", resend_ratio), ("pay_later_ratio", pay_later_ratio),
                            ("address_change_ratio", address_change_ratio)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        if pay_timeout_s < 2:
            raise ValueError(f"pay_timeout_s must be at least 2 s, got {pay_timeout_s!r}")
        self.rate = float(rate)
        self.duration_s = float(duration_s)
        self.seed = seed
        self.catalog = catalog
        self.surge = surge
        self.start_epoch = float(DOUBLE11_EPOCH if start_epoch is None else start_epoch)
        self.unpaid_ratio = unpaid_ratio
        self.cancel_ratio = cancel_ratio
        self.resend_ratio = resend_ratio
        self.pay_later_ratio = pay_later_ratio
        self.address_change_ratio = address_change_ratio
        self.pay_timeout_s = int(pay_timeout_s)
        mix = dict(CHANNEL_MIX if channel_mix is None else channel_mix)
        if set(mix) - set(CHANNELS) or not any(w > 0 for w in mix.values()) or min(mix.values()) < 0:
            raise ValueError(f"channel_mix must weigh known channels {CHANNELS}: {mix!r}")
        self.channel_mix = mix

        self.products: tuple[CatalogItem, ...] = self._popularity_ranking(catalog)
        if not self.products:
            raise ValueError("the catalog has no sellable (non-gift) SKU to simulate")
        self.gifts: tuple[CatalogItem, ...] = tuple(i for i in catalog.items.values() if i.gift)
        self._max_lines = min(len(LINE_COUNT_WEIGHTS), len(self.products))
        self.popularity: list[float] = [1.0 / (r ** ZIPF_S) for r in range(1, len(self.products) + 1)]

        self.surge_window: tuple[float, float] = (0.0, 0.0)
        self.surge_sku: str | None = None
        if surge is not None:
            if surge.channel not in CHANNELS:
                raise ValueError(f"surge channel {surge.channel!r} is not one of {CHANNELS}")
            self.surge_window = surge.window(self.duration_s)
            self.surge_sku = surge.sku or self.default_surge_sku()
            item = catalog.get(self.surge_sku)
            if item is None:
                raise ValueError(f"surge SKU {self.surge_sku!r} is not in the catalog")
            if item.gift:
                raise ValueError(f"surge SKU {self.surge_sku!r} is a gift SKU (never sold)")
        self._normal = self._rates(surging=False)
        self._surging = self._rates(surging=True) if surge is not None else self._normal

        provinces = [p for p in PROVINCES if p.code in GEOGRAPHY]
        self._provinces: tuple[Province, ...] = tuple(provinces)
        self._province_cum = _cumulative(
            [p.population_m * (OFFSHORE_WEIGHT if p.code in OFFSHORE_CODES else 1.0) for p in provinces])
        # Every (district, road) of a province, built once: picking one is an index, not an object.
        self._addresses: dict[str, tuple[SimAddress, ...]] = {
            code: tuple(
                SimAddress(BY_CODE[code], city, city_code, district, district_code, street, road, zip_code)
                for city, city_code, zip_code, districts in cities
                for district, district_code, street in districts
                for road in ROADS
            )
            for code, cities in GEOGRAPHY.items()
        }
        self._buyers: tuple[SimBuyer, ...] = self._buyer_pool(random.Random(_mix_seed(seed, "buyers")))

    # -- set-up helpers ------------------------------------------------------------------------

    @staticmethod
    def _buyer_pool(rng: random.Random) -> tuple[SimBuyer, ...]:
        """Masked identities as the channels expose them: ``张*``, ``138****0000``, ``t**1``."""
        pool = []
        for _ in range(BUYER_POOL):
            secret = rng.getrandbits(32)
            mobile = f"{rng.choice(MOBILE_PREFIXES)}****{rng.randrange(10000):04d}"
            nick = f"{rng.choice('tbjxmlcwyz')}**{rng.randrange(10)}"
            pool.append(SimBuyer(f"{rng.choice(SURNAMES)}*", mobile, nick, secret))
        return tuple(pool)

    @staticmethod
    def _popularity_ranking(catalog: Catalog) -> tuple[CatalogItem, ...]:
        sellable = [i for i in catalog.items.values() if not i.gift]
        hot = [catalog.items[s] for s in HOT_SKUS if s in catalog.items and not catalog.items[s].gift]
        hot_set = {i.sku for i in hot}
        return tuple(hot + [i for i in sellable if i.sku not in hot_set])

    def default_surge_sku(self) -> str:
        """The most popular beauty SKU (a lipstick when there is one), else the most popular SKU."""
        for test in (lambda i: "LIPSTICK" in i.sku.upper() or "口红" in i.name,
                     lambda i: i.category == "beauty"):
            for item in self.products:
                if test(item):
                    return item.sku
        return self.products[0].sku

    def _rates(self, *, surging: bool) -> _Rates:
        channels = tuple(ch for ch in CHANNELS if self.channel_mix.get(ch, 0) > 0)
        weights = [self.channel_mix[ch] for ch in channels]
        if surging and self.surge is not None:
            weights = [w * self.surge.factor if ch == self.surge.channel else w
                       for ch, w in zip(channels, weights, strict=True)]
        sku_weights = list(self.popularity)
        if surging and self.surge_sku is not None and self.surge is not None:
            idx = next(i for i, item in enumerate(self.products) if item.sku == self.surge_sku)
            sku_weights[idx] *= self.surge.sku_factor
            if sum(sku_weights) <= 0:  # sku_factor=0 on a one-SKU catalog: nothing else to sell
                sku_weights = list(self.popularity)
        total = sum(weights) / sum(self.channel_mix[ch] for ch in channels)
        return _Rates(self.rate * total, channels, _cumulative(weights), _cumulative(sku_weights))

    def expected_new_orders(self) -> float:
        """Mean number of "new" events: ``rate x duration`` plus the surge channel's extra orders."""
        start, end = self.surge_window
        return self._normal.rate * (self.duration_s - (end - start)) + self._surging.rate * (end - start)

    # -- the event stream --------------------------------------------------------------------

    def events(self) -> Iterator[SimEvent]:
        """All events of the run in non-decreasing ``at``; a fresh, identical stream per call."""
        rng = random.Random(self.seed)
        ids = OrderIdAllocator(self.seed)
        pending: list[tuple[float, int, str, Any]] = []  # (at, seq, kind, SimOrder | SimEvent)
        seq = itertools.count()
        end = self.duration_s
        surge_start, surge_end = self.surge_window
        t = 0.0
        random_ = rng.random
        expovariate = rng.expovariate
        push = heapq.heappush
        pop = heapq.heappop

        def schedule(at: float, kind: str, item: Any) -> None:
            if at < end:
                push(pending, (at, next(seq), kind, item))

        def emit(at: float, kind: str, order: SimOrder, payload: bytes | None = None) -> SimEvent:
            if payload is None:
                payload = build_payload(order)
            event = SimEvent(at, order.channel, order.channel_order_id, payload, kind, order.status, order)
            if kind != "resend" and random_() < self.resend_ratio:
                # Channels re-send on their own retry timers: mostly within seconds, sometimes later.
                schedule(at + 0.05 + expovariate(1 / 3.0), "resend", event)
            return event

        def after_paid(at: float, order: SimOrder) -> None:
            """A paid order may later be cancelled by the buyer or get a new address."""
            r = random_()
            if r < self.cancel_ratio:
                schedule(at + 5.0 + expovariate(1 / 60.0), "cancelled", order)
            elif r < self.cancel_ratio + self.address_change_ratio:
                schedule(at + 5.0 + expovariate(1 / 45.0), "address_change", order)

        while True:
            if surge_start <= t < surge_end:
                phase, boundary = self._surging, surge_end
            else:
                phase, boundary = self._normal, (surge_start if t < surge_start else end)
            if phase.rate <= 0:  # a surge factor of 0 can silence every channel for a while
                if boundary >= end:
                    break
                t = boundary
                continue
            t_next = t + expovariate(phase.rate)
            if t_next >= boundary and boundary < end:
                # Rates are piecewise constant: an arrival drawn across a phase boundary restarts
                # there (exact for a Poisson process, which is memoryless).
                t = boundary
                continue
            t = t_next
            if t >= end:
                break
            while pending and pending[0][0] <= t:
                yield self._follow_up(pop(pending), rng, emit, after_paid, schedule)
            order = self._new_order(t, phase, rng, ids)
            event = emit(t, "new", order)
            if order.paid is None:
                if random_() < self.pay_later_ratio:
                    delay = min(1.0 + expovariate(1 / 30.0), self.pay_timeout_s - 1.0)
                    schedule(t + delay, "paid", order)
                else:
                    schedule(t + float(order.expire_s), "expired", order)
            else:
                after_paid(t, order)
            yield event
        while pending:
            yield self._follow_up(pop(pending), rng, emit, after_paid, schedule)

    def _follow_up(self, item: tuple[float, int, str, Any], rng: random.Random,
                   emit: Callable[..., SimEvent], after_paid: Callable[[float, SimOrder], None],
                   schedule: Callable[[float, str, Any], None]) -> SimEvent:
        at, _, kind, subject = item
        if kind == "resend":
            prior: SimEvent = subject
            assert prior.order is not None
            return SimEvent(at, prior.channel, prior.key, prior.payload, "resend", prior.status, prior.order)
        order: SimOrder = subject
        now = self._clock(at, order)
        if kind == "paid":
            order = replace(order, status=PAID, paid=now, updated=now)
            after_paid(at, order)
        elif kind in ("expired", "cancelled"):
            order = replace(order, status=CANCELLED, updated=now)
        elif kind == "address_change":
            order = replace(order, address=self._other_address(order.address, rng), updated=now)
        return emit(at, kind, order)

    def _clock(self, at: float, order: SimOrder) -> int:
        """Unix seconds of a change to ``order``: strictly after its last update, so a newer state
        always carries a newer modification time."""
        return max(int(self.start_epoch + at), order.updated + 1)

    # -- building one order ------------------------------------------------------------------

    def _new_order(self, t: float, phase: _Rates, rng: random.Random, ids: OrderIdAllocator) -> SimOrder:
        """One new order at offset ``t``: the simulator's hot path, hence the inlined draws."""
        random_ = rng.random
        channel = phase.channels[bisect.bisect(phase.channel_cum, random_() * phase.channel_cum[-1])]
        now = int(self.start_epoch + t)
        unpaid = random_() < self.unpaid_ratio
        if unpaid:
            created, paid = now, None
        else:
            # The channel pushes the order when it is paid; the buyer placed it a few seconds before.
            created, paid = now - int(-6.0 * math.log(1.0 - random_())), now

        # Lines: distinct SKUs drawn by popularity; mostly one or two, quantity mostly 1.
        n_lines = min(bisect.bisect(_LINE_COUNT_CUM, random_()) + 1, self._max_lines)
        sku_cum = phase.sku_cum
        total_w = sku_cum[-1]
        products = self.products
        chosen: list[CatalogItem] = []
        skus: list[str] = []
        while len(chosen) < n_lines:
            item = products[bisect.bisect(sku_cum, random_() * total_w)]
            if item.sku not in skus:
                chosen.append(item)
                skus.append(item.sku)
        qtys = [bisect.bisect(_QTY_CUM, random_()) + 1 for _ in chosen]
        totals = [item.list_price_fen * q for item, q in zip(chosen, qtys, strict=True)]
        goods = sum(totals)

        # 满减: every full threshold takes `off` off the order, spread over lines by value.
        chance, threshold, off = DISCOUNT_RULES[channel]
        discount = min((goods // threshold) * off, goods // 2) if random_() < chance else 0
        if discount:
            shares = _allocate(discount, totals)
            lines = [SimLine(item.sku, item.name, q, item.list_price_fen, total - share)
                     for item, q, total, share in zip(chosen, qtys, totals, shares, strict=True)]
        else:
            lines = [SimLine(item.sku, item.name, q, item.list_price_fen, total)
                     for item, q, total in zip(chosen, qtys, totals, strict=True)]

        gifts = self.gifts
        if gifts:
            beauty = False
            for item in chosen:
                if item.category == "beauty":
                    beauty = True
                    break
            if random_() < (GIFT_PROB_BEAUTY if beauty else GIFT_PROB_OTHER)[channel]:
                gift = gifts[int(random_() * len(gifts))]
                lines.append(SimLine(gift.sku, gift.name, 1, 0, 0, True))

        freight = FREIGHT_FEN if channel != "douyin" and goods - discount < FREE_SHIPPING_FROM_FEN else 0

        cum = self._province_cum
        province = self._provinces[bisect.bisect(cum, random_() * cum[-1])]
        addresses = self._addresses[province.code]
        address = addresses[int(random_() * len(addresses))]
        buyers = self._buyers
        buyer = buyers[int(random_() * len(buyers))]

        buyer_note = BUYER_NOTES[int(random_() * len(BUYER_NOTES))] if random_() < BUYER_NOTE_PROB else ""
        merchant_note = (MERCHANT_NOTES[int(random_() * len(MERCHANT_NOTES))]
                         if random_() < MERCHANT_NOTE_PROB else "")

        return SimOrder(
            channel, ids.next(channel), PENDING if unpaid else PAID, created, paid, now,
            tuple(lines), address, buyer, buyer_note, merchant_note, freight,
            1 if random_() < 0.4 else 2, self.pay_timeout_s,
        )

    def _other_address(self, current: SimAddress, rng: random.Random) -> SimAddress:
        """A corrected address: another district of the same province when it has one (buyers fix
        the district or move the parcel to the office), else another province."""
        options = [a for a in self._addresses[current.province.code]
                   if (a.city, a.district) != (current.city, current.district)]
        if not options:
            options = [a for code, addrs in self._addresses.items() if code != current.province.code
                       for a in addrs]
        return options[int(rng.random() * len(options))]


def _mix_seed(seed: int, purpose: str) -> int:
    """A seed for a side stream (buyer pool) that does not disturb the main stream's draws."""
    return (seed * 1_000_003) ^ zlib.crc32(purpose.encode())


def _allocate(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` fen over lines by ``weights``, largest remainder first; sums exactly."""
    if total == 0:
        return [0] * len(weights)
    denominator = sum(weights)
    shares = [total * w // denominator for w in weights]
    left = total - sum(shares)
    if left:
        remainders = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % denominator), i))
        for i in remainders[:left]:
            shares[i] += 1
    return shares


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------


class ProducerLike(Protocol):
    """The part of ``confluent_kafka.Producer`` the runner uses (a fake will do in tests)."""

    def produce(self, topic: str, value: bytes | None = ..., key: str | bytes | None = ...,
                on_delivery: Callable[[Any, Any], None] | None = ...) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


def run_simulation(
    sim: PeakSaleSimulator,
    producer: ProducerLike,
    *,
    realtime: bool = True,
    progress: Callable[[SimStats], None] | None = None,
    flush_timeout_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SimStats:
    """Produce every event of ``sim`` to its channel's raw topic, keyed by the channel order id.

    Open loop: with ``realtime`` each event goes out at its scheduled offset from the start (the
    runner sleeps only when ahead of schedule and never waits for consumers; when it falls behind
    it catches up as fast as the producer allows, and ``max_lag_s`` says so).  Without
    ``realtime`` events go out as fast as possible.  A full local queue (``BufferError``) is
    drained by polling, then the event is retried.  ``progress`` gets a snapshot about once a
    second and once at the end.  Messages still undelivered after ``flush_timeout_s`` count as
    failed.  Ctrl-C stops producing, flushes what was sent and returns with ``interrupted`` set.
    ``clock``/``sleep`` are injectable for tests.
    """
    stats = SimStats()
    outcome = {"delivered": 0, "failed": 0}

    def on_delivery(err: Any, _msg: Any) -> None:
        outcome["failed" if err is not None else "delivered"] += 1

    topics = {ch: raw_topic(ch) for ch in CHANNELS}
    start = clock()
    next_report = start + 1.0

    def report(now: float) -> None:
        nonlocal next_report
        if progress is not None and now >= next_report:
            stats.delivered, stats.failed = outcome["delivered"], outcome["failed"]
            stats.elapsed_s = now - start
            progress(stats.snapshot())
            next_report = now + 1.0

    since_poll = 0
    try:
        for event in sim.events():
            now = clock()
            if realtime:
                due = start + event.at
                # Ahead of schedule: wait in short naps that keep serving delivery reports and
                # progress (at low rates the next event may be seconds away).
                while due - now > 0.001:
                    producer.poll(0)
                    report(now)
                    sleep(min(due - now, 0.25))
                    now = clock()
                if now - due > stats.max_lag_s:
                    stats.max_lag_s = now - due
            while True:
                try:
                    producer.produce(topics[event.channel], value=event.payload, key=event.key,
                                     on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: let librdkafka drain, then retry
                    stats.queue_full_retries += 1
                    producer.poll(0.05)
            stats.count(event)
            since_poll += 1
            if since_poll >= 200:
                producer.poll(0)
                since_poll = 0
            report(now)
    except KeyboardInterrupt:
        stats.interrupted = True
    remaining = producer.flush(flush_timeout_s)
    stats.delivered = outcome["delivered"]
    stats.failed = outcome["failed"] + max(int(remaining or 0), 0)
    stats.elapsed_s = clock() - start
    if progress is not None:
        progress(stats.snapshot())
    return stats
