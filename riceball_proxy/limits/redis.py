"""Limit counters in Redis, shared by every process and instance: one Lua script call per admission,
which also applies the settlements queued since the last one, so each is atomic and a call costs one
round trip.

The scripts run the rules of ``limits/counters.py`` on Redis' own clock (``TIME``), so instances whose
clocks differ still agree. Values: a bucket is its theoretical arrival time in ms (a string, expiring
when the bucket is full again); slots are a sorted set of call ids scored by their lease's end; a
budget is an integer (nano-USD or tokens) expiring when its period ends.
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from riceball_proxy.limits.counters import (
    SLOT_LEASE_MS,
    Bucket,
    Budget,
    Busy,
    Check,
    Counters,
    Decision,
    Loader,
    Settlement,
    Slots,
    Unavailable,
)

#: One call applies the queued settlements, then admits a call (or none). Few arguments and one string
#: back, because the client's cost is per argument and per value more than per call:
#: KEYS: with a batch of settlements, first the set of this process's batches applied lately; then the
#: settlements' keys, then one per check.
#: ARGV[1]: the slot lease (ms); ARGV[2]: the settlements, ARGV[3]: the checks, each "kind a b [c]"
#: joined by ";"; ARGV[4]: the batch's sequence number ('' for none: applied without a check), ARGV[5]:
#: how many applied batches the set remembers. A batch already in the set is not applied again.
#:   settlement: bucket "b per_minute delta";  budget "g 0 delta";  slot "s 0 member"
#:   check:      bucket "b per_minute cost";  slots "s limit member";  budget "g limit amount end_ms_or_0"
#: Returns "1 0 0" admitted, "0 i retry_ms" refused by check i (a budget adds what it has spent),
#: "-1 i" budget i not loaded (the settlements are applied even then); then two numbers per check: a
#: bucket's remaining units and ms until it is full (0 0 for the others).
SCRIPT = """
local function items(text)
  local out = {}
  for item in string.gmatch(text, '[^;]+') do
    local fields = {}
    for value in string.gmatch(item, '[^ ]+') do fields[#fields + 1] = value end
    out[#out + 1] = fields
  end
  return out
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local given, checks = items(ARGV[2]), items(ARGV[3])
local settles, offset = given, 0
if ARGV[4] ~= '' then
  offset = 1
  if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
    settles = {}  -- this batch was applied already (its answer was lost)
  else
    redis.call('ZADD', KEYS[1], tonumber(ARGV[4]), ARGV[4])
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[5]) + 1))
    redis.call('PEXPIRE', KEYS[1], 86400000)
  end
end
for j, op in ipairs(settles) do
  local key, kind, a, b = KEYS[offset + j], op[1], tonumber(op[2]), op[3]
  if kind == 'b' then
    local tat = redis.call('GET', key)
    if tat then
      local new = math.max(math.max(tonumber(tat), now) + tonumber(b) * 60000 / a, now)
      if new > now then
        redis.call('SET', key, string.format('%.3f', new), 'PX', math.max(math.ceil(new - now), 1))
      else
        redis.call('DEL', key)
      end
    end
  elseif kind == 'g' then
    if redis.call('EXISTS', key) == 1 and redis.call('INCRBY', key, b) < 0 then
      redis.call('SET', key, 0, 'KEEPTTL')
    end
  else
    redis.call('ZREM', key, b)
  end
