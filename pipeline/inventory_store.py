"""Inventory in Redis: stock per (warehouse, SKU) and atomic, idempotent order reservations.

Seed 002's model, one hash per (warehouse, SKU):

    available = total - locked - presale - reserved

`total`, `locked` and `presale` belong to the warehouse system (stock topic: snapshots and
deltas); `reserved` belongs to this pipeline (reserve / release) and a snapshot never
touches it. `available` can go below 0 when the warehouse reports less stock than is already
reserved: that is reported as is (an oversell the warehouse caused), never hidden.

Reserving an order is ONE Lua script, so all lines are reserved or none, and two workers
can never both take the last unit. The order record (`<prefix>:order:<order_id>`) makes it
idempotent: while it exists, reserving the same order again changes nothing and answers
"duplicate" with the original allocation; after a release it stays as a tombstone and a late
redelivered reserve answers "released" without reserving again.

Outcomes of `reserve`:
- "reserved"      units reserved now; `allocations` says where.
- "out_of_stock"  nothing reserved and NOTHING RECORDED: a retry after a restock may succeed
                  (the agent must still emit an explicit exception event for it).
- "backorder"     policy "backorder" only: nothing reserved, the backorder is recorded (so a
                  replay answers "duplicate"); `short` says what is missing.
- "duplicate"     the order already has a record; `allocations` are the recorded ones and
                  `original_outcome` is "reserved" or "backorder".
- "released"      the order was released (cancel, refund, risk reject, time-out) or released
                  before it was ever reserved; nothing is reserved, `allocations` is empty.

Time-outs: a reservation holds its units for `reservation_ttl_s`; `release_expired()` (called
periodically by the agent) releases the overdue ones with reason "timeout". The record key
itself lives RECORD_GRACE_S longer so the sweeper always finds what to give back, and the
tombstone lives as long, which covers the pipeline's 48 h replay/idempotency window.

Returns (refunds, seed 002): `return_to_stock` puts a refund's returned goods back on the shelf
when the warehouse receives them: `total` grows by the units (counted in `returned` too), once
per refund id, whatever the redeliveries (a permanent `<prefix>:returned:<refund_id>` record).

Redis errors (ConnectionError, TimeoutError, ResponseError ...) are raised as is: every write
here is a single atomic script or MULTI, so retrying a failed call is safe (a reserve that did
run answers "duplicate" on retry).

One implementation: `AsyncInventoryStore`, over redis.asyncio, is the store; the worker uses
it, and its code is plain awaits with nothing in between (the hot path, `reserve_many`, is one
script call per batch). `InventoryStore` is the same API, blocking, for tools, benchmarks and
tests: its methods are generated from the async class and run each call to completion on the
store's own event loop, so no method is written twice. Chosen over a sans-IO core (every
operation a plan of Redis calls, two drivers executing it) because that would make the
worker's code the indirect one, and over a sync core because the worker cannot block; the
blocking callers pay one run_until_complete per call, which none of them notice.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import orjson
import redis.asyncio

from pipeline.contracts.stock import StockUpdate, parse_stock_event
from pipeline.domain.channels import channel_events, should_pause
from pipeline.domain.warehouse import FallbackPolicy

RESERVED, OUT_OF_STOCK, BACKORDER, DUPLICATE, RELEASED = (
    "reserved", "out_of_stock", "backorder", "duplicate", "released")
RECORD_GRACE_S = 24 * 3600
STOCK_FIELDS = ("total", "locked", "presale", "reserved")

# KEYS[1] order record, KEYS[2] deadlines zset, KEYS[3..] stock hashes, candidate-major:
#   key(c, l) = KEYS[2 + (c-1)*nlines + l]
# ARGV: order_id, policy, now_ms, record_ttl_s, deadline_ms, nlines, ncands,
#       sku_1..sku_n, qty_1..qty_n, wh_1..wh_m
RESERVE_FUNCTION = r"""
local function reserve(KEYS, ARGV)
local existing = redis.call('GET', KEYS[1])
if existing then return {'existing', existing} end
local order_id, policy = ARGV[1], ARGV[2]
local now_ms, ttl, deadline = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local nl, nc = tonumber(ARGV[6]), tonumber(ARGV[7])
local skus, qtys, whs, lines = {}, {}, {}, {}
for l = 1, nl do
  skus[l] = ARGV[7 + l]; qtys[l] = tonumber(ARGV[7 + nl + l]); lines[l] = {skus[l], qtys[l]}
