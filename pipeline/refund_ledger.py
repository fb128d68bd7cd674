"""The refund money ledger in Redis: per order, what its refunds have committed against what the
buyer paid, so the refunded amount of an order never exceeds what was paid.

Refunds are keyed (and partitioned) by refund id, so two refunds of one order may be decided by
two workers at once: the cap is one Lua script per call, atomic in Redis. One hash per order
(`<prefix>:ledger:<order_id>`): `paid` and `currency` (from the first request that named the
order), `committed` (the sum of the live refunds' amounts, integer minor units) and a field
`r:<refund_id>` per refund (its amount; `x<amount>` once released). Both calls are idempotent
per refund id: committing twice counts once, releasing twice gives back once, and a released
refund is never committed again.
"""
from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio

from pipeline.domain.refunds import Money

# KEYS[1] the order's ledger. ARGV: refund_id, amount, order total (paid), currency
COMMIT_LUA = r"""
local h, field, amount = KEYS[1], 'r:' .. ARGV[1], tonumber(ARGV[2])
local seen = redis.call('HGET', h, field)
if seen then
  local status = 'duplicate'
  if string.sub(seen, 1, 1) == 'x' then status = 'released' end
  return {status, redis.call('HGET', h, 'committed'), redis.call('HGET', h, 'paid')}
end
if redis.call('HEXISTS', h, 'paid') == 0 then
  redis.call('HSET', h, 'paid', ARGV[3], 'currency', ARGV[4], 'committed', 0)
end
local paid, committed = tonumber(redis.call('HGET', h, 'paid')), tonumber(redis.call('HGET', h, 'committed'))
if redis.call('HGET', h, 'currency') ~= ARGV[4] then
  return {'currency', committed, paid, redis.call('HGET', h, 'currency')}
end
if committed + amount > paid then return {'exceeds', committed, paid} end
redis.call('HSET', h, field, amount)
redis.call('HINCRBY', h, 'committed', amount)
return {'committed', committed + amount, paid}
"""

# KEYS[1] the order's ledger. ARGV: refund_id
RELEASE_LUA = r"""
local h, field = KEYS[1], 'r:' .. ARGV[1]
local v = redis.call('HGET', h, field)
if not v then return {'absent', 0} end
if string.sub(v, 1, 1) == 'x' then return {'already', 0} end
redis.call('HINCRBY', h, 'committed', -tonumber(v))
redis.call('HSET', h, field, 'x' .. v)
return {'released', tonumber(v)}
"""


def _text(value) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


@dataclass(frozen=True)
class OrderRefunds:
    paid_minor: int
    committed_minor: int
    currency: str


class RefundLedger:
    def __init__(self, client: redis.asyncio.Redis, prefix: str = "refund") -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        self.redis = client
        self.prefix = prefix
        self._commit = client.register_script(COMMIT_LUA)
        self._release = client.register_script(RELEASE_LUA)

    def key(self, order_id: str) -> str:
        return f"{self.prefix}:ledger:{order_id}"

    async def commit(self, order_id: str, refund_id: str, amount_minor: int, order_total_minor: int,
                     currency: str) -> Money:
        """Count a refund's amount against its order; refused (ok False, with why) when the order's
        live refunds would then exceed what was paid."""
        for name, value in (("amount_minor", amount_minor), ("order_total_minor", order_total_minor)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer (minor units), got {value!r}")
        result = await self._commit(keys=[self.key(order_id)],
                                    args=[refund_id, amount_minor, order_total_minor, currency])
        status = _text(result[0])
        if status in ("committed", "duplicate"):
            return Money(True)
        committed, paid = int(_text(result[1])), int(_text(result[2]))
        if status == "released":
            return Money(False, f"refund {refund_id} was rejected or cancelled before: its amount stays freed")
        if status == "currency":
            return Money(False, f"order {order_id} is refunded in {_text(result[3])}, not {currency}")
        return Money(False, f"refunds of order {order_id} would reach {committed + amount_minor} {currency} minor, "
                            f"more than the {paid} paid ({committed} already committed)")

    async def release(self, order_id: str, refund_id: str) -> int:
        """Give a rejected or cancelled refund's amount back to its order; the amount released now
        (0 when it was released before or never committed)."""
        result = await self._release(keys=[self.key(order_id)], args=[refund_id])
        return int(_text(result[1])) if _text(result[0]) == "released" else 0

    async def order(self, order_id: str) -> OrderRefunds | None:
        values = await self.redis.hmget(self.key(order_id), "paid", "committed", "currency")
        if values[0] is None:
            return None
        return OrderRefunds(int(_text(values[0])), int(_text(values[1])), _text(values[2]))
