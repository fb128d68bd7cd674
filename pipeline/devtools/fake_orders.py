"""Realistic raw platform orders for replay, tests and benchmarks.

`RawOrderFactory` renders platform-native JSON from the same `PlatformSpec`s normalize reads, so
a renamed field changes both sides at once; the hand-written corpus in tests/corpus checks the
specs against real-looking payloads independently. `generate_stream` mixes new orders with
redeliveries, status updates and malformed messages at configurable rates, deterministically for
a seed, and says for every message what normalize must do with it.
"""
from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterator

from ..domain.normalize import CHINA_TZ, UTC, VALID_ID, _TIME_PARSERS, global_order_id
from ..domain.platforms import SPECS, MoneyFormat, PlatformSpec, TimeFormat, carrier_code, currency_exponent
from ..domain.stock_ledger import SHIPPED_STATES

# -- catalogue and geography ------------------------------------------------------------------------

_GOODS = ("婴儿连体衣", "纯棉口水巾", "宝宝辅食碗", "儿童保温杯", "防蓝光眼镜", "无线蓝牙耳机", "机械键盘",
          "降噪耳机", "充电宝 20000mAh", "智能手环", "电动牙刷", "洗面奶", "保湿面霜", "防晒霜 SPF50",
          "口红 #999", "香水 50ml", "猫粮 2kg", "狗粮 10kg", "猫砂 6L", "宠物冻干", "有机大米 5kg", "坚果礼盒",
          "龙井茶 250g", "挂耳咖啡", "蛋白粉", "瑜伽垫", "跑步鞋", "羽绒服", "羊毛围巾", "双肩背包",
          "不锈钢锅", "空气炸锅", "电饭煲", "扫地机器人", "床上四件套", "乳胶枕", "收纳箱", "台灯")
GIFT_CARD_SKUS = ("SKU-0039", "SKU-0040")
SKUS: list[str] = [f"SKU-{i:04d}" for i in range(1, 41)]
# sku -> (title, unit price in fen); the last two are gift cards (virtual, but stocked like the rest)
CATALOG: dict[str, tuple[str, int]] = {
    sku: (title, 990 + (i * 3737) % 59000) for i, (sku, title) in enumerate(zip(SKUS, _GOODS))}
CATALOG["SKU-0039"] = ("电子礼品卡 ¥100", 10000)
CATALOG["SKU-0040"] = ("电子礼品卡 ¥500", 50000)
GOODS_SKUS = [s for s in SKUS if s not in GIFT_CARD_SKUS]

# Remote provinces, short form as normalize canonicalises them and the risk rules match them.
REMOTE_PROVINCES: tuple[str, ...] = ("新疆", "西藏", "青海", "内蒙古", "宁夏", "甘肃")
_REMOTE_FULL = {"新疆": "新疆维吾尔自治区", "西藏": "西藏自治区", "内蒙古": "内蒙古自治区", "宁夏": "宁夏回族自治区"}
_PROVINCES = {"广东": ("深圳市", "南山区"), "浙江": ("杭州市", "西湖区"), "江苏": ("苏州市", "工业园区"),
              "上海": ("上海市", "浦东新区"), "北京": ("北京市", "朝阳区"), "四川": ("成都市", "武侯区"),
              "湖北": ("武汉市", "洪山区"), "山东": ("青岛市", "市南区"), "福建": ("厦门市", "思明区"),
              "河南": ("郑州市", "金水区")}
_REMOTE_CITIES = {"新疆": ("乌鲁木齐市", "天山区"), "西藏": ("拉萨市", "城关区"), "青海": ("西宁市", "城中区"),
                  "内蒙古": ("呼和浩特市", "新城区"), "宁夏": ("银川市", "兴庆区"), "甘肃": ("兰州市", "城关区")}
