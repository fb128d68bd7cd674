"""Orders per buyer IP over a sliding window, in Redis: one sorted set per IP, members = order ids.

An order is a member, not an increment, so re-processing it after a crash counts it once (a
windowed Faust counter counted it twice), and no re-keying hop by IP is needed: any worker
asks for any IP. One script call counts a whole batch.
"""
from __future__ import annotations

import redis.asyncio as aioredis

# KEYS: one sorted set per order of the batch; ARGV: window ms, then (order id, at ms) per key
COUNT_LUA = """
local window = tonumber(ARGV[1])
local counts = {}
for i, key in ipairs(KEYS) do
  local member, at = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  redis.call('ZADD', key, 'NX', at, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', at - window)
  redis.call('PEXPIRE', key, window)
  counts[i] = redis.call('ZCOUNT', key, at - window + 1, '+inf')
end
return counts
"""


class IpVelocity:
    def __init__(self, client: aioredis.Redis, prefix: str, window_s: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.window_ms = window_s * 1000
        self._count = client.register_script(COUNT_LUA)

    async def count(self, visits: list[tuple[str, str, int]]) -> list[int]:
        """(ip, order id, at ms) -> orders from that IP within the window ending at `at`, this one included."""
        if not visits:
            return []
        keys = [f"{self.prefix}:ip:{ip}" for ip, _, _ in visits]
        args: list = [self.window_ms]
        for _, order_id, at_ms in visits:
            args += [order_id, at_ms]
        return [int(n) for n in await self._count(keys=keys, args=args)]