end
local first = offset + #given
local info, tats = {}, {}
local function answer(head)
  for _, v in ipairs(info) do head[#head + 1] = v end
  return table.concat(head, ' ')
end
for i, check in ipairs(checks) do
  local key, kind, a, b, c = KEYS[first + i], check[1], tonumber(check[2]), check[3], tonumber(check[4] or 0)
  info[i * 2 - 1], info[i * 2] = 0, 0
  if kind == 'b' then
    local interval = 60000 / a
    local start = math.max(tonumber(redis.call('GET', key) or 0), now)
    local ahead = start + tonumber(b) * interval - now
    if ahead > 60000 then
      info[i * 2 - 1], info[i * 2] = math.floor((60000 - (start - now)) / interval), math.ceil(start - now)
      return answer({0, i, math.ceil(ahead - 60000)})
    end
    info[i * 2 - 1], info[i * 2] = math.floor((60000 - ahead) / interval), math.ceil(ahead)
    tats[i] = start + tonumber(b) * interval
  elseif kind == 's' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= a then return answer({0, i, 1000}) end
  else
    local spent = redis.call('GET', key)
    if not spent then return '-1 ' .. i end
    spent = tonumber(spent)
    if spent >= a or spent + tonumber(b) > a then
      return string.format('0 %d %d %d', i, c > 0 and math.max(c - now, 0) or 0, spent)
    end
  end
end
for i, check in ipairs(checks) do
  local key, kind, b = KEYS[first + i], check[1], check[3]
  if kind == 'b' then
    redis.call('SET', key, string.format('%.3f', tats[i]), 'PX', math.max(math.ceil(tats[i] - now), 1))
  elseif kind == 's' then
    redis.call('ZADD', key, now + lease, b)
    redis.call('PEXPIRE', key, lease)
  elseif tonumber(b) > 0 then
    redis.call('INCRBY', key, b)
  end
end
return answer({1, 0, 0})
"""


#: Connections to Redis per process: calls beyond them wait for a turn, up to CONNECTION_WAIT seconds.
MAX_CONNECTIONS = 64
CONNECTION_WAIT = 5.0
#: Batches each process's set of applied ones remembers: far more than can be sent while one is in doubt
#: (the batch in doubt is the next one sent).
REMEMBERED_BATCHES = 4096


class RedisCounters(Counters):
    """The counters in Redis at ``url``; every failure to reach it is ``Unavailable``."""

    name = "redis"

    def __init__(self, url: str, *, timeout: float = 1.0, prefix: str = "riceball:",
                 connections: int = MAX_CONNECTIONS, wait: float = CONNECTION_WAIT):
        super().__init__()
        self.redis = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                             health_check_interval=0, retry_on_timeout=False,
                                             max_connections=connections)
        self.prefix = prefix
        self._script = self.redis.register_script(SCRIPT)
        # Calls beyond the pool's connections wait here for their turn (at most ``wait`` seconds), so a
        # full pool is a wait, never redis-py's "Too many connections", which reads as Redis away.
        self._turns = asyncio.Semaphore(connections)
        self.connections = connections
        self.wait = wait

    def _settlement_args(self, settlement: Settlement) -> tuple[list, str, str]:
        """The keys, the ops and the sequence number of a batch (nothing for an empty one)."""
        if not settlement:
            return [], "", ""
        process, _, sequence = settlement.id.rpartition(":")
        keys, ops = [f"{self.prefix}settled:{process}"], []
        for bucket, delta in settlement.buckets:
            if delta:
                keys.append(self.prefix + bucket.key)
                ops.append(f"b {bucket.per_minute} {delta}")
        for budget, delta in settlement.budgets:
            if delta:
                keys.append(self.prefix + budget.key)
                ops.append(f"g 0 {delta}")
        for slots in settlement.slots:
            keys.append(self.prefix + slots.key)
            ops.append(f"s 0 {slots.member}")
        return keys, ";".join(ops), sequence

    async def admit_with(self, checks: Sequence[Check], load: Loader, batch: Settlement) -> Decision:
        settle_keys, settle_ops, sequence = self._settlement_args(batch)
        keys = [self.prefix + check.key for check in checks]
        ops = []
        for check in checks:
            if isinstance(check, Bucket):
                ops.append(f"b {check.per_minute} {check.cost}")
            elif isinstance(check, Slots):
                ops.append(f"s {check.limit} {check.member}")
            else:
                ops.append(f"g {check.limit} {check.amount} {0 if check.ends_ms is None else math.ceil(check.ends_ms)}")
        checks_arg = ";".join(ops)
        for _ in range(len(checks) + 1):  # at most one load per budget, then the answer
            answer = await self._call(settle_keys + keys,
                                      [SLOT_LEASE_MS, settle_ops, checks_arg, sequence, REMEMBERED_BATCHES])
            reply = [int(float(value)) for value in answer.split()]
            settle_keys, settle_ops, sequence = [], "", ""  # applied, whatever the answer
            if reply[0] != -1:
                break
            budget = checks[reply[1] - 1]
            if not isinstance(budget, Budget):
                raise Unavailable(f"Redis asked to load a counter that is not a budget: {budget.key}")
            spent = await load(budget)
            await self._set_budget(keys[reply[1] - 1], spent, budget.ends_ms)
        decision = Decision(admitted=reply[0] == 1)
        if not decision.admitted:
            decision.refused = checks[reply[1] - 1]
            decision.retry_after_ms = float(reply[2])
            if isinstance(decision.refused, Budget):
                decision.spent = int(reply[3])
                return decision
        for i, check in enumerate(checks):
            if isinstance(check, Bucket) and 4 + 2 * i < len(reply) and (reply[3 + 2 * i] or reply[4 + 2 * i]):
                decision.buckets[check.key] = (int(reply[3 + 2 * i]), float(reply[4 + 2 * i]))
        return decision

    async def apply(self, settlement: Settlement) -> None:
        keys, ops, sequence = self._settlement_args(settlement)
        if keys:
            await self._call(keys, [SLOT_LEASE_MS, ops, "", sequence, REMEMBERED_BATCHES])

    async def _set_budget(self, key: str, spent: int, ends_ms: float | None) -> None:
        if ends_ms is None:
            await self._send(self.redis.set(key, spent, nx=True))
        else:
            await self._send(self.redis.set(key, spent, nx=True, pxat=math.ceil(ends_ms) + 60_000))

    async def _call(self, keys, args):
        # redis-py's Script sends EVALSHA, and the script itself when Redis does not have it (a restart).
        return await self._send(self._script(keys=keys, args=args))

    async def _send(self, command):
        """Await a command on a connection of the pool: Busy when none comes free in time, Unavailable
        when Redis cannot be reached."""
        try:
            async with asyncio.timeout(self.wait):
                await self._turns.acquire()
        except TimeoutError:
            command.close()
            raise Busy(f"every one of the {self.connections} connections to Redis was busy for {self.wait:g} s") \
                from None
        try:
            return await command
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis: {exc}") from exc
        finally:
            self._turns.release()

    async def close(self) -> None:
        await super().close()
        await self.redis.aclose()

