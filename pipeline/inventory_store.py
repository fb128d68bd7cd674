"""Inventory in Redis: stock per (warehouse, SKU) and atomic, idempotent order reservations,
their time-outs, late payments and shipments.

Seed 002's model, one hash per (warehouse, SKU):

    available = total - locked - presale - reserved

`total`, `locked` and `presale` belong to the warehouse system (stock topic: snapshots and
deltas); `reserved` belongs to this pipeline (reserve / release) and a snapshot never
touches it. `available` can go below 0 when the warehouse reports less stock than is already
reserved: that is reported as is (an oversell the warehouse caused), never hidden.

Shipments. A shipped order's units leave the building: `total` and `reserved` go down by the
same amounts in one script, so `available` does not move (it was already not available), and
the hash's own `shipped` field counts the units this pipeline shipped out of it. Shipped units
are recorded that way, rather than kept inside `reserved` or `locked`, because (1) `locked` is
the warehouse system's figure and a snapshot overwrites it, (2) units still counted in
`reserved` would have to be released by hand or kept forever, and (3) with `total` reduced the
hash says what is physically left until the warehouse's next snapshot replaces `total` with its
own count (which no longer has those units either). `shipped` is never touched by snapshots, so
every unit is accounted for: units put in + returned = available + locked + presale + reserved +
shipped as long as no snapshot has re-based `total` (`returned`: below, under Returns). A shipment is idempotent by order id (the record
becomes `shipped`; a redelivered or later shipped-state update changes nothing) and never takes
any figure below 0: if the warehouse reports less `total` (or we hold less `reserved`) than the
order takes, nothing changes and the answer is "refused".

Reserving an order is ONE Lua script, so all lines are reserved or none, and two workers
can never both take the last unit. The order record (`<prefix>:order:<order_id>`) makes it
idempotent: while it exists, reserving the same order again changes nothing and answers
"duplicate" with the original allocation; after a release it stays as a tombstone and a late
redelivered reserve answers "released" without reserving again.

Record states: reserved, backorder -> released (cancel, refund, rejection: a tombstone, never
reserved again) | expired (an unpaid order's time-out gave its units back) | shipped. Two
markers hold nothing: `paid` (paid before it was reserved, e.g. while held for risk review: the
reservation that comes later is a paid one, without a time-out) and `shipped` with no units
(shipped before it was reserved: a later reservation takes nothing). An
expired order that is then paid is reserved again exactly once, by the paid update itself
(mode "pay" or "ship"): reserved (`late`), or out_of_stock, which is recorded for this case so the
next paid update does not try again; a cancellation turns an expired record into a tombstone,
so a cancelled order never reserves again. A paid order's record has no TTL while it holds
stock (it would otherwise vanish with its units still reserved); tombstones, expired and
shipped records keep the TTL below.

Outcomes of `reserve` (mode "reserve", a new order):
- "reserved"      units reserved now; `allocations` says where.
- "out_of_stock"  nothing reserved and NOTHING RECORDED: a retry after a restock may succeed
                  (the agent must still emit an explicit exception event for it).
- "backorder"     policy "backorder" only: nothing reserved, the backorder is recorded (so a
                  replay answers "duplicate"); `short` says what is missing.
- "duplicate"     the order already has a record; `allocations` are the ones first reserved and
                  `original_outcome` is the record's state.
- "released"      the order was released (cancel, refund, risk reject) or released before it was
                  ever reserved; nothing is reserved, `allocations` is empty.
Mode "pay" (a paid update): "settled" (reserved, now off the time-out schedule), "rereserved" /
"out_of_stock" (expired: reserved again, or could not be), "absent" (never reserved: out of
stock, held or rejected), else "duplicate" with the record's state. Mode "ship" (a shipped-state
update): "shipped" (`late` when it was expired and reserved again first), "out_of_stock",
"refused", "absent", else "duplicate" (e.g. already shipped). `record` is the stored record, whose
`late_version` / `shipped_version` say which order version did it (re-processing that version
re-publishes the event).

Time-outs: an unpaid reservation holds its units for `reservation_ttl_s`; `release_expired()`
(called periodically by the agent) expires the overdue ones, unless they were paid meanwhile
(checked inside the script). The record key itself lives RECORD_GRACE_S longer so the sweeper
always finds what to give back, and an expired record or tombstone lives as long, which covers
the pipeline's 48 h replay/idempotency window.

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
EXPIRED, SHIPPED, SETTLED, RERESERVED, ABSENT, REFUSED, UNRESERVED = (
    "expired", "shipped", "settled", "rereserved", "absent", "refused", "unreserved")
MODES = ("reserve", "pay", "ship")
RECORD_GRACE_S = 24 * 3600
STOCK_FIELDS = ("total", "locked", "presale", "reserved")
LEVEL_FIELDS = STOCK_FIELDS + ("shipped", "returned")

# KEYS[1] order record, KEYS[2] deadlines zset, KEYS[3..] stock hashes, candidate-major:
#   key(c, l) = KEYS[2 + (c-1)*nlines + l]
# ARGV: order_id, policy, now_ms, record_ttl_s, deadline_ms (0: paid, no time-out, record kept),
#       mode (reserve | pay | ship), version_ms, actor, key prefix, nlines, ncands,
#       sku_1..sku_n, qty_1..qty_n, wh_1..wh_m
RESERVE_FUNCTION = r"""
local function reserve(KEYS, ARGV)
local order_id, policy = ARGV[1], ARGV[2]
local now_ms, ttl, deadline = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local mode, version, actor, prefix = ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9]
local nl, nc = tonumber(ARGV[10]), tonumber(ARGV[11])
local skus, qtys, whs, lines = {}, {}, {}, {}
for l = 1, nl do
  skus[l] = ARGV[11 + l]; qtys[l] = tonumber(ARGV[11 + nl + l]); lines[l] = {skus[l], qtys[l]}