_FOREIGN = {"US": ("California", "San Jose", "USD"), "SG": ("Singapore", "Singapore", "SGD"),
            "MY": ("Selangor", "Petaling Jaya", "MYR"), "TH": ("Bangkok", "Bangkok", "THB"),
            "PH": ("Metro Manila", "Makati", "PHP"), "HK": ("Hong Kong", "Kowloon", "HKD"),
            "JP": ("Tokyo", "Shibuya", "JPY"), "GB": ("England", "London", "GBP")}
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
_GIVEN = ("伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "洋", "艳", "勇", "军", "杰", "娟", "涛", "明", "超", "霞")
_LATIN_NAMES = ("Alice Tan", "Bob Lim", "Chen Wei", "Dana Cruz", "Evan Ng", "Fiona Lee", "Gary Ong")
FLAG_NOTES = ("请开发票，抬头：杭州某某科技有限公司", "送人的礼物，不要放价格单", "加急！明天要用", "麻烦附赠品，谢谢",
              "急用，请尽快发货并开发票", "Please include an invoice", "It's a gift, urgent please")
PLAIN_NOTES = ("不急，慢慢发", "请用顺丰", "周末不在家，工作日送", "'; DROP TABLE orders; --", "<script>alert(1)</script>")

DEFAULT_START = datetime(2026, 11, 11, 0, 0, tzinfo=CHINA_TZ).astimezone(UTC)  # Double 11, a past instant

# Where a standard state goes next in the generator's updates (first one the platform can say).
_NEXT = {"PENDING_PAYMENT": (("PAID",), ("CANCELLED",)),
         "PAID": (("SHIPPED",), ("CANCELLED",)),
         "RISK_HOLD": (("PAID",), ("CANCELLED",)),
         "PACKED": (("SHIPPED",),),
         "SHIPPED": (("DELIVERED", "COMPLETED"),),
         "DELIVERED": (("COMPLETED",),)}

# Fields platforms also send that normalize ignores: realistic noise for the parser.
_EXTRAS = {
    "TMALL": {"seller_nick": "某某母婴旗舰店", "type": "fixed", "shipping_type": "express", "trade_from": "WAP,JHS"},
    "JD": {"vender_id": "10086", "order_type": "22", "store_order": "京仓订单", "pay_type": "4-在线支付"},
    "PINDUODUO": {"trade_type": 0, "confirm_status": 1, "is_lucky_flag": 1, "shipping_type": 0},
    "DOUYIN": {"shop_id": 4463798, "order_type": 0, "b_type": 2, "c_biz": 1},
    "KUAISHOU": {"sellerOpenId": "f19a0ce1c7d3", "payType": 1, "cpsType": 0},
    "SHOPEE": {"cod": False, "payment_method": "Credit Card", "days_to_ship": 3},
    "SHOPIFY": {"email": "buyer@example.com", "gateway": "shopify_payments", "test": False,
                "tags": "", "source_name": "web"},
}

# What each platform calls the couriers its shipments go with (pipeline/domain/courier_names.yaml
# maps them to carrier codes); the last of each is one the code table does not know.
COURIERS_NAMED = {
    "TMALL": ("顺丰速运", "中通快递", "圆通速递", "极兔速递", "EMS", "德邦快递"),
    "JD": ("顺丰快递", "中通快递", "圆通快递", "京东快递"),
    "PINDUODUO": ("中通快递", "圆通快递", "极兔快递", "邮政EMS", "韵达快递"),
    "DOUYIN": ("中通快递", "圆通速递", "极兔速递", "顺丰速运", "韵达速递"),
    "KUAISHOU": ("中通", "圆通", "极兔", "顺丰", "申通"),
    "SHOPEE": ("J&T Express", "SF Express", "SPX Express"),
    "SHOPIFY": ("SF Express", "YTO Express", "J&T Express", "UPS"),
}
_WAYBILL_PREFIX = {"SF": "SF", "ZTO": "7", "YTO": "YT", "JT": "JT", "EMS": "1"}


# -- rendering through the spec ---------------------------------------------------------------------

def _first(path: str) -> list[str]:
    return path.split("|")[0].split(".") if path else []


def _put(obj: dict, path: str, value) -> None:
    keys = _first(path)
    if not keys:
        return
    for key, after in zip(keys, keys[1:]):
        if isinstance(obj, list):  # "fulfillments.0.tracking_number": an array's item
            while len(obj) <= int(key):
                obj.append({})
            obj = obj[int(key)]
        else:
            obj = obj.setdefault(key, [] if after.isdigit() else {})
    if isinstance(obj, list):
        while len(obj) <= int(keys[-1]):
            obj.append(None)
        obj[int(keys[-1])] = value
    else:
        obj[keys[-1]] = value


def _lookup(obj: dict, path: str):
    for key in _first(path):
        if isinstance(obj, list) and key.isdigit():
            obj = obj[int(key)] if int(key) < len(obj) else None
        elif not isinstance(obj, dict):
            return None
        else:
            obj = obj.get(key)
    return obj


def _delete(obj: dict, path: str) -> None:
    keys = _first(path)
    parent = _lookup(obj, ".".join(keys[:-1])) if len(keys) > 1 else obj
    if isinstance(parent, dict):
        parent.pop(keys[-1], None)


def _ref(spec: PlatformSpec, path: str, value: str):
    """Ids the platform sends as JSON numbers stay numbers (when they are digits)."""
    return int(value) if path in spec.numeric_fields and value.isdigit() else value


def _money(spec: PlatformSpec, minor: int, currency: str):
    exp = currency_exponent(currency)
    if spec.money_format is MoneyFormat.FEN_INT:
        return minor
    if spec.money_format is MoneyFormat.FLOAT:
        return minor / 10 ** exp if exp else minor
    if exp == 0:
        return str(minor)
    return f"{minor // 10 ** exp}.{minor % 10 ** exp:0{exp}d}"


def _time(spec: PlatformSpec, dt: datetime):
    fmt = spec.time_format
    if fmt is TimeFormat.EPOCH_S:
        return int(dt.timestamp())
    if fmt is TimeFormat.EPOCH_MS:
        return int(dt.timestamp()) * 1000 + dt.microsecond // 1000
    if fmt is TimeFormat.CN_LOCAL:
        return dt.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")
    return dt.astimezone(CHINA_TZ).isoformat()


def _read_time(spec: PlatformSpec, value) -> datetime:
    return _TIME_PARSERS[spec.time_format](value, "time")


def _set_status(spec: PlatformSpec, obj: dict, state: str) -> None:
    codes = spec.codes_for(state)
    if not codes:
        raise ValueError(f"{spec.platform} has no status code for {state}")
    for path, part in zip(spec.status, codes[0].split("/")):
        if part == "null":
            _put(obj, path, None)
        else:
            _put(obj, path, int(part) if path in spec.numeric_fields else part)


def put_shipment(platform: str, payload: dict, courier: str, waybill: str) -> None:
    """Write the courier and waybill into `payload` where `platform` sends them."""
    spec = SPECS[platform]
    _put(payload, spec.courier, courier)
    _put(payload, spec.waybill, waybill)


def drop_shipment(platform: str, payload: dict) -> None:
    """A shipped order that came without its waybill (the platform did not send one)."""
    for path in (SPECS[platform].courier, SPECS[platform].waybill):
        if _lookup(payload, path) is not None:
            _delete(payload, path)


def shipment_of(platform: str, payload: dict) -> tuple[str | None, str | None]:
    """(courier name, waybill) as the payload carries them."""
    spec = SPECS[platform]
    return _lookup(payload, spec.courier), _lookup(payload, spec.waybill)


def derived_shipment(platform: str, payload: dict) -> tuple[str, str]:
    """A courier and waybill for the order, derived from its id: the same in every run, and the
    factory's own random sequence (the seeded streams) is left as it was."""
    rng = random.Random(f"ship:{platform}:{_lookup(payload, SPECS[platform].order_id)}")
    courier = rng.choice(COURIERS_NAMED[platform])
    prefix = _WAYBILL_PREFIX.get(carrier_code(courier), "X")
    return courier, f"{prefix}{rng.randrange(10 ** 12, 10 ** 13)}"


def standard_status(platform: str, payload: dict) -> str:
    spec = SPECS[platform]
    parts = []
    for path in spec.status:
        value = _lookup(payload, path)
        parts.append("null" if value is None else str(value))
    return spec.status_map["/".join(parts)]


def expected_order_id(platform: str, payload: dict) -> str:
    """The global id normalize must give this payload (the ghost-order fallback included)."""
    spec = SPECS[platform]
    ext = str(_lookup(payload, spec.order_id))
    if VALID_ID.fullmatch(ext) is None:
        ext = str(_lookup(payload, spec.alt_id))
    return global_order_id(platform, ext)


def supported_states(platform: str) -> set[str]:
    return set(SPECS[platform].status_map.values())


# -- factory ----------------------------------------------------------------------------------------

class RawOrderFactory:
    """Platform-native order payloads (dicts), deterministic for a seed."""

    def __init__(self, seed: int, start: datetime | None = None) -> None:
        self.rng = random.Random(seed)
        self.clock = (start or DEFAULT_START).astimezone(UTC).replace(microsecond=0)
        self._seq = 0

    # ids look like each platform's own; a random part keeps two factories' ids apart
    def _ids(self, platform: str, created: datetime) -> tuple[str, str]:
        self._seq += 1
        r = self.rng.randrange(10 ** 9)
        n = f"{r:09d}{self._seq % 10 ** 7:07d}"
        day = created.astimezone(CHINA_TZ).strftime("%y%m%d")
        return {
            "TMALL": (f"4{n}{self.rng.randrange(100):02d}", f"20{day}22001{n[:12]}"),
            "JD": (f"3{n[:11]}{n[-4:]}", f"T{n}"),
            "PINDUODUO": (f"{day}-{n[:15]}", f"{n}{self.rng.randrange(1000):03d}"),
            "DOUYIN": (f"69{n}{self.rng.randrange(10):d}", f"{n[::-1]}"),
            "KUAISHOU": (f"21{n}", f"KT{n}"),
            "SHOPEE": (f"{day}{self._alnum(8)}", f"BK{day}{self._alnum(8)}"),
            "SHOPIFY": (f"5{n[:12]}", f"{1000 + r % 10 ** 8}"),
        }[platform]

    def _alnum(self, k: int) -> str:
        return "".join(self.rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(k))

    def _tick(self) -> datetime:
        self.clock += timedelta(milliseconds=self.rng.randint(20, 300))
        return self.clock.replace(microsecond=0)

    def _ip(self) -> str:
        r = self.rng
        return f"{r.randint(1, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def order(self, platform: str, *, external_id: str | None = None, status: str | None = None,
              amount_minor: int | None = None, province: str | None = None, country: str | None = None,
              ip: str | None = None, note: str | None = None, gift_card: bool = False, custom: bool = False,
              skus: list[tuple[str, int]] | None = None, created_at: datetime | None = None) -> dict:
        spec = SPECS[platform]
        rng = self.rng
        status = status or "PAID"
        created = (created_at.astimezone(UTC).replace(microsecond=0) if created_at else self._tick())
        ext_id, alt_id = self._ids(platform, created)
        if external_id is not None:
            ext_id = external_id

        country = country or spec.default_country
        if country != spec.default_country and not spec.country_field:
            raise ValueError(f"{platform} orders carry no country; cannot ship to {country}")
        currency = spec.currency
        if spec.currency_field:
            currency = _FOREIGN[country][2] if country in _FOREIGN else "CNY"
        if country == "CN":
            if province is None:
                province = rng.choice(sorted(_PROVINCES))
            city, district = _PROVINCES.get(province) or _REMOTE_CITIES.get(province) or ("", "")
            # platforms spell provinces both ways; normalize folds them to the short form
            province_text = _REMOTE_FULL.get(province, province) if rng.random() < 0.5 else province
            name = rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.randint(1, 2)))
            detail = f"{rng.choice(('科技园', '人民路', '中山路', '建设大道'))}{rng.randint(1, 999)}号"
            postal = f"{rng.randint(100000, 859999)}"
        else:
            state, city, _ = _FOREIGN.get(country, ("", "", ""))
            province_text, district = province or state, ""
            name = rng.choice(_LATIN_NAMES)
            detail = f"{rng.randint(1, 999)} Orchard Road"
            postal = f"{rng.randint(10000, 99999)}"

        # lines
        if skus is None:
            if amount_minor is not None:
                picked = [(rng.choice(GOODS_SKUS), 1)]
            else:
                picked = [(sku, rng.randint(1, 3)) for sku in rng.sample(GOODS_SKUS, rng.randint(1, 3))]
        else:
            picked = list(skus)
        if gift_card:
            picked.append((rng.choice(GIFT_CARD_SKUS), 1))
        lines = []
        for i, (sku, qty) in enumerate(picked):
            title, price = CATALOG.get(sku, (f"商品 {sku}", 1990))
            if custom and i == 0:
                title += "（定制刻字）"
            lines.append((sku, title, qty, price))
        if amount_minor is not None and skus is None:
            sku, title, qty, _ = lines[0]
            lines[0] = (sku, title, qty, amount_minor - sum(q * p for _, _, q, p in lines[1:]))
            if lines[0][3] < 0:
                lines[0] = (sku, title, qty, 0)
        goods = sum(q * p for _, _, q, p in lines)
        if amount_minor is None:
            discount = rng.choice((0, 0, 500, 1000)) if goods > 5000 else 0
            coupon = rng.choice((0, 0, 0, 300)) if goods > 5000 else 0
            shipping = rng.choice((0, 0, 800))
            total = goods - discount - coupon + shipping
        else:
            discount, coupon, shipping, total = max(0, goods - amount_minor), 0, 0, amount_minor

        paid = created + timedelta(seconds=rng.randint(5, 300)) if status != "PENDING_PAYMENT" else None
        updated = paid or created
        if status not in ("PENDING_PAYMENT", "PAID"):
            updated += timedelta(seconds=rng.randint(600, 7200))

        p: dict = dict(copy.deepcopy(_EXTRAS.get(platform, {})))
        _put(p, spec.order_id, _ref(spec, spec.order_id, ext_id))
        _put(p, spec.alt_id, _ref(spec, spec.alt_id, alt_id))
        _set_status(spec, p, status)
        _put(p, spec.created, _time(spec, created))
        if paid is not None:
            _put(p, spec.paid, _time(spec, paid))
        elif spec.time_format in (TimeFormat.EPOCH_S, TimeFormat.EPOCH_MS):
            _put(p, spec.paid, 0)  # epoch platforms send 0 for "not paid yet"
        _put(p, spec.updated, _time(spec, updated))
        if spec.currency_field:
            _put(p, spec.currency_field, currency)
        for path, minor in ((spec.total, total), (spec.goods, goods), (spec.discount, discount),
                            (spec.coupon, coupon), (spec.shipping, shipping)):
            _put(p, path, _money(spec, minor, currency))
        items = []
        ls = spec.lines
        for sku, title, qty, price in lines:
            item: dict = {}
            _put(item, ls.sku, sku)
            _put(item, ls.title, title)
            _put(item, ls.quantity, qty)
            _put(item, ls.unit_price, _money(spec, price, currency))
            if ls.gift_card:
                _put(item, ls.gift_card, sku in GIFT_CARD_SKUS)
            items.append(item)
        _put(p, ls.items, items)
        buyer_id = str(rng.randrange(10 ** 11, 10 ** 12)) if spec.buyer_id in spec.numeric_fields \
            else f"u{rng.randrange(16 ** 12):012x}"
        _put(p, spec.buyer_id, _ref(spec, spec.buyer_id, buyer_id))
        _put(p, spec.buyer_name, name)
        _put(p, spec.buyer_phone, f"1{rng.choice('3578')}{rng.randrange(10 ** 9):09d}")
        _put(p, spec.ip, ip or self._ip())
        if spec.country_field:
            _put(p, spec.country_field, country)
        _put(p, spec.province, province_text)
        _put(p, spec.city, city)
        _put(p, spec.district, district)
        _put(p, spec.detail, detail)
        _put(p, spec.postal_code, postal)
        if note is not None:
            _put(p, spec.note, note)
        if status in SHIPPED_STATES:
            put_shipment(platform, p, *derived_shipment(platform, p))
        return p

    def update(self, payload: dict, status: str, after_s: int | None = None,
               shipment: tuple[str, str] | None = None) -> dict:
        """The same order in standard state `status`, modified later than before (`after_s`
        seconds later, or a random minute to three hours). The first shipped state carries the
        courier and waybill (`shipment`, or ones derived from the order id); later ones keep them."""
        spec = SPECS[self._platform_of(payload)]
        out = copy.deepcopy(payload)
        if status in SHIPPED_STATES and (shipment is not None or shipment_of(spec.platform, out)[1] is None):
            put_shipment(spec.platform, out, *(shipment or derived_shipment(spec.platform, out)))
        was = standard_status(spec.platform, payload)
        _set_status(spec, out, status)
        updated = _read_time(spec, _lookup(payload, spec.updated))
        updated += timedelta(seconds=self.rng.randint(60, 3 * 3600) if after_s is None else after_s)
        _put(out, spec.updated, _time(spec, updated))
        if was == "PENDING_PAYMENT" and status != "CANCELLED":
            _put(out, spec.paid, _time(spec, updated))
        return out

    def _platform_of(self, payload: dict) -> str:
        """Which spec rendered `payload`: the one whose id and status fields it has."""
        for name, spec in SPECS.items():
            if _lookup(payload, spec.order_id) is not None and _lookup(payload, spec.updated) is not None:
                try:
                    standard_status(name, payload)
                except KeyError:
                    continue
                if _lookup(payload, spec.lines.items) is not None:
                    return name
        raise ValueError("payload matches no platform spec")

    def redelivery_bytes(self, payload: dict) -> bytes:
        """Same content as `to_bytes`, keys in another order and other whitespace (webhook + polling)."""
        def shuffle(obj):
            if isinstance(obj, dict):
                keys = list(obj)
                self.rng.shuffle(keys)
                return {k: shuffle(obj[k]) for k in keys}
            if isinstance(obj, list):
                return [shuffle(v) for v in obj]
            return obj
        style = self.rng.randrange(3)
        if style == 0:
            text = json.dumps(shuffle(payload), ensure_ascii=False, indent=2)
        elif style == 1:
            text = json.dumps(shuffle(payload), ensure_ascii=True, separators=(", ", ": "))
        else:
            text = " " + json.dumps(shuffle(payload), ensure_ascii=False, indent="\t") + "\n"
        return text.encode("utf-8")

    @staticmethod
    def to_bytes(payload) -> bytes:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def malformed(self, kind: str | None = None, platform: str | None = None) -> bytes:
        """Bytes normalize must dead-letter with MALFORMED_KINDS[kind]."""
        kind = kind or self.rng.choice(RANDOM_MALFORMED_KINDS)
        platform = platform or self.rng.choice(sorted(SPECS))
        spec = SPECS[platform]
        p = self.order(platform)
        if kind == "truncated":
            text = self.to_bytes(p).decode("utf-8")
            return text[: len(text) // 2].encode("utf-8")  # cut between characters: bad JSON, valid UTF-8
        if kind == "not_object":
            return self.to_bytes([p])
        if kind == "missing_field":
            _delete(p, spec.order_id)
        elif kind == "wrong_type":
            _put(p, spec.lines.items, "SKU-0001 x2")
        elif kind == "negative_amount":
            currency = _lookup(p, spec.currency_field) if spec.currency_field else spec.currency
            value = _money(spec, 1200, currency)
            _put(p, spec.total, f"-{value}" if isinstance(value, str) else -value)
        elif kind == "absurd_amount":
            currency = _lookup(p, spec.currency_field) if spec.currency_field else spec.currency
            _put(p, spec.total, _money(spec, 10 ** 12, currency))
        elif kind == "unknown_status":
            _put(p, spec.status[0], 999 if spec.status[0] in spec.numeric_fields else "MYSTERY_STATE")
        elif kind == "bad_utf8":
            data = self.to_bytes(p)
            return data[:1] + b'"\xff\xfe":1,' + data[1:]
        elif kind == "deep_nesting":
            nested: list = []
            for _ in range(40):
                nested = [nested]
            p["ext_info"] = nested
        elif kind == "huge_string":
            _put(p, spec.note, "长" * (5000 + self.rng.randrange(100)))
        elif kind == "bad_time":
            _put(p, spec.created, _time(spec, datetime(1999, 12, 31, tzinfo=UTC)))
        elif kind == "ghost_no_alt":
            _put(p, spec.order_id, f"{_lookup(p, spec.order_id)}@pay")
            _delete(p, spec.alt_id)
        elif kind == "oversized":
            p["padding"] = "x" * 300_000
        else:
            raise ValueError(f"unknown malformed kind {kind!r}")
        return self.to_bytes(p)


# kind -> the reason code normalize must give
MALFORMED_KINDS: dict[str, str] = {
    "truncated": "malformed_json", "not_object": "not_an_object", "missing_field": "missing_field",
    "wrong_type": "bad_type", "negative_amount": "bad_amount", "absurd_amount": "bad_amount",
    "unknown_status": "unknown_status", "bad_utf8": "bad_encoding", "deep_nesting": "too_deep",
    "huge_string": "field_too_long", "bad_time": "bad_time", "ghost_no_alt": "bad_id", "oversized": "oversized",
}
RANDOM_MALFORMED_KINDS = tuple(k for k in MALFORMED_KINDS if k != "oversized")  # oversized costs 300 KB


# -- the replay stream ------------------------------------------------------------------------------

@dataclass
class ReplayMix:
    redelivery: float = 0.05
    update: float = 0.05
    malformed: float = 0.01
    high_value: float = 0.02     # total > 5000 CNY
    remote: float = 0.03
    ip_burst: float = 0.01       # starts 6 orders from one IP
    gift_card: float = 0.01
    cross_border: float = 0.02
    note_flags: float = 0.05
    ghost: float = 0.005         # order id with '@', falls back to the other reference
    # issue 17 (0 by default, so the seeded streams above stay what they were):
    ship: float = 0.0            # a paid (or packed) order shipped, in believable time
    late_payment: float = 0.0    # a new unpaid order whose payment comes in the late phase (after its
                                 # reservation timed out); half of them are shipped there too
    suspect: float = 0.0         # an update the transition rules must flag: backwards, skipping, too fast
    out_of_order: float = 0.0    # an older version of an order delivered after a newer one (stale)
    burst_size: int = 6
    platforms: dict[str, float] = field(default_factory=lambda: {
        "TMALL": 0.3, "JD": 0.2, "PINDUODUO": 0.15, "DOUYIN": 0.15, "KUAISHOU": 0.08, "SHOPEE": 0.05,
        "SHOPIFY": 0.07})


@dataclass
class RawMessage:
    platform: str
    key: bytes
    value: bytes
    kind: str                    # new | redelivery | update | malformed | ship | late_payment | suspect | out_of_order
    order_id: str | None         # expected global order id (None for malformed)
    expect: str                  # canonical | dlq
    reason_code: str | None = None  # expected rejection code for malformed messages
    expect_rule: str | None = None  # suspect: the transition rule that must fire (others must be trusted)
    phase: str = "main"          # main | late (produced after the unpaid reservations timed out)
    status: str = ""             # the standard state the message says (canonical ones)


_CN_PLATFORMS = ("TMALL", "JD", "PINDUODUO", "DOUYIN", "KUAISHOU")


def generate_stream(count: int, seed: int, mix: ReplayMix = ReplayMix(), start: datetime | None = None
                    ) -> Iterator[RawMessage]:
    """`count` raw messages; redeliveries and updates refer to orders earlier in the stream."""
    rng = random.Random(seed ^ 0x5EED)
    factory = RawOrderFactory(seed, start=start)
    names = list(mix.platforms)
    weights = [mix.platforms[n] for n in names]
    cn_names = [n for n in names if n in _CN_PLATFORMS]
    cn_weights = [mix.platforms[n] for n in cn_names]
    # [platform, latest payload, order id, raw key, earlier payloads, frozen]: a platform keys every
    # version of an order by its own order id, so all of them land on one partition (the dedupe
    # state's partition). A frozen order gets no more updates here (its last one was meant to be
    # suspect, or its payment is kept for the late phase), only redeliveries.
    history: list[list] = []
    late: list[RawMessage] = []
    burst_ip, burst_left = None, 0

    def version(entry: list, status: str, kind: str, after_s: int | None = None, rule: str | None = None,
                phase: str = "main") -> RawMessage:
        platform, payload, oid, key = entry[:4]
        entry[4].append(payload)
        entry[1] = factory.update(payload, status, after_s)
        return RawMessage(platform, key, factory.to_bytes(entry[1]), kind, oid, "canonical", expect_rule=rule,
                          phase=phase, status=status)

    produced = 0
    i = -1
    while produced + len(late) < count:
        i += 1
        r = rng.random()
        if history and r < mix.redelivery:
            platform, payload, oid, key = rng.choice(history)[:4]
            produced += 1
            yield RawMessage(platform, key, factory.redelivery_bytes(payload), "redelivery", oid, "canonical",
                             status=standard_status(platform, payload))
            continue
        r -= mix.redelivery
        if history and r < mix.update:
            entry = _updatable(rng, history)
            if entry is not None:
                produced += 1
                yield version(entry, _next_state(rng, entry[0], standard_status(entry[0], entry[1])), "update")
                continue
        r -= mix.update
        if r < mix.malformed:
            kind = rng.choice(RANDOM_MALFORMED_KINDS)
            platform = rng.choices(names, weights)[0]
            produced += 1
            yield RawMessage(platform, f"bad-{seed}-{i}".encode(), factory.malformed(kind, platform), "malformed",
                             None, "dlq", MALFORMED_KINDS[kind])
            continue
        # (r < 0 here when an earlier kind found no order to apply to and fell through: the kinds
        # below only take their own share, so a rate of 0 never fires)
        r -= mix.malformed
        if history and 0 <= r < mix.ship:
            entry = _pick(rng, history, lambda e: standard_status(e[0], e[1]) in ("PAID", "PACKED"))
            if entry is not None:
                produced += 1
                yield version(entry, "SHIPPED", "ship", after_s=rng.randint(200, 7200))
                continue
        r -= mix.ship
        if history and 0 <= r < mix.suspect:
            made = _suspect(rng, history, version, room=count - produced - len(late))
            if made:
                produced += len(made)
                yield from made
                continue
        r -= mix.suspect
        if history and 0 <= r < mix.out_of_order:
            entry = _pick(rng, history, lambda e: bool(e[4]), frozen_too=True)
            if entry is not None:
                platform, _, oid, key = entry[:4]
                older = rng.choice(entry[4])
                produced += 1
                yield RawMessage(platform, key, factory.to_bytes(older), "out_of_order", oid, "canonical",
                                 status=standard_status(platform, older))
                continue
        r -= mix.out_of_order
        late_order = 0 <= r < mix.late_payment and count - produced - len(late) >= 3  # new, paid, shipped

        # a new order, with independent chances of each feature the later stages care about
        kw: dict = {}
        platform = rng.choices(names, weights)[0]
        if late_order and "PENDING_PAYMENT" not in supported_states(platform):
            platform = rng.choice([n for n in names if "PENDING_PAYMENT" in supported_states(n)])
        if rng.random() < mix.high_value:
            platform = rng.choices(cn_names, cn_weights)[0] if not late_order else platform
            kw["amount_minor"] = rng.randint(500_100, 3_000_000)
        if rng.random() < mix.remote:
            platform = platform if platform in _CN_PLATFORMS or late_order else rng.choices(cn_names, cn_weights)[0]
            kw["province"] = rng.choice(REMOTE_PROVINCES) if platform in _CN_PLATFORMS else None
            if kw["province"] is None:
                del kw["province"]
        if "province" not in kw and rng.random() < mix.cross_border and not late_order:
            platform = rng.choice(("SHOPIFY", "SHOPEE", "TMALL"))
            kw["country"] = rng.choice(("US", "SG", "MY", "HK", "GB") if platform != "SHOPEE" else ("MY", "TH", "PH"))
        if burst_left == 0 and rng.random() < mix.ip_burst:
            burst_ip, burst_left = factory._ip(), mix.burst_size
        if burst_left:
            kw["ip"] = burst_ip
            burst_left -= 1
        if rng.random() < mix.gift_card:
            kw["gift_card"] = True
        if rng.random() < mix.note_flags:
            kw["note"] = rng.choice(FLAG_NOTES)
        elif rng.random() < 0.05:
            kw["note"] = rng.choice(PLAIN_NOTES)
        if rng.random() < 0.02:
            kw["custom"] = True
        if "PENDING_PAYMENT" in supported_states(platform) and rng.random() < 0.08:
            kw["status"] = "PENDING_PAYMENT"
        if late_order:
            kw["status"] = "PENDING_PAYMENT"
        ghost = rng.random() < mix.ghost
        payload = factory.order(platform, **kw)
        if ghost:
            spec = SPECS[platform]
            _put(payload, spec.order_id, f"{_lookup(payload, spec.order_id)}@fq")  # the seeds' '@' ghost order
        oid = expected_order_id(platform, payload)
        key = str(_lookup(payload, SPECS[platform].order_id)).encode()
        entry = [platform, payload, oid, key, [], late_order]
        history.append(entry)
        produced += 1
        yield RawMessage(platform, key, factory.to_bytes(payload), "new", oid, "canonical",
                         status=kw.get("status", "PAID"))
        if late_order:
            # written now, sent last: on a shadow of the order, so main-phase redeliveries repeat
            # only what was sent by then (the unpaid version)
            shadow = [platform, payload, oid, key, [], True]
            late.append(version(shadow, "PAID", "late_payment", after_s=rng.randint(60, 600), phase="late"))
            if rng.random() < 0.5:
                late.append(version(shadow, "SHIPPED", "ship", after_s=rng.randint(200, 3600), phase="late"))
    yield from late


def _pick(rng: random.Random, history: list[list], wanted, frozen_too: bool = False):
    """A random earlier order (a few tries) that is `wanted` (and not frozen, unless frozen_too)."""
    for _ in range(4):
        entry = rng.choice(history)
        if (frozen_too or not entry[5]) and wanted(entry):
            return entry
    return None


def _suspect(rng: random.Random, history: list[list], version, room: int = 2) -> list[RawMessage]:
    """An update the default transition rules (pipeline/domain/transitions.yaml) must flag, chosen
    by what the order's platform can say; the order is frozen afterwards (a later update would be
    judged against the state it was left in, not the suspect one)."""
    entry = _pick(rng, history, lambda e: standard_status(e[0], e[1]) != "CANCELLED")
    if entry is None:
        return []
    platform, state = entry[0], standard_status(entry[0], entry[1])
    supported = supported_states(platform)
    made: list[RawMessage] = []
    if state in SHIPPED_STATES:
        made.append(version(entry, "PAID", "suspect", rule="backwards"))
    elif state == "PAID" and "PACKED" in supported and room >= 2:
        # packed, then "shipped" sooner than the 3-minute window
        made.append(version(entry, "PACKED", "update", after_s=rng.randint(300, 1800)))
        made.append(version(entry, "SHIPPED", "suspect", after_s=rng.randint(5, 170), rule="too_fast"))
    elif state == "PAID" and ({"DELIVERED", "COMPLETED"} & supported):
        made.append(version(entry, "DELIVERED" if "DELIVERED" in supported else "COMPLETED", "suspect",
                            rule="illegal_skip"))
    elif state == "PENDING_PAYMENT" and "SHIPPED" in supported:
        made.append(version(entry, "SHIPPED", "suspect", rule="illegal_skip"))
    else:
        return []
    entry[5] = True
    return made


def _branches(platform: str, state: str) -> list[str]:
    """Next states this platform can express: progress first, then cancellation."""
    supported = supported_states(platform)
    out = []
    for alternatives in _NEXT.get(state, ()):
        usable = [s for s in alternatives if s in supported]
        if usable:
            out.append(usable[0])
    return out


def _next_state(rng: random.Random, platform: str, state: str) -> str:
    branches = _branches(platform, state)
    # most orders progress; some are cancelled
    return branches[0] if len(branches) == 1 or rng.random() < 0.8 else rng.choice(branches[1:])


def _updatable(rng: random.Random, history: list[list]):
    """A random earlier order that still has a next state on its platform (a few tries)."""
    for _ in range(4):
        entry = rng.choice(history)
        if not entry[5] and _branches(entry[0], standard_status(entry[0], entry[1])):
            return entry
    return None