end
for c = 1, nc do whs[c] = ARGV[7 + 2 * nl + c] end
local function key(c, l) return KEYS[2 + (c - 1) * nl + l] end

local avail = {}
for c = 1, nc do
  avail[c] = {}
  for l = 1, nl do
    local v = redis.call('HMGET', key(c, l), 'total', 'locked', 'presale', 'reserved')
    avail[c][l] = (tonumber(v[1]) or 0) - (tonumber(v[2]) or 0) - (tonumber(v[3]) or 0) - (tonumber(v[4]) or 0)
  end
end

-- 1. the whole order from the first candidate (score order) that has every line
local allocs, single = {}, false
for c = 1, nc do
  local ok = true
  for l = 1, nl do if avail[c][l] < qtys[l] then ok = false; break end end
  if ok then
    single = whs[c]
    for l = 1, nl do allocs[#allocs + 1] = {c, l, qtys[l]} end
    break
  end
end

if not single then
  local short, missing = {}, false
  if policy == 'split' then
    -- 2. each line from the candidates in order; still all or nothing for the order
    for l = 1, nl do
      local need = qtys[l]
      for c = 1, nc do
        if need <= 0 then break end
        local take = math.min(need, math.max(0, avail[c][l]))
        if take > 0 then allocs[#allocs + 1] = {c, l, take}; need = need - take end
      end
      if need > 0 then short[skus[l]] = need; missing = true end
    end
  else
    -- the candidate that came closest explains what is missing
    local best, best_missing = nil, nil
    for c = 1, nc do
      local m = 0
      for l = 1, nl do m = m + math.max(0, qtys[l] - math.max(0, avail[c][l])) end
      if best_missing == nil or m < best_missing then best, best_missing = c, m end
    end
    for l = 1, nl do
      local have = 0
      if best then have = math.max(0, avail[best][l]) end
      if qtys[l] > have then short[skus[l]] = qtys[l] - have end
    end
    missing = true
  end
  if missing then
    local rec = {order_id = order_id, policy = policy, short = short, lines = lines,
                 allocations = {}, warehouse = false, at_ms = now_ms}
    if policy == 'backorder' then
      rec.state = 'backorder'
      local enc = cjson.encode(rec)
      redis.call('SET', KEYS[1], enc, 'EX', ttl)
      return {'backorder', enc}
    end
    rec.state = 'out_of_stock'
    return {'out_of_stock', cjson.encode(rec)}
  end
end

local out = {}
for i, a in ipairs(allocs) do
  redis.call('HINCRBY', key(a[1], a[2]), 'reserved', a[3])
  out[i] = {whs[a[1]], skus[a[2]], a[3]}
end
local rec = {order_id = order_id, policy = policy, state = 'reserved', allocations = out, short = {},
             lines = lines, warehouse = single, at_ms = now_ms, deadline_ms = deadline}
local enc = cjson.encode(rec)
redis.call('SET', KEYS[1], enc, 'EX', ttl)
redis.call('ZADD', KEYS[2], deadline, order_id)
return {'reserved', enc}
end
"""
RESERVE_LUA = RESERVE_FUNCTION + "return reserve(KEYS, ARGV)\n"
# Many reservations in one call, each exactly as RESERVE_LUA would make it (the script runs whole,
# so each stays atomic). ARGV[1] = JSON [[keys, args], ...], one pair per order, every value a
# string as ARGV would hold it: one argument instead of thousands for redis-py to pack (the keys
# are not declared to Redis, as in LEVELS_LUA: a single Redis, not a cluster).
# Returns (status, record) per order, flat.
RESERVE_MANY_LUA = RESERVE_FUNCTION + r"""
local out = {}
for _, call in ipairs(cjson.decode(ARGV[1])) do
  local r = reserve(call[1], call[2])
  out[#out + 1] = r[1]
  out[#out + 1] = r[2]
end
return out
"""


# KEYS: the warehouse set of each SKU. ARGV: key prefix, then the SKUs. One call reads every
# warehouse's level of every SKU (stock hash keys are derived here: a single Redis, not a cluster).
# Returns, per SKU: number of warehouses, then (warehouse, total, locked, presale, reserved) each.
LEVELS_LUA = r"""
local out = {}
for i, set in ipairs(KEYS) do
  local whs = redis.call('SMEMBERS', set)
  table.sort(whs)
  out[#out + 1] = #whs
  for _, wh in ipairs(whs) do
    local v = redis.call('HMGET', ARGV[1] .. ':stock:' .. wh .. ':' .. ARGV[1 + i], 'total', 'locked', 'presale', 'reserved')
    out[#out + 1] = wh
    for f = 1, 4 do out[#out + 1] = v[f] or false end
  end
end
return out
"""

# KEYS[1] order record, KEYS[2] deadlines zset, KEYS[2+i] stock hash of allocation i (as read
# by the caller). ARGV: order_id, reason, now_ms, tombstone_ttl_s, n, wh_1, sku_1, ..., wh_n, sku_n
RELEASE_LUA = r"""
local raw = redis.call('GET', KEYS[1])
local n = tonumber(ARGV[5])
if not raw then
  if n ~= 0 then return {'mismatch', ''} end
  -- released before it was reserved (cancel overtook the order): block a late reserve
  local tomb = cjson.encode({order_id = ARGV[1], state = 'released', previous_state = 'absent',
                             allocations = {}, reason = ARGV[2], released_at_ms = tonumber(ARGV[3]),
                             released_units = 0})
  redis.call('SET', KEYS[1], tomb, 'EX', tonumber(ARGV[4]))
  return {'absent', tomb}
end
local rec = cjson.decode(raw)
if rec.state == 'released' then return {'already', raw} end
local allocs = rec.allocations
if #allocs ~= n then return {'mismatch', raw} end
for i, a in ipairs(allocs) do
  if a[1] ~= ARGV[4 + 2 * i] or a[2] ~= ARGV[5 + 2 * i] then return {'mismatch', raw} end
end
local units = 0
for i, a in ipairs(allocs) do
  redis.call('HINCRBY', KEYS[2 + i], 'reserved', -a[3])
  units = units + a[3]
end
rec.previous_state = rec.state
rec.state = 'released'
rec.reason = ARGV[2]
rec.released_at_ms = tonumber(ARGV[3])
rec.released_units = units
local enc = cjson.encode(rec)
redis.call('SET', KEYS[1], enc, 'EX', tonumber(ARGV[4]))
redis.call('ZREM', KEYS[2], ARGV[1])
return {'released', enc}
"""


# Returned goods back in stock, once per refund. KEYS[1] the refund's return record, KEYS[1+i] the
# stock hash of line i, KEYS[1+n+i] the warehouse set of line i's SKU.
# ARGV: refund_id, order_id, now_ms, n, wh_1, sku_1, qty_1, ..., wh_n, sku_n, qty_n
# `total` grows by the units that came back (they are on the shelf again) and `returned` counts
# them; `reserved` is not touched. The record stays (no expiry): a late or repeated receipt of the
# same refund never creates stock twice.
RESTOCK_LUA = r"""
local existing = redis.call('GET', KEYS[1])
if existing then return {'duplicate', existing} end
local n = tonumber(ARGV[4])
local lines = {}
for i = 1, n do
  local wh, sku, q = ARGV[2 + 3 * i], ARGV[3 + 3 * i], tonumber(ARGV[4 + 3 * i])
  redis.call('HINCRBY', KEYS[1 + i], 'total', q)
  redis.call('HINCRBY', KEYS[1 + i], 'returned', q)
  redis.call('SADD', KEYS[1 + n + i], wh)
  lines[i] = {wh, sku, q}
end
local rec = cjson.encode({refund_id = ARGV[1], order_id = ARGV[2], lines = lines, at_ms = tonumber(ARGV[3])})
redis.call('SET', KEYS[1], rec)
return {'restocked', rec}
"""


Allocation = tuple[str, str, int]  # (warehouse, sku, qty)


@dataclass(frozen=True)
class Reservation:
    order_id: str
    outcome: str
    allocations: list[Allocation] = field(default_factory=list)
    short: dict[str, int] = field(default_factory=dict)
    warehouse: str | None = None            # the one warehouse, unless the order was split
    original_outcome: str | None = None     # for "duplicate"/"released": what the record says

    @property
    def units(self) -> int:
        return sum(q for _, _, q in self.allocations)

    @property
    def reserved_now(self) -> bool:
        return self.outcome == RESERVED


@dataclass(frozen=True)
class Release:
    released: bool                           # True only for the call that gave units back
    units: int = 0
    allocations: list[Allocation] = field(default_factory=list)


@dataclass(frozen=True)
class Restock:
    restocked: bool                          # True only for the call that put the units back
    lines: list[Allocation] = field(default_factory=list)   # (warehouse, sku, qty) put back, now or before

    @property
    def units(self) -> int:
        return sum(q for _, _, q in self.lines)


class ReserveRequest(NamedTuple):
    order_id: str
    lines: Sequence[tuple[str, int]]
    candidates: Sequence[str]
    policy: str = "next"


@dataclass(frozen=True)
class StockLevel:
    total: int = 0
    locked: int = 0
    presale: int = 0
    reserved: int = 0

    @property
    def available(self) -> int:
        return self.total - self.locked - self.presale - self.reserved


# ---------------------------------------------------------------- pure helpers (shared)

def _text(value) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def _int(value) -> int:
    return int(_text(value)) if value is not None else 0


def normalize_lines(lines: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Sum lines of the same SKU (first-seen order); quantities must be positive ints."""
    merged: dict[str, int] = {}
    for line in lines:
        try:
            sku, qty = line
        except (TypeError, ValueError):
            raise ValueError(f"a line must be (sku, qty), got {line!r}") from None
        if not isinstance(sku, str) or not sku:
            raise ValueError(f"sku must be a non-empty string, got {sku!r}")
        if isinstance(qty, bool) or not isinstance(qty, int) or qty <= 0:
            raise ValueError(f"quantity of {sku!r} must be a positive int, got {qty!r}")
        merged[sku] = merged.get(sku, 0) + qty
    if not merged:
        raise ValueError("an order needs at least one line")
    return list(merged.items())


def _check_warehouse(warehouse: str) -> str:
    if not isinstance(warehouse, str) or not warehouse or ":" in warehouse:
        raise ValueError(f"warehouse id must be a non-empty string without ':', got {warehouse!r}")
    return warehouse


def _check_policy(policy) -> str:
    try:
        return FallbackPolicy(policy).value
    except ValueError:
        raise ValueError(f"unknown fallback policy {policy!r}; one of "
                         f"{[p.value for p in FallbackPolicy]}") from None


class _Keys:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.deadlines = f"{prefix}:deadlines"

    def stock(self, warehouse: str, sku: str) -> str:
        return f"{self.prefix}:stock:{warehouse}:{sku}"

    def warehouses(self, sku: str) -> str:
        return f"{self.prefix}:whs:{sku}"

    def order(self, order_id: str) -> str:
        return f"{self.prefix}:order:{order_id}"

    def paused(self, sku: str) -> str:
        return f"{self.prefix}:paused:{sku}"

    def returned(self, refund_id: str) -> str:
        return f"{self.prefix}:returned:{refund_id}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _record_allocations(record: Mapping) -> list[Allocation]:
    allocs = record.get("allocations") or []   # cjson writes an empty list as {}
    return [(str(w), str(s), int(q)) for w, s, q in allocs] if isinstance(allocs, list) else []


def _record_short(record: Mapping) -> dict[str, int]:
    short = record.get("short") or {}
    return {str(k): int(v) for k, v in short.items()} if isinstance(short, Mapping) else {}


def _decode_record(raw) -> dict | None:
    return json.loads(_text(raw)) if raw is not None else None


def _level(values) -> StockLevel:
    return StockLevel(*(_int(v) for v in values))


def _parse_reserve(order_id: str, result) -> Reservation:
    """A Reservation from RESERVE_LUA's (status, record)."""
    status, raw = _text(result[0]), _text(result[1])
    record = json.loads(raw)
    allocations = _record_allocations(record)
    warehouse = record.get("warehouse") or None
    if status == "existing":
        state = record.get("state")
        if state == RELEASED:
            return Reservation(order_id, RELEASED, [], {}, None, original_outcome=RELEASED)
        return Reservation(order_id, DUPLICATE, allocations, _record_short(record), warehouse,
                           original_outcome=state)
    return Reservation(order_id, status, allocations, _record_short(record), warehouse)


def _parse_release(result) -> Release | None:
    """A Release from RELEASE_LUA's (status, record); None: the record changed between read and
    script (a reserve raced us), read again."""
    status, raw = _text(result[0]), _text(result[1])
    if status == "mismatch":
        return None
    if status == "released":
        allocs = _record_allocations(json.loads(raw))
        return Release(True, sum(q for _, _, q in allocs), allocs)
    return Release(False, 0, [])


def depth_over(available_by_sku: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Per warehouse, the smallest available over the SKUs (a warehouse missing a SKU has 0)."""
    whs = sorted({w for by_wh in available_by_sku.values() for w in by_wh})
    return {w: max(0, min(by_wh.get(w, 0) for by_wh in available_by_sku.values())) for w in whs}


_RELEASE_ATTEMPTS = 5


class AsyncInventoryStore:
    """The store, over `redis.asyncio.Redis` (decode_responses on or off): the one implementation."""

    def __init__(self, redis_client: redis.asyncio.Redis, prefix: str = "inv", reservation_ttl_s: int = 172800):
        if not prefix:
            raise ValueError("prefix must not be empty")
        if reservation_ttl_s <= 0:
            raise ValueError("reservation_ttl_s must be positive")
        self.redis = redis_client
        self.keys = _Keys(prefix)
        self.reservation_ttl_s = int(reservation_ttl_s)
        self.record_ttl_s = self.reservation_ttl_s + RECORD_GRACE_S
        self._reserve = redis_client.register_script(RESERVE_LUA)
        self._reserve_many = redis_client.register_script(RESERVE_MANY_LUA)
        self._release = redis_client.register_script(RELEASE_LUA)
        self._levels = redis_client.register_script(LEVELS_LUA)
        self._restock = redis_client.register_script(RESTOCK_LUA)

    # ------------------------------------------------------------ stock
    async def apply_snapshot(self, warehouse: str, sku: str, total: int, locked: int = 0, presale: int = 0) -> int:
        """Overwrite the warehouse's figures (never `reserved`); returns the new available."""
        return await self._apply(parse_stock_event({"type": "snapshot", "warehouse": warehouse, "sku": sku,
                                                    "total": total, "locked": locked, "presale": presale}))

    async def apply_delta(self, warehouse: str, sku: str, total: int = 0, locked: int = 0, presale: int = 0) -> int:
        """Add to the warehouse's figures; returns the new available."""
        return await self._apply(parse_stock_event({"type": "delta", "warehouse": warehouse, "sku": sku,
                                                    "total": total, "locked": locked, "presale": presale}))

    async def apply_stock_event(self, event) -> int:
        """Apply one stock-topic message (dict or JSON); StockEventError if invalid."""
        return await self._apply(parse_stock_event(event))

    async def _apply(self, u: StockUpdate) -> int:
        key = self.keys.stock(u.warehouse, u.sku)
        async with self.redis.pipeline(transaction=True) as pipe:
            if u.kind == "snapshot":
                pipe.hset(key, mapping={"total": u.total, "locked": u.locked, "presale": u.presale})
            else:
                for name in ("total", "locked", "presale"):
                    pipe.hincrby(key, name, getattr(u, name))
            pipe.sadd(self.keys.warehouses(u.sku), u.warehouse)
            pipe.hmget(key, *STOCK_FIELDS)
            results = await pipe.execute()
        return _level(results[-1]).available

    async def stock(self, warehouse: str, sku: str) -> StockLevel:
        return _level(await self.redis.hmget(self.keys.stock(warehouse, sku), *STOCK_FIELDS))

    async def available(self, warehouse: str, sku: str) -> int:
        """Raw available units; negative when the warehouse reported less than is reserved."""
        return (await self.stock(warehouse, sku)).available

    async def stock_by_warehouse(self, sku: str) -> dict[str, StockLevel]:
        whs = sorted(_text(w) for w in await self.redis.smembers(self.keys.warehouses(sku)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for w in whs:
                pipe.hmget(self.keys.stock(w, sku), *STOCK_FIELDS)
            values = await pipe.execute()
        return {w: _level(v) for w, v in zip(whs, values)}

    async def stock_levels(self, skus: Iterable[str]) -> dict[str, dict[str, StockLevel]]:
        """Every warehouse's level for many SKUs in one script call (the batch agents' read)."""
        skus = list(dict.fromkeys(skus))
        if not skus:
            return {}
        flat = await self._levels(keys=[self.keys.warehouses(sku) for sku in skus], args=[self.keys.prefix, *skus])
        out: dict[str, dict[str, StockLevel]] = {}
        at = 0
        for sku in skus:
            count, at = int(flat[at]), at + 1
            out[sku] = {}
            for _ in range(count):
                out[sku][_text(flat[at])] = _level(flat[at + 1:at + 5])
                at += 5
        return out

    async def available_by_warehouse(self, sku: str) -> dict[str, int]:
        return {w: lvl.available for w, lvl in (await self.stock_by_warehouse(sku)).items()}

    async def total_available(self, sku: str) -> int:
        """Sellable units over all warehouses (a negative warehouse does not cancel a positive one)."""
        return sum(max(0, a) for a in (await self.available_by_warehouse(sku)).values())

    async def warehouses_for(self, skus: Iterable[str]) -> list[str]:
        """Every warehouse that has reported stock for any of `skus`, sorted."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sku in skus:
                pipe.smembers(self.keys.warehouses(sku))
            results = await pipe.execute()
        return sorted({_text(w) for members in results for w in members})

    async def depth_for(self, skus: Iterable[str]) -> dict[str, int]:
        """Per warehouse, the smallest available over `skus` (the depth the warehouse score wants)."""
        skus = list(dict.fromkeys(skus))
        return depth_over({sku: await self.available_by_warehouse(sku) for sku in skus})

    # ------------------------------------------------------------ reservations
    def _reserve_call(self, order_id: str, lines, candidates, policy, now_ms: int | None):
        """RESERVE_LUA's keys and arguments for one order (validated here, before Redis)."""
        if not isinstance(order_id, str) or not order_id:
            raise ValueError(f"order_id must be a non-empty string, got {order_id!r}")
        merged = normalize_lines(lines)
        cands = list(dict.fromkeys(_check_warehouse(w) for w in candidates))
        policy = _check_policy(policy)
        now = _now_ms() if now_ms is None else int(now_ms)
        keys = [self.keys.order(order_id), self.keys.deadlines]
        keys += [self.keys.stock(w, sku) for w in cands for sku, _ in merged]
        args = [order_id, policy, now, self.record_ttl_s, now + self.reservation_ttl_s * 1000,
                len(merged), len(cands), *(s for s, _ in merged), *(q for _, q in merged), *cands]
        return keys, args

    async def reserve(self, order_id: str, lines: list[tuple[str, int]], candidates: list[str],
                      policy: str = "next", now_ms: int | None = None) -> Reservation:
        keys, args = self._reserve_call(order_id, lines, candidates, policy, now_ms)
        return _parse_reserve(order_id, await self._reserve(keys=keys, args=args))

    async def reserve_many(self, requests: Iterable[ReserveRequest | tuple],
                           now_ms: int | None = None) -> list[Reservation]:
        """One script call for many orders, each reservation as atomic as `reserve`'s."""
        calls = [(req[0], self._reserve_call(*ReserveRequest(*req), now_ms)) for req in requests]
        if not calls:
            return []
        # RESERVE_MANY_LUA's one argument: [[keys, args], ...], every value a string
        batch = orjson.dumps([[k, [a if type(a) is str else str(a) for a in args]] for _, (k, args) in calls])
        flat = await self._reserve_many(args=[batch])
        return [_parse_reserve(oid, flat[2 * i:2 * i + 2]) for i, (oid, _) in enumerate(calls)]

    async def release(self, order_id: str, reason: str, now_ms: int | None = None) -> Release:
        """Give the order's units back; idempotent; leaves a tombstone against late reserves."""
        for _ in range(_RELEASE_ATTEMPTS):
            record = _decode_record(await self.redis.get(self.keys.order(order_id)))
            allocs = _record_allocations(record) if record and record.get("state") != RELEASED else []
            keys = [self.keys.order(order_id), self.keys.deadlines]
            keys += [self.keys.stock(w, s) for w, s, _ in allocs]
            args = [order_id, str(reason), _now_ms() if now_ms is None else int(now_ms), self.record_ttl_s,
                    len(allocs)]
            for w, s, _ in allocs:
                args += [w, s]
            result = _parse_release(await self._release(keys=keys, args=args))
            if result is not None:
                return result
        raise RuntimeError(f"release of {order_id!r} kept racing with reserves")

    async def reservation(self, order_id: str) -> dict | None:
        """The stored record (state reserved / backorder / released), or None."""
        return _decode_record(await self.redis.get(self.keys.order(order_id)))

    async def expired(self, now_ms: int | None = None, limit: int = 100) -> list[str]:
        now = _now_ms() if now_ms is None else int(now_ms)
        members = await self.redis.zrangebyscore(self.keys.deadlines, "-inf", now, start=0, num=limit)
        return [_text(m) for m in members]

    async def settle(self, order_ids: Iterable[str]) -> int:
        """Paid orders keep their stock: take them off the time-out schedule (idempotent)."""
        order_ids = list(order_ids)
        if not order_ids:
            return 0
        return int(await self.redis.zrem(self.keys.deadlines, *order_ids))

    async def release_expired(self, now_ms: int | None = None, limit: int = 100) -> list[tuple[str, Release]]:
        """Release reservations held past their deadline (reason "timeout")."""
        return [(oid, await self.release(oid, "timeout", now_ms)) for oid in await self.expired(now_ms, limit)]

    # ------------------------------------------------------------ returns
    async def return_to_stock(self, refund_id: str, order_id: str, lines: Iterable[Allocation],
                              now_ms: int | None = None) -> Restock:
        """Put a refund's returned goods back on the shelf: `total` (and the `returned` count) of
        each (warehouse, sku) grows by its quantity, atomically and once per refund id; a repeated
        call answers restocked=False with the lines of the first."""
        if not isinstance(refund_id, str) or not refund_id:
            raise ValueError(f"refund_id must be a non-empty string, got {refund_id!r}")
        merged: dict[tuple[str, str], int] = {}
        for line in lines:
            try:
                warehouse, sku, qty = line
            except (TypeError, ValueError):
                raise ValueError(f"a returned line must be (warehouse, sku, qty), got {line!r}") from None
            _check_warehouse(warehouse)
            if not isinstance(sku, str) or not sku:
                raise ValueError(f"sku must be a non-empty string, got {sku!r}")
            if isinstance(qty, bool) or not isinstance(qty, int) or qty <= 0:
                raise ValueError(f"returned quantity of {sku!r} must be a positive int, got {qty!r}")
            merged[(warehouse, sku)] = merged.get((warehouse, sku), 0) + qty
        if not merged:
            raise ValueError("a return needs at least one line")
        keys = [self.keys.returned(refund_id)]
        keys += [self.keys.stock(w, sku) for w, sku in merged]
        keys += [self.keys.warehouses(sku) for _, sku in merged]
        args = [refund_id, order_id, _now_ms() if now_ms is None else int(now_ms), len(merged)]
        for (w, sku), qty in merged.items():
            args += [w, sku, qty]
        result = await self._restock(keys=keys, args=args)
        record = json.loads(_text(result[1]))
        return Restock(_text(result[0]) == "restocked", _record_allocations({"allocations": record.get("lines")}))

    async def returned_record(self, refund_id: str) -> dict | None:
        """What a refund put back in stock (refund_id, order_id, lines, at_ms), or None."""
        return _decode_record(await self.redis.get(self.keys.returned(refund_id)))

    async def returned_units(self, warehouse: str, sku: str) -> int:
        """Units returned into this (warehouse, sku) by refunds, ever."""
        return _int(await self.redis.hget(self.keys.stock(warehouse, sku), "returned"))

    # ------------------------------------------------------------ channels
    async def set_channel_paused(self, sku: str, paused: bool) -> bool:
        """True only for the caller whose call changed the state (SET NX / DEL are atomic)."""
        key = self.keys.paused(sku)
        if paused:
            return bool(await self.redis.set(key, _now_ms(), nx=True))
        return bool(await self.redis.delete(key))

    async def set_channels_paused(self, wanted: dict[str, bool]) -> dict[str, bool]:
        """Flip many pause flags in one round trip; returns, per SKU, whether this call changed it."""
        if not wanted:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for sku, paused in wanted.items():
                if paused:
                    pipe.set(self.keys.paused(sku), _now_ms(), nx=True)
                else:
                    pipe.delete(self.keys.paused(sku))
            results = await pipe.execute()
        return {sku: bool(r) for sku, r in zip(wanted, results)}

    async def is_channel_paused(self, sku: str) -> bool:
        return bool(await self.redis.exists(self.keys.paused(sku)))

    async def channel_update(self, sku: str, threshold: int, platforms: Iterable[str], primary: str,
                             now_ms: int | None = None, resume_margin: int = 0) -> list[dict]:
        """Pause/resume events for `sku` if its state must change and this caller changed it."""
        available = await self.total_available(sku)
        was_paused = await self.is_channel_paused(sku)
        paused = should_pause(available, threshold, was_paused, resume_margin)
        if paused == was_paused or not await self.set_channel_paused(sku, paused):
            return []
        return channel_events(sku, available, threshold, was_paused, platforms, primary,
                              _now_ms() if now_ms is None else now_ms, resume_margin)


class InventoryStore:
    """AsyncInventoryStore, blocking, for the tools and tests (never the worker).

    Every public coroutine method of AsyncInventoryStore is here under the same name and
    arguments (made below from the async class, not written again); each call runs to completion
    on this store's own event loop, so use one store from one thread at a time, outside any
    running event loop. `close()` (or `with`) closes the connections and the loop.
    """

    def __init__(self, redis_url: str, prefix: str = "inv", reservation_ttl_s: int = 172800):
        self.store = AsyncInventoryStore(redis.asyncio.Redis.from_url(redis_url), prefix, reservation_ttl_s)
        self.keys = self.store.keys
        self._loop = asyncio.new_event_loop()

    def _run(self, coroutine):
        try:
            return self._loop.run_until_complete(coroutine)
        except RuntimeError:  # e.g. called inside a running loop: the call never started
            coroutine.close()
            raise

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self.store.redis.aclose())
            self._loop.close()

    def __enter__(self) -> "InventoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _blocking(method):
    @functools.wraps(method)
    def call(self: InventoryStore, *args, **kwargs):
        return self._run(method(self.store, *args, **kwargs))
    return call


for _name, _method in list(vars(AsyncInventoryStore).items()):
    if not _name.startswith("_") and inspect.iscoroutinefunction(_method):
        setattr(InventoryStore, _name, _blocking(_method))