end
for c = 1, nc do whs[c] = ARGV[11 + 2 * nl + c] end
local function key(c, l) return KEYS[2 + (c - 1) * nl + l] end
local function stock_key(wh, sku) return prefix .. ':stock:' .. wh .. ':' .. sku end

local existing = redis.call('GET', KEYS[1])
local rec, paid_before = nil, false
if existing then
  rec = cjson.decode(existing)
  if rec.state == 'paid' then
    -- paid before it was ever reserved (held for risk review): as if absent, but paid, so the
    -- reservation that comes later (the hold released) does not time out
    paid_before, rec, existing, deadline = true, nil, nil, 0
  end
end
if existing then
  if mode == 'reserve' then return {'existing', existing} end
  if mode == 'pay' and rec.state == 'reserved' then
    -- paid now: off the time-out schedule, and the record stays while it holds stock
    redis.call('ZREM', KEYS[2], order_id)
    redis.call('PERSIST', KEYS[1])
    return {'settled', existing}
  end
  if rec.state ~= 'expired' and not (mode == 'ship' and rec.state == 'reserved') then
    return {'existing', existing}
  end
elseif mode == 'pay' then
  -- never reserved here (held, out of stock, rejected): nothing to settle, but remember the payment
  if not paid_before then
    local m = cjson.encode({order_id = order_id, state = 'paid', allocations = {}, paid_at_ms = now_ms,
                            paid_version = version, paid_by = actor})
    redis.call('SET', KEYS[1], m, 'EX', ttl)
  end
  return {'absent', ''}
elseif mode == 'ship' then
  -- it left without a reservation here (out of stock, or shipped while held for risk review):
  -- nothing to deduct, but a marker, so a later reserve (the hold released) takes nothing
  local r = {order_id = order_id, state = 'shipped', unreserved = true, allocations = {}, lines = lines,
             shipped_units = 0, shipped_at_ms = now_ms, shipped_version = version, shipped_by = actor}
  local enc = cjson.encode(r)
  redis.call('SET', KEYS[1], enc, 'EX', ttl)
  return {'unreserved', enc}
