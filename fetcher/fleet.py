"""Fleet-global politeness: per-host leases and rate in Redis, shared by every box using one store.

With ``--politeness-store redis://HOST:PORT/DB`` each engine process takes its per-host lease from Redis
before a request starts: a lease (a member of the host's sorted set, scored by its expiry, so the leases
of a box that dies lapse on their own), a GCRA rate token, and the host's Retry-After pause, adaptive
delay, breaker dead time and consecutive failure count, all in one Lua script on Redis's own clock
(boxes' clocks never meet). One round trip starts a request, one ends it.

Redis is for politeness, never for the data: when it does not answer, the engine falls back to the
per-box limits (the box's shared table, or this process's own slot state), says so once, counts it in
``fetcher_politeness_store_up``/``_errors_total``, and tries Redis again every ``RECONNECT`` seconds.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

from fetcher.boxslots import Busy, Learned, SharedSlots
from fetcher.hostlimits import SlotLimits

log = logging.getLogger(__name__)

RECONNECT = 5.0  # seconds between tries to reach a store that failed
SOCKET_TIMEOUT = 0.5  # a store that hangs must not hold the event loop for long
POLL = 0.02  # seconds before looking again at a host whose fleet-wide concurrency is full
STATE_TTL = 3600  # seconds an idle host's state is kept in Redis

# KEYS: state hash, leases zset. ARGV: concurrency, rate, burst, lease id, lease ttl, poll, state ttl.
# Returns {code, wait seconds, consecutive failures, adaptive delay}: code 0 started, 1 busy, 2 given up.
_TRY_START = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local conc, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local s = redis.call('HMGET', KEYS[1], 'tat', 'pause', 'last', 'delay', 'dead', 'fails', 'cool')
local tat, pause = tonumber(s[1]) or 0, tonumber(s[2]) or 0
local last, delay = tonumber(s[3]) or 0, tonumber(s[4]) or 0
local dead, fails, cool = tonumber(s[5]) or 0, tonumber(s[6]) or 0, tonumber(s[7]) or 0
if dead > now then return {2, tostring(dead - now), fails, tostring(delay)} end
local at = math.max(pause, cool, last + delay)
if rate > 0 then at = math.max(at, tat - (burst - 1) / rate) end
if at > now then return {1, tostring(at - now), fails, tostring(delay)} end
if redis.call('ZCARD', KEYS[2]) >= conc then return {1, ARGV[6], fails, tostring(delay)} end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
if rate > 0 then tat = math.max(tat, now) + 1 / rate end
redis.call('HSET', KEYS[1], 'tat', tostring(tat), 'last', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[7]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[7]))
return {0, '0', fails, tostring(delay)}
"""

# KEYS: state hash, leases zset. ARGV: lease id, pause in (s), delay, dead in (s), failures, cool-down in (s).
_FINISH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREM', KEYS[2], ARGV[1])
local s = redis.call('HMGET', KEYS[1], 'pause', 'dead')
local pause, dead = tonumber(s[1]) or 0, tonumber(s[2]) or 0
local pause_in, dead_in = tonumber(ARGV[2]), tonumber(ARGV[4])
if pause_in > 0 then pause = math.max(pause, now + pause_in) end
if dead_in > 0 then dead = math.max(dead, now + dead_in) end
local cool_in = tonumber(ARGV[6])
local cool = 0
if cool_in > 0 then cool = now + cool_in end
redis.call('HSET', KEYS[1], 'pause', tostring(pause), 'delay', ARGV[3], 'dead', tostring(dead), 'fails', ARGV[5],
  'cool', tostring(cool))
return 1
"""


@dataclass
class StoreCounters:
    """What the metrics export about the store."""

    up: int = 1
    errors: int = 0


class RedisSlots:
    """A SharedSlots on Redis, falling back to ``local`` (box table or None: this process alone) when down."""

    def __init__(self, url: str, prefix: str, lease_ttl: float, local: SharedSlots | None = None) -> None:
        import redis

        self._redis = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT, decode_responses=True
        )
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._try = self._redis.register_script(_TRY_START)
        self._finish = self._redis.register_script(_FINISH)
        self.url = url
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.local = local
        self.counters = StoreCounters()
        self._retry_at = 0.0
        self._ids = itertools.count()
        self._me = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Leases this process holds per host, and the hosts whose lease came from the local fallback.
        self._leases: dict[str, list[str]] = defaultdict(list)
        self._learned: dict[str, Learned] = {}  # as of this process's last exchange with Redis

    def _keys(self, key: str) -> list[str]:
        # {key} is a cluster hash tag: a host's two keys live on one node.
        return [f"{self.prefix}:{{{key}}}:state", f"{self.prefix}:{{{key}}}:leases"]

    @property
    def _usable(self) -> bool:
        return self.counters.up == 1 or time.monotonic() >= self._retry_at

    def _down(self, exc: BaseException) -> None:
        self.counters.errors += 1
        if self.counters.up:
            log.warning(
                "politeness store %s unavailable (%s): per-box limits until it answers again",
                self.url,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
        self.counters.up = 0
        self._retry_at = time.monotonic() + RECONNECT

    def _up(self) -> None:
        if not self.counters.up:
            log.warning("politeness store %s answers again: fleet-wide limits are back", self.url)
        self.counters.up = 1

    def try_start(self, key: str, limits: SlotLimits, now: float) -> Busy | None:
        """Take a fleet lease and rate token for ``key``; else say when (local clock) to look again."""
        if self._usable:
            lease = f"{self._me}-{next(self._ids)}"
            args: list[str | int | float] = [
                limits.concurrency, limits.rate, limits.burst, lease, self.lease_ttl, POLL, STATE_TTL,
            ]  # fmt: skip
            try:
                code, wait, fails, delay = self._try(keys=self._keys(key), args=args)
            except self._errors as exc:
                self._down(exc)
            else:
                self._up()
                self._learned[key] = Learned(int(fails), float(delay))
                if int(code) == 0:
                    self._leases[key].append(lease)
                    return None
                return Busy(now + float(wait), dead=int(code) == 2)
        return self.local.try_start(key, limits, now) if self.local is not None else None

    def finish(
        self, key: str, pause_until: float, delay: float, dead_until: float, failures: int, cooldown_until: float = 0.0
    ) -> None:
        """Hand the lease back and share what the answer taught about the host."""
        held = self._leases.get(key)
        if not held:  # started on the local fallback
            if self.local is not None:
                self.local.finish(key, pause_until, delay, dead_until, failures, cooldown_until)
            return
        lease = held.pop()
        if not held:
            del self._leases[key]
        self._learned[key] = Learned(failures, delay)
        now = time.monotonic()
        pause_in = max(0.0, pause_until - now)
        dead_in = max(0.0, dead_until - now)
        cool_in = max(0.0, cooldown_until - now)
        try:
            self._finish(keys=self._keys(key), args=[lease, pause_in, delay, dead_in, failures, cool_in])
        except self._errors as exc:
            self._down(exc)  # the lease lapses on its own

    def learned(self, key: str) -> Learned | None:
        """The fleet's breaker count and adaptive delay of ``key``, as of this process's last exchange with Redis."""
        if self.counters.up and key in self._learned:
            return self._learned[key]
        return self.local.learned(key) if self.local is not None else None

    def close(self) -> None:
        self._redis.close()


def shared_slots(store: str, prefix: str, lease_ttl: float, box: SharedSlots | None) -> SharedSlots | None:
    """What the scheduler shares per-host state through: the fleet's store, else the box's table (or nothing)."""
    return RedisSlots(store, prefix, lease_ttl, local=box) if store else box
