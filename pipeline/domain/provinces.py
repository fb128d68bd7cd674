"""One spelling per Chinese province: the short Chinese name ("广东", "新疆") the risk rules, the
warehouse table and the canonical order all use, whatever a platform sent ("广东省",
"新疆维吾尔自治区", "Guangdong")."""
from __future__ import annotations

from functools import lru_cache

_PINYIN = {
    "beijing": "北京", "tianjin": "天津", "hebei": "河北", "shanxi": "山西", "inner mongolia": "内蒙古",
    "neimenggu": "内蒙古", "liaoning": "辽宁", "jilin": "吉林", "heilongjiang": "黑龙江", "shanghai": "上海",
    "jiangsu": "江苏", "zhejiang": "浙江", "anhui": "安徽", "fujian": "福建", "jiangxi": "江西",
    "shandong": "山东", "henan": "河南", "hubei": "湖北", "hunan": "湖南", "guangdong": "广东",
    "guangxi": "广西", "hainan": "海南", "chongqing": "重庆", "sichuan": "四川", "guizhou": "贵州",
    "yunnan": "云南", "tibet": "西藏", "xizang": "西藏", "shaanxi": "陕西", "gansu": "甘肃",
    "qinghai": "青海", "ningxia": "宁夏", "xinjiang": "新疆", "hong kong": "香港", "hongkong": "香港",
    "macau": "澳门", "macao": "澳门", "taiwan": "台湾",
}

# longest first so "广西壮族自治区" loses the whole suffix, not only "自治区"
_SUFFIXES = ("维吾尔自治区", "壮族自治区", "回族自治区", "特别行政区", "自治区", "省", "市")


@lru_cache(maxsize=4096)  # called per order and per warehouse ranked; the set of spellings is small
def normalize_province(name: str) -> str:
    """'广东省' / '新疆维吾尔自治区' / 'Guangdong' -> the short Chinese name used in the tables."""
    text = (name or "").strip()
    for suffix in _SUFFIXES:
        if text.endswith(suffix) and len(text) > len(suffix):
            text = text[: -len(suffix)]
            break
    return _PINYIN.get(text.lower().removesuffix(" province").strip(), text)