end

-- ship a reserved record: total and reserved down together (available unchanged), never below 0
local function ship(r)
  local levels = {}
  for i, a in ipairs(r.allocations) do
    local k = stock_key(a[1], a[2])
    local v = redis.call('HMGET', k, 'total', 'reserved')
    local total, held = tonumber(v[1]) or 0, tonumber(v[2]) or 0
    if total < a[3] or held < a[3] then
      r.refused_reason = a[2] .. '@' .. a[1] .. ': total ' .. total .. ', reserved ' .. held .. ', order takes ' .. a[3]
      return {'refused', cjson.encode(r)}
    end
    levels[i] = k
  end
  local units = 0
  for i, a in ipairs(r.allocations) do
    redis.call('HINCRBY', levels[i], 'total', -a[3])
    redis.call('HINCRBY', levels[i], 'reserved', -a[3])
    redis.call('HINCRBY', levels[i], 'shipped', a[3])
    units = units + a[3]
  end
  r.previous_state = r.state
  r.state = 'shipped'
  r.shipped_at_ms = now_ms
  r.shipped_version = version
  r.shipped_by = actor
  r.shipped_units = units
  local enc = cjson.encode(r)
  redis.call('SET', KEYS[1], enc, 'EX', ttl)
  redis.call('ZREM', KEYS[2], order_id)
  return {'shipped', enc}
end

if rec and rec.state == 'reserved' then return ship(rec) end   -- mode ship, stock already held

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
    if rec then
      -- paid after its reservation expired and the stock is gone meanwhile: recorded, so this
      -- late payment gets exactly one outcome (the next paid update does not try again)
      rec.previous_state = rec.state
      rec.state = 'out_of_stock'
      rec.short = short
      rec.late = true
      rec.late_at_ms = now_ms
      rec.late_version = version
      rec.late_by = actor
      local enc = cjson.encode(rec)
      redis.call('SET', KEYS[1], enc, 'EX', ttl)
      return {'out_of_stock', enc}
    end
    local r = {order_id = order_id, policy = policy, short = short, lines = lines,
               allocations = {}, warehouse = false, at_ms = now_ms}
    if policy == 'backorder' then
      r.state = 'backorder'
      local enc = cjson.encode(r)
      redis.call('SET', KEYS[1], enc, 'EX', ttl)
      return {'backorder', enc}
    end
    r.state = 'out_of_stock'
    return {'out_of_stock', cjson.encode(r)}
  end
end

local out = {}
for i, a in ipairs(allocs) do
  redis.call('HINCRBY', key(a[1], a[2]), 'reserved', a[3])
  out[i] = {whs[a[1]], skus[a[2]], a[3]}
end
if rec then
  -- a late payment: reserved again, once; paid, so no deadline and no TTL while it holds stock
  if not rec.first_allocations then rec.first_allocations = rec.allocations end
  rec.previous_state = rec.state
  rec.state = 'reserved'
  rec.allocations = out
  rec.warehouse = single
  rec.short = {}
  rec.late = true
  rec.late_at_ms = now_ms
  rec.late_version = version
  rec.late_by = actor
  rec.deadline_ms = nil
  if mode == 'ship' then return ship(rec) end
  local enc = cjson.encode(rec)
  redis.call('SET', KEYS[1], enc)
  return {'rereserved', enc}
end
local r = {order_id = order_id, policy = policy, state = 'reserved', allocations = out, short = {},
           lines = lines, warehouse = single, at_ms = now_ms, by = actor}
if deadline > 0 then
  r.deadline_ms = deadline
  local enc = cjson.encode(r)
  redis.call('SET', KEYS[1], enc, 'EX', ttl)
  redis.call('ZADD', KEYS[2], deadline, order_id)
  return {'reserved', enc}
