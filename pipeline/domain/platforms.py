"""Every sales platform's raw order shape, as data.

One `PlatformSpec` per platform says where each canonical field lives in that platform's JSON,
how its times and money are written and what its status codes mean. `normalize` reads these
specs (compiled once at import); the fake-order generator (`pipeline.devtools.fake_orders`)
renders payloads from the same specs. Adding a platform or a renamed field is an edit here, not
a new branch of code.

Field paths: "a.b" walks nested objects, a number ("fulfillments.0.tracking_number") an array's
item; "x|y" lists alternatives, first non-empty wins (the seeds' field table and the platforms'
APIs do not always agree on a name, e.g. JD consignee vs buyer_name). An empty path means the
platform does not send that field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import yaml

STANDARD_STATES = ("PENDING_PAYMENT", "PAID", "RISK_HOLD", "APPROVED", "ALLOCATED", "PICKING", "PACKED",
                   "SHIPPED", "IN_TRANSIT", "DELIVERED", "COMPLETED", "CANCELLED")


class TimeFormat(str, Enum):
    EPOCH_S = "epoch_s"            # 1731254400
    EPOCH_MS = "epoch_ms"          # 1731254400000
    CN_LOCAL = "cn_local"          # "2026-11-11 00:00:00", Asia/Shanghai wall time (UTC+8, no DST)
    ISO8601 = "iso8601"            # "2026-11-11T00:00:00+08:00", offset required


class MoneyFormat(str, Enum):
    YUAN_STR = "yuan_str"          # "123.45"
    FEN_INT = "fen_int"            # 12345 (integer minor units)
    FLOAT = "float"                # 123.45 (JSON number, major units)
    DECIMAL_STR = "decimal_str"    # "123.45" in the order's currency (Shopify)


# ISO 4217 minor-unit exponent; everything not listed has 2.
CURRENCY_EXPONENT: Mapping[str, int] = MappingProxyType({"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0,
                                                         "KWD": 3, "BHD": 3, "JOD": 3, "OMR": 3})


def currency_exponent(currency: str) -> int:
    return CURRENCY_EXPONENT.get(currency, 2)


@dataclass(frozen=True)
class LineSpec:
    items: str                     # path of the array of line items
    sku: str
    quantity: str
    unit_price: str
    title: str = ""
    gift_card: str = ""            # boolean field, where the platform marks gift cards itself


@dataclass(frozen=True)
class PlatformSpec:
    platform: str                  # Avro Platform symbol
    id_prefix: str                 # readable prefix of the global order id
    order_id: str
    alt_id: str                    # other reference used when order_id is unusable (ghost order)
    status: tuple[str, ...]        # one field, or several joined with "/" (e.g. Shopify financial/fulfillment)
    status_map: Mapping[str, str]  # platform code -> standard state
    created: str
    paid: str
    updated: str
    time_format: TimeFormat
    money_format: MoneyFormat
    total: str                     # what the buyer paid
    lines: LineSpec
    sla_hours: int                 # ship_by = (paid_at or created_at) + sla
    goods: str = ""                # empty: sum of the lines
    discount: str = ""
    coupon: str = ""
    shipping: str = ""
    currency: str = "CNY"          # fixed currency when currency_field is empty or absent
    currency_field: str = ""
    buyer_id: str = ""
    buyer_name: str = ""
    buyer_phone: str = ""
    ip: str = ""
    country_field: str = ""
    default_country: str = "CN"
    province: str = ""
    city: str = ""
    district: str = ""
    detail: str = ""
    postal_code: str = ""
    note: str = ""
    # the shipment: the courier as the platform names it (courier_names.yaml maps it to a carrier
    # code) and the waybill number; platforms send them with the shipped state
    courier: str = ""
    waybill: str = ""
    # fields the platform writes as JSON numbers rather than strings (the generator mimics this)
    numeric_fields: frozenset[str] = field(default_factory=frozenset)

    def codes_for(self, state: str) -> list[str]:
        """Platform codes meaning `state`, preferred first (dictionary order)."""
        return [code for code, std in self.status_map.items() if std == state]


def _frozen(mapping: dict[str, str]) -> Mapping[str, str]:
    unknown = set(mapping.values()) - set(STANDARD_STATES)
    if unknown:
        raise ValueError(f"status map uses non-standard states {unknown}")
    return MappingProxyType(dict(mapping))


# -- status dictionaries ----------------------------------------------------------------------------
# Order matters: the first code of a state is the one the generator writes.

TMALL_STATUS = _frozen({
    "WAIT_BUYER_PAY": "PENDING_PAYMENT",
    "TRADE_NO_CREATE_PAY": "PENDING_PAYMENT",
    "PAY_PENDING": "PENDING_PAYMENT",            # foreign card, payment being confirmed
    "WAIT_PRE_AUTH_CONFIRM": "PENDING_PAYMENT",
    "WAIT_SELLER_SEND_GOODS": "PAID",
    "PAID_FORBID_CONSIGN": "RISK_HOLD",          # paid but the platform forbids shipping for now
    "SELLER_CONSIGNED_PART": "SHIPPED",
    "WAIT_BUYER_CONFIRM_GOODS": "SHIPPED",
    "TRADE_BUYER_SIGNED": "DELIVERED",
    "TRADE_FINISHED": "COMPLETED",
    "TRADE_CLOSED": "CANCELLED",                 # includes closed after a full refund
    "TRADE_CLOSED_BY_TAOBAO": "CANCELLED",
})

JD_STATUS = _frozen({
    "NOT_PAY": "PENDING_PAYMENT",
    "WAIT_SELLER_STOCK_OUT": "PAID",
    "WAIT_SELLER_DELIVERY": "PAID",
    "LOCKED": "RISK_HOLD",
    "POP_ORDER_PAUSE": "RISK_HOLD",
    "WAIT_GOODS_RECEIVE_CONFIRM": "SHIPPED",
    "FINISHED_L": "COMPLETED",
    "TRADE_CANCELED": "CANCELLED",
})

# Pinduoduo: order_status (1 待发货, 2 已发货待签收, 3 已签收) / refund_status (1 无售后, 2 售后处理中,
# 3 退款中, 4 退款成功). A refund in progress may still be refused, so only 4 cancels the order.
_PDD_ORDER = {"1": "PAID", "2": "SHIPPED", "3": "DELIVERED"}
PINDUODUO_STATUS = _frozen(
    {f"{o}/{r}": "CANCELLED" for o in _PDD_ORDER for r in ("4",)}
    | {f"{o}/{r}": std for o, std in _PDD_ORDER.items() for r in ("1", "2", "3")}
)

DOUYIN_STATUS = _frozen({
    "1": "PENDING_PAYMENT",    # 待确认/待支付
    "2": "PAID",               # 备货中
    "105": "PAID",             # 已支付
    "101": "SHIPPED",          # 部分发货
    "3": "SHIPPED",            # 已发货
    "5": "COMPLETED",          # 已完成
    "4": "CANCELLED",          # 已取消
})

KUAISHOU_STATUS = _frozen({
    "10": "PENDING_PAYMENT",   # 待付款
    "30": "PAID",              # 已付款
    "40": "SHIPPED",           # 已发货
    "50": "DELIVERED",         # 已收货
    "70": "COMPLETED",         # 交易成功
    "80": "CANCELLED",         # 交易关闭
})

SHOPEE_STATUS = _frozen({
    "UNPAID": "PENDING_PAYMENT",
    "READY_TO_SHIP": "PAID",
    "IN_CANCEL": "RISK_HOLD",          # buyer asked to cancel: do not ship while it is decided
    "PROCESSED": "PACKED",             # shipping label arranged
    "RETRY_SHIP": "PACKED",
    "SHIPPED": "SHIPPED",
    "TO_CONFIRM_RECEIVE": "DELIVERED",
    "TO_RETURN": "DELIVERED",
    "COMPLETED": "COMPLETED",
    "CANCELLED": "CANCELLED",
})

# Shopify: financial_status / fulfillment_status ("null" when unfulfilled, as webhooks send it).
_SHOPIFY = {}
for _fin, _unfulfilled, _partial, _fulfilled in (
        ("pending", "PENDING_PAYMENT", None, None),
        ("partially_paid", "PENDING_PAYMENT", None, None),
        ("paid", "PAID", "SHIPPED", "SHIPPED"),
        ("authorized", "PAID", "SHIPPED", "SHIPPED"),
        ("partially_refunded", "PAID", "SHIPPED", "SHIPPED"),
        ("refunded", "CANCELLED", "CANCELLED", "CANCELLED"),
        ("voided", "CANCELLED", None, None)):
    for _ful, _std in (("null", _unfulfilled), ("unfulfilled", _unfulfilled), ("partial", _partial),
                       ("fulfilled", _fulfilled), ("restocked", "CANCELLED" if _fin == "refunded" else None)):
        if _std is not None:
            _SHOPIFY[f"{_fin}/{_ful}"] = _std
SHOPIFY_STATUS = _frozen(_SHOPIFY)


# -- platforms --------------------------------------------------------------------------------------

TMALL = PlatformSpec(
    platform="TMALL", id_prefix="TM",
    order_id="tid", alt_id="alipay_no",
    status=("status",), status_map=TMALL_STATUS,
    created="created", paid="gmt_payment|pay_time", updated="modified", time_format=TimeFormat.CN_LOCAL,
    money_format=MoneyFormat.YUAN_STR,
    total="payment", goods="total_fee", discount="discount_fee", coupon="coupon_fee", shipping="post_fee",
    lines=LineSpec(items="orders.order", sku="outer_sku_id", quantity="num", unit_price="price", title="title"),
    buyer_id="buyer_open_uid", buyer_name="receiver_name", buyer_phone="receiver_mobile", ip="buyer_ip",
    country_field="receiver_country", province="receiver_state", city="receiver_city",
    district="receiver_district", detail="receiver_address", postal_code="receiver_zip",
    note="buyer_message", sla_hours=72,
    courier="logistics_company", waybill="out_sid",
    numeric_fields=frozenset({"tid"}),
)

JD = PlatformSpec(
    platform="JD", id_prefix="JD",
    order_id="order_id", alt_id="trade_no",
    status=("order_state",), status_map=JD_STATUS,
    created="order_start_time", paid="pay_time", updated="modified", time_format=TimeFormat.CN_LOCAL,
    money_format=MoneyFormat.YUAN_STR,
    total="order_amount", goods="order_total_price", discount="seller_discount", coupon="coupon_amount",
    shipping="freight_price",
    lines=LineSpec(items="item_info_list", sku="outer_sku_id|sku_id", quantity="item_total",
                   unit_price="jd_price", title="sku_name"),
    buyer_id="pin", buyer_name="consignee_info.fullname|consignee|buyer_name",
    buyer_phone="consignee_info.mobile|mobile", ip="ip",
    province="consignee_info.province", city="consignee_info.city", district="consignee_info.county",
    detail="consignee_info.full_address", note="customer_remark", sla_hours=72,
    courier="carrier", waybill="waybill_code",
)

PINDUODUO = PlatformSpec(
    platform="PINDUODUO", id_prefix="PD",
    order_id="order_sn", alt_id="pay_no",
    status=("order_status", "refund_status"), status_map=PINDUODUO_STATUS,
    created="created_time", paid="pay_time", updated="updated_at", time_format=TimeFormat.CN_LOCAL,
    money_format=MoneyFormat.FEN_INT,
    total="pay_amount", goods="goods_amount", discount="seller_discount", coupon="platform_discount",
    shipping="postage",
    lines=LineSpec(items="item_list", sku="outer_id", quantity="goods_count", unit_price="goods_price",
                   title="goods_name"),
    buyer_name="receiver_name|consignee", buyer_phone="receiver_phone|mobile_no", ip="buyer_ip",
    province="province", city="city", district="town", detail="address", note="buyer_memo", sla_hours=48,
    courier="shipping_company", waybill="tracking_number",
    numeric_fields=frozenset({"order_status", "refund_status"}),
)

DOUYIN = PlatformSpec(
    platform="DOUYIN", id_prefix="DY",
    order_id="order_id", alt_id="external_reference_id",
    status=("order_status",), status_map=DOUYIN_STATUS,
    created="create_time", paid="pay_time", updated="update_time", time_format=TimeFormat.EPOCH_S,
    money_format=MoneyFormat.FEN_INT,
    total="order_amount", discount="promotion_amount", coupon="coupon_amount", shipping="post_amount",
    lines=LineSpec(items="sku_order_list", sku="out_sku_id|code", quantity="item_num",
                   unit_price="goods_price", title="product_name"),
    buyer_id="doudian_open_id", buyer_name="post_receiver|user_name", buyer_phone="post_tel|phone",
    ip="buyer_ip",
    province="post_addr.province.name", city="post_addr.city.name", district="post_addr.town.name",
    detail="post_addr.detail", note="buyer_words", sla_hours=48,
    courier="logistics_info.0.company_name", waybill="logistics_info.0.tracking_no",
    numeric_fields=frozenset({"order_status"}),
)

KUAISHOU = PlatformSpec(
    platform="KUAISHOU", id_prefix="KS",
    order_id="oid", alt_id="tradeNo",
    status=("status",), status_map=KUAISHOU_STATUS,
    created="createTime", paid="payTime", updated="updateTime", time_format=TimeFormat.EPOCH_MS,
    money_format=MoneyFormat.FEN_INT,
    total="totalFee", discount="discountFee", shipping="expressFee",
    lines=LineSpec(items="orderItemList", sku="skuNick|relSkuId", quantity="num", unit_price="price",
                   title="itemTitle"),
    buyer_id="buyerOpenId", buyer_name="addressInfo.consignee", buyer_phone="addressInfo.mobile",
    ip="buyerIp",
    province="addressInfo.province", city="addressInfo.city", district="addressInfo.district",
    detail="addressInfo.address", note="remark", sla_hours=48,
    courier="logisticsInfo.expressCompany", waybill="logisticsInfo.expressNo",
    numeric_fields=frozenset({"oid", "status"}),
)

SHOPEE = PlatformSpec(
    platform="SHOPEE", id_prefix="SP",
    order_id="order_sn", alt_id="booking_sn",
    status=("order_status",), status_map=SHOPEE_STATUS,
    created="create_time", paid="pay_time", updated="update_time", time_format=TimeFormat.EPOCH_S,
    money_format=MoneyFormat.FLOAT,
    total="total_amount", shipping="estimated_shipping_fee",
    currency="SGD", currency_field="currency",
    lines=LineSpec(items="item_list", sku="model_sku|item_sku", quantity="model_quantity_purchased",
                   unit_price="model_discounted_price", title="item_name"),
    buyer_id="buyer_user_id", buyer_name="recipient_address.name", buyer_phone="recipient_address.phone",
    ip="buyer_ip",
    country_field="region", default_country="SG",
    province="recipient_address.state", city="recipient_address.city",
    district="recipient_address.district", detail="recipient_address.full_address",
    postal_code="recipient_address.zipcode", note="message_to_seller|note_to_seller", sla_hours=72,
    courier="shipping_carrier", waybill="tracking_number",
    numeric_fields=frozenset({"buyer_user_id"}),
)

SHOPIFY = PlatformSpec(
    platform="SHOPIFY", id_prefix="SF",
    order_id="id", alt_id="order_number",
    status=("financial_status", "fulfillment_status"), status_map=SHOPIFY_STATUS,
    created="created_at", paid="processed_at", updated="updated_at", time_format=TimeFormat.ISO8601,
    money_format=MoneyFormat.DECIMAL_STR,
    total="total_price", goods="total_line_items_price", discount="total_discounts",
    shipping="total_shipping_price_set.shop_money.amount",
    currency="CNY", currency_field="currency",
    lines=LineSpec(items="line_items", sku="sku|variant_id", quantity="quantity", unit_price="price",
                   title="title", gift_card="gift_card"),
    buyer_id="customer.id", buyer_name="shipping_address.name", buyer_phone="shipping_address.phone|phone",
    ip="browser_ip",
    country_field="shipping_address.country_code", province="shipping_address.province",
    city="shipping_address.city", detail="shipping_address.address1", postal_code="shipping_address.zip",
    note="note", sla_hours=72,
    courier="fulfillments.0.tracking_company", waybill="fulfillments.0.tracking_number",
    numeric_fields=frozenset({"id", "order_number", "customer.id", "variant_id"}),
)

SPECS: Mapping[str, PlatformSpec] = MappingProxyType(
    {s.platform: s for s in (TMALL, JD, PINDUODUO, DOUYIN, KUAISHOU, SHOPEE, SHOPIFY)})


# -- couriers ---------------------------------------------------------------------------------------

COURIER_NAMES_FILE = Path(__file__).with_name("courier_names.yaml")


def _fold(name: str) -> str:
    return name.strip().casefold()


def parse_courier_names(text: str) -> Mapping[str, str]:
    """courier_names.yaml -> {folded courier name: carrier code}; a name two carriers claim is refused."""
    names: dict[str, str] = {}
    for code, aliases in (yaml.safe_load(text) or {}).items():
        for alias in aliases or ():
            if names.setdefault(_fold(str(alias)), str(code)) != str(code):
                raise ValueError(f"courier name {alias!r} is listed under {names[_fold(str(alias))]} and {code}")
    return MappingProxyType(names)


COURIER_NAMES = parse_courier_names(COURIER_NAMES_FILE.read_text(encoding="utf-8"))


def carrier_code(courier: str) -> str:
    """The logistics code table's carrier code for a platform's courier name; a name the table
    does not list is returned as sent (never guessed)."""
    return COURIER_NAMES.get(_fold(courier), courier)
