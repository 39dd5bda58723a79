"""China's provincial-level divisions: official names, GB/T 2260 codes, common short forms.

Channels spell provinces differently (``浙江省``, ``北京``, ``广西``, ``内蒙古自治区``); the canonical
order always carries the full official name and the two-digit GB/T 2260 code so that routing and
reporting never depend on a channel's spelling.  Populations (7th census, 2020, millions) weight
the simulator's buyers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Province:
    code: str  #: two-digit GB/T 2260 code, e.g. "44"
    name: str  #: full official name, e.g. "广东省"
    short: str  #: short form used by some channels, e.g. "广东"
    population_m: float  #: 2020 census population in millions (simulator weights)
    capital: str  #: capital city (simulator addresses)


PROVINCES: tuple[Province, ...] = (
    Province("11", "北京市", "北京", 21.89, "北京市"),
    Province("12", "天津市", "天津", 13.87, "天津市"),
    Province("13", "河北省", "河北", 74.61, "石家庄市"),
    Province("14", "山西省", "山西", 34.92, "太原市"),
    Province("15", "内蒙古自治区", "内蒙古", 24.05, "呼和浩特市"),
    Province("21", "辽宁省", "辽宁", 42.59, "沈阳市"),
    Province("22", "吉林省", "吉林", 24.07, "长春市"),
    Province("23", "黑龙江省", "黑龙江", 31.85, "哈尔滨市"),
    Province("31", "上海市", "上海", 24.87, "上海市"),
    Province("32", "江苏省", "江苏", 84.75, "南京市"),
    Province("33", "浙江省", "浙江", 64.57, "杭州市"),
    Province("34", "安徽省", "安徽", 61.03, "合肥市"),
    Province("35", "福建省", "福建", 41.54, "福州市"),
    Province("36", "江西省", "江西", 45.19, "南昌市"),
    Province("37", "山东省", "山东", 101.53, "济南市"),
    Province("41", "河南省", "河南", 99.37, "郑州市"),
    Province("42", "湖北省", "湖北", 57.75, "武汉市"),
    Province("43", "湖南省", "湖南", 66.45, "长沙市"),
    Province("44", "广东省", "广东", 126.01, "广州市"),
    Province("45", "广西壮族自治区", "广西", 50.13, "南宁市"),
    Province("46", "海南省", "海南", 10.08, "海口市"),
    Province("50", "重庆市", "重庆", 32.05, "重庆市"),
    Province("51", "四川省", "四川", 83.67, "成都市"),
    Province("52", "贵州省", "贵州", 38.56, "贵阳市"),
    Province("53", "云南省", "云南", 47.21, "昆明市"),
    Province("54", "西藏自治区", "西藏", 3.65, "拉萨市"),
    Province("61", "陕西省", "陕西", 39.53, "西安市"),
    Province("62", "甘肃省", "甘肃", 25.02, "兰州市"),
    Province("63", "青海省", "青海", 5.92, "西宁市"),
    Province("64", "宁夏回族自治区", "宁夏", 7.20, "银川市"),
    Province("65", "新疆维吾尔自治区", "新疆", 25.85, "乌鲁木齐市"),
    Province("71", "台湾省", "台湾", 23.56, "台北市"),
    Province("81", "香港特别行政区", "香港", 7.47, "香港"),
    Province("82", "澳门特别行政区", "澳门", 0.68, "澳门"),
)

BY_CODE: dict[str, Province] = {p.code: p for p in PROVINCES}

_ALIASES: dict[str, Province] = {}
for _p in PROVINCES:
    for _alias in {_p.name, _p.short, _p.short + "省", _p.short + "市", _p.short + "自治区"}:
        _ALIASES[_alias] = _p
# Spellings seen in channel payloads that the rules above do not produce.
_ALIASES.update({
    "广西自治区": BY_CODE["45"], "宁夏自治区": BY_CODE["64"], "新疆自治区": BY_CODE["65"],
    "香港": BY_CODE["81"], "香港特区": BY_CODE["81"], "澳门特区": BY_CODE["82"],
})


def lookup_province(name: str) -> Province | None:
    """The province a channel's spelling means, or None when it names no province."""
    if not isinstance(name, str):
        return None
    key = name.strip().replace(" ", "")
    return _ALIASES.get(key)