end
local enc = cjson.encode(r)
redis.call('SET', KEYS[1], enc)
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
# Returns, per SKU: number of warehouses, then (warehouse, total, locked, presale, reserved, shipped,
# returned) each.
LEVELS_LUA = r"""
local out = {}
for i, set in ipairs(KEYS) do
  local whs = redis.call('SMEMBERS', set)
  table.sort(whs)
  out[#out + 1] = #whs
  for _, wh in ipairs(whs) do
    local v = redis.call('HMGET', ARGV[1] .. ':stock:' .. wh .. ':' .. ARGV[1 + i], 'total', 'locked', 'presale', 'reserved', 'shipped', 'returned')
    out[#out + 1] = wh
    for f = 1, 6 do out[#out + 1] = v[f] or false end
  end
end
return out
"""

# KEYS[1] order record, KEYS[2] deadlines zset, KEYS[2+i] stock hash of allocation i (as read
# by the caller). ARGV: order_id, reason, now_ms, tombstone_ttl_s, mode (release | expire), actor,
#       n, wh_1, sku_1, ..., wh_n, sku_n, source (the message that asked for it, or '')
# release: give the units back, leave a tombstone (never reserved again).
# expire: only a reserved record still on the time-out schedule and due; it becomes `expired`
#         (a late payment may reserve it again once), and anything else is left alone.
RELEASE_LUA = r"""
local raw = redis.call('GET', KEYS[1])
local mode, actor, n = ARGV[5], ARGV[6], tonumber(ARGV[7])
if not raw then
  if mode == 'expire' then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return {'absent', ''}
  end
  if n ~= 0 then return {'mismatch', ''} end
  -- released before it was reserved (cancel overtook the order): block a late reserve
  local tomb = cjson.encode({order_id = ARGV[1], state = 'released', previous_state = 'absent',
                             allocations = {}, reason = ARGV[2], released_at_ms = tonumber(ARGV[3]),
                             released_units = 0, released_by = actor})
  redis.call('SET', KEYS[1], tomb, 'EX', tonumber(ARGV[4]))
  return {'absent', tomb}
end
local rec = cjson.decode(raw)
local source = ARGV[8 + 2 * n] or ''
if rec.state == 'released' then
  -- the same message again (its outputs were lost with an aborted transaction): say it again
  if source ~= '' and rec.released_for == source and (rec.released_units or 0) > 0 then return {'again', raw} end
  return {'already', raw}
end
if rec.state == 'shipped' then return {'shipped', raw} end   -- its units left: a return is not a release
if mode == 'expire' then
  local due = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if rec.state ~= 'reserved' or not due or tonumber(due) > tonumber(ARGV[3]) then
    return {'settled', raw}   -- paid (or released, or not due) since the sweeper looked
  end
end
if rec.state == 'expired' or rec.state == 'out_of_stock' or rec.state == 'paid' then
  -- holds nothing (its units went back at the time-out, or it was never reserved): a
  -- cancellation leaves the tombstone
  if n ~= 0 then return {'mismatch', raw} end
  rec.previous_state = rec.state
  rec.state = 'released'
  rec.reason = ARGV[2]
  rec.released_at_ms = tonumber(ARGV[3])
  rec.released_units = 0
  rec.released_by = actor
  local enc = cjson.encode(rec)
  redis.call('SET', KEYS[1], enc, 'EX', tonumber(ARGV[4]))
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'tombstoned', enc}
end
local allocs = rec.allocations
if #allocs ~= n then return {'mismatch', raw} end
for i, a in ipairs(allocs) do
  if a[1] ~= ARGV[6 + 2 * i] or a[2] ~= ARGV[7 + 2 * i] then return {'mismatch', raw} end
end
local units = 0
for i, a in ipairs(allocs) do
  redis.call('HINCRBY', KEYS[2 + i], 'reserved', -a[3])
  units = units + a[3]
end
rec.previous_state = rec.state
if mode == 'expire' then rec.state = 'expired' else rec.state = 'released' end
rec.reason = ARGV[2]
rec.released_at_ms = tonumber(ARGV[3])
rec.released_units = units
rec.released_by = actor
if source ~= '' then rec.released_for = source end
local enc = cjson.encode(rec)
redis.call('SET', KEYS[1], enc, 'EX', tonumber(ARGV[4]))
redis.call('ZREM', KEYS[2], ARGV[1])
return {rec.state, enc}
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
    record: Mapping[str, Any] = field(default_factory=dict, compare=False)  # as stored (empty: none)

    @property
    def units(self) -> int:
        return sum(q for _, _, q in self.allocations)

    @property
    def reserved_now(self) -> bool:
        return self.outcome == RESERVED

    @property
    def late(self) -> bool:
        """Reserved again (or found out of stock) because it was paid after it expired."""
        return bool(self.record.get("late"))

    def done_by_version(self, what: str, version_ms: int) -> bool:
        """Whether order version `version_ms` is the one that did `what` ("late" or "shipped"):
        re-processing that very version re-publishes its event, a later version does not."""
        return bool(version_ms) and _int(self.record.get(f"{what}_version")) == int(version_ms)


@dataclass(frozen=True)
class Release:
    released: bool                           # True only for the call that gave units back
    units: int = 0
    allocations: list[Allocation] = field(default_factory=list)
    outcome: str = ""                        # released, expired, tombstoned, shipped, settled, already, absent,
                                             # again (released before by the same source message)


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
    mode: str = "reserve"      # reserve: a new order | pay: a paid update | ship: a shipped-state update
    paid: bool = False         # reserve: already paid, so no unpaid time-out (and no record TTL)
    version_ms: int = 0        # pay/ship: the order version behind it (its updated_at), recorded
    actor: str = ""            # who asks (recorded with what it changed)


@dataclass(frozen=True)
class StockLevel:
    total: int = 0
    locked: int = 0
    presale: int = 0
    reserved: int = 0
    shipped: int = 0           # units this pipeline shipped out of the warehouse (never reset by snapshots)
    returned: int = 0          # units refunds put back on the shelf (in `total` too; never reset by snapshots)

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


def _parse_reserve(order_id: str, result, mode: str = "reserve") -> Reservation:
    """A Reservation from RESERVE_LUA's (status, record)."""
    status, raw = _text(result[0]), _text(result[1])
    if status == ABSENT:
        return Reservation(order_id, ABSENT)
    record = json.loads(raw)
    allocations = _record_allocations(record)
    warehouse = record.get("warehouse") or None
    if status == "existing":
        state = record.get("state")
        if state == RELEASED and mode == "reserve":
            return Reservation(order_id, RELEASED, [], {}, None, original_outcome=RELEASED, record=record)
        if mode == "reserve" and record.get("first_allocations") is not None:
            # re-reserved after it expired: a replay of the new order gets what it first reserved
            allocations = _record_allocations({"allocations": record["first_allocations"]})
        return Reservation(order_id, DUPLICATE, allocations, _record_short(record), warehouse,
                           original_outcome=state, record=record)
    return Reservation(order_id, status, allocations, _record_short(record), warehouse, record=record)


_RELEASING = ("released", "expired")


def _parse_release(result) -> Release | None:
    """A Release from RELEASE_LUA's (status, record); None: the record changed between read and
    script (a reserve raced us), read again."""
    status, raw = _text(result[0]), _text(result[1])
    if status == "mismatch":
        return None
    if status in _RELEASING:
        allocs = _record_allocations(json.loads(raw))
        return Release(True, sum(q for _, _, q in allocs), allocs, status)
    if status == "again":
        allocs = _record_allocations(json.loads(raw))
        return Release(False, sum(q for _, _, q in allocs), allocs, status)
    return Release(False, 0, [], status)


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
        return _level(await self.redis.hmget(self.keys.stock(warehouse, sku), *LEVEL_FIELDS))

    async def available(self, warehouse: str, sku: str) -> int:
        """Raw available units; negative when the warehouse reported less than is reserved."""
        return (await self.stock(warehouse, sku)).available

    async def stock_by_warehouse(self, sku: str) -> dict[str, StockLevel]:
        whs = sorted(_text(w) for w in await self.redis.smembers(self.keys.warehouses(sku)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for w in whs:
                pipe.hmget(self.keys.stock(w, sku), *LEVEL_FIELDS)
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
                out[sku][_text(flat[at])] = _level(flat[at + 1:at + 1 + len(LEVEL_FIELDS)])
                at += 1 + len(LEVEL_FIELDS)
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
    def _reserve_call(self, order_id: str, lines, candidates, policy="next", mode="reserve", paid=False,
                      version_ms=0, actor="", now_ms: int | None = None):
        """RESERVE_LUA's keys and arguments for one order (validated here, before Redis)."""
        if not isinstance(order_id, str) or not order_id:
            raise ValueError(f"order_id must be a non-empty string, got {order_id!r}")
        merged = normalize_lines(lines)
        cands = list(dict.fromkeys(_check_warehouse(w) for w in candidates))
        policy = _check_policy(policy)
        if mode not in MODES:
            raise ValueError(f"unknown reservation mode {mode!r}; one of {list(MODES)}")
        now = _now_ms() if now_ms is None else int(now_ms)
        keys = [self.keys.order(order_id), self.keys.deadlines]
        keys += [self.keys.stock(w, sku) for w in cands for sku, _ in merged]
        deadline = 0 if paid else now + self.reservation_ttl_s * 1000
        args = [order_id, policy, now, self.record_ttl_s, deadline, mode, int(version_ms or 0), str(actor),
                self.keys.prefix, len(merged), len(cands), *(s for s, _ in merged), *(q for _, q in merged), *cands]
        return keys, args

    async def reserve(self, order_id: str, lines: list[tuple[str, int]], candidates: list[str],
                      policy: str = "next", now_ms: int | None = None, *, paid: bool = False,
                      actor: str = "") -> Reservation:
        """Reserve a new order (all lines or none). Unpaid: on the time-out schedule; `paid`: not,
        and its record is kept until it is shipped or released."""
        keys, args = self._reserve_call(order_id, lines, candidates, policy, "reserve", paid, 0, actor, now_ms)
        return _parse_reserve(order_id, await self._reserve(keys=keys, args=args))

    async def pay(self, order_id: str, lines: list[tuple[str, int]], candidates: list[str], version_ms: int,
                  now_ms: int | None = None, *, actor: str = "") -> Reservation:
        """The order is paid (order version `version_ms`): a reservation is taken off the time-out
        schedule ("settled"); an expired one is reserved again once ("rereserved" / "out_of_stock")."""
        keys, args = self._reserve_call(order_id, lines, candidates, "next", "pay", True, version_ms, actor, now_ms)
        return _parse_reserve(order_id, await self._reserve(keys=keys, args=args), "pay")

    async def ship(self, order_id: str, lines: list[tuple[str, int]], candidates: list[str], version_ms: int,
                   now_ms: int | None = None, *, actor: str = "") -> Reservation:
        """The order left the warehouse (order version `version_ms`): its reserved units are taken
        out of `total` and `reserved` together, once ("shipped"; then "duplicate")."""
        keys, args = self._reserve_call(order_id, lines, candidates, "next", "ship", True, version_ms, actor, now_ms)
        return _parse_reserve(order_id, await self._reserve(keys=keys, args=args), "ship")

    async def reserve_many(self, requests: Iterable[ReserveRequest | tuple],
                           now_ms: int | None = None) -> list[Reservation]:
        """One script call for many requests (reserve, pay and ship, in the order given), each as
        atomic as the single call's."""
        calls = []
        for req in requests:
            r = ReserveRequest(*req)
            calls.append((r.order_id, r.mode, self._reserve_call(*r, now_ms=now_ms)))
        if not calls:
            return []
        # RESERVE_MANY_LUA's one argument: [[keys, args], ...], every value a string
        batch = orjson.dumps([[k, [a if type(a) is str else str(a) for a in args]] for _, _, (k, args) in calls])
        flat = await self._reserve_many(args=[batch])
        return [_parse_reserve(oid, flat[2 * i:2 * i + 2], mode) for i, (oid, mode, _) in enumerate(calls)]

    async def release(self, order_id: str, reason: str, now_ms: int | None = None, *, actor: str = "",
                      source: str = "") -> Release:
        """Give the order's units back; idempotent; leaves a tombstone against late reserves.
        A shipped order is not released (its units left; `outcome` "shipped"). Asked again by
        the same `source` message, the outcome is "again" with what that release gave back."""
        return await self._release_or_expire(order_id, reason, "release", now_ms, actor, source)

    async def expire(self, order_id: str, now_ms: int | None = None, *, actor: str = "",
                     reason: str = "timeout") -> Release:
        """An unpaid reservation past its deadline gives its units back and becomes `expired`
        (a late payment may reserve it again once). Paid meanwhile: nothing ("settled")."""
        return await self._release_or_expire(order_id, reason, "expire", now_ms, actor)

    async def _release_or_expire(self, order_id: str, reason: str, mode: str, now_ms: int | None,
                                 actor: str, source: str = "") -> Release:
        for _ in range(_RELEASE_ATTEMPTS):
            record = _decode_record(await self.redis.get(self.keys.order(order_id)))
            holds = record is not None and record.get("state") in (RESERVED, BACKORDER)
            allocs = _record_allocations(record) if holds else []
            keys = [self.keys.order(order_id), self.keys.deadlines]
            keys += [self.keys.stock(w, s) for w, s, _ in allocs]
            args = [order_id, str(reason), _now_ms() if now_ms is None else int(now_ms), self.record_ttl_s,
                    mode, str(actor), len(allocs)]
            for w, s, _ in allocs:
                args += [w, s]
            args.append(source)
            result = _parse_release(await self._release(keys=keys, args=args))
            if result is not None:
                return result
        raise RuntimeError(f"release of {order_id!r} kept racing with reserves")

    async def reservation(self, order_id: str) -> dict | None:
        """The stored record (state reserved / backorder / released / expired / shipped /
        out_of_stock), or None."""
        return _decode_record(await self.redis.get(self.keys.order(order_id)))

    async def reservations(self, order_ids: Iterable[str], chunk: int = 1000) -> dict[str, dict | None]:
        """Many stored records (MGET in chunks): order id -> record or None."""
        ids = list(dict.fromkeys(order_ids))
        out: dict[str, dict | None] = {}
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            for oid, raw in zip(part, await self.redis.mget([self.keys.order(o) for o in part])):
                out[oid] = _decode_record(raw)
        return out

    async def expired(self, now_ms: int | None = None, limit: int = 100) -> list[str]:
        now = _now_ms() if now_ms is None else int(now_ms)
        members = await self.redis.zrangebyscore(self.keys.deadlines, "-inf", now, start=0, num=limit)
        return [_text(m) for m in members]

    async def settle(self, order_ids: Iterable[str]) -> int:
        """Paid orders keep their stock: take them off the time-out schedule and keep their records
        while they hold stock (idempotent). Returns how many were on the schedule."""
        order_ids = list(order_ids)
        if not order_ids:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.deadlines, *order_ids)
            for oid in order_ids:
                pipe.persist(self.keys.order(oid))
            results = await pipe.execute()
        return int(results[0])

    async def release_expired(self, now_ms: int | None = None, limit: int = 100,
                              actor: str = "") -> list[tuple[str, Release]]:
        """Expire reservations held past their deadline (reason "timeout"); each (order id, what
        happened): `released` True for those whose units went back now."""
        return [(oid, await self.expire(oid, now_ms, actor=actor)) for oid in await self.expired(now_ms, limit)]

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
        return (await self.stock(warehouse, sku)).returned

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
                             now_ms: int | None = None, resume_margin: int = 0) -> list:
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
