"""Every machine's lock store, in Redis: leased slots with fencing, counters, values.

Who else uses it: every process, on any machine, whose `PREFECT_ATOMSCALE_LOCK_URL`
names the same server and db. Imported only when that is set, so prefect-redis (which
brings redis-py and reads `redis://`, `rediss://` and `redis+sentinel://` URLs) stays an
optional extra.

- `RedisSlots`: a process's hold on a slot is a key set with `NX` and a lease, holding a
  random token of the process. `fence` checks, in one script, that the token is still
  there and extends the lease; `give_back` deletes the key only if it still holds the
  token. Either answers "lost" when the lease ran out and someone else may hold it.
- `RedisCounters`: counters, with the database's *incarnation*, a random id set once:
  a server that restarted empty is a new incarnation.
- `RedisValues`: small named values.

**Versions of a held slot.** While a process holds a slot of the versioned family (the
target materials'), no other process reads or bumps that slot's version, so the holder
keeps it: the take answers the version in the same script, the writes bump it in the
process, and the give-back adds those bumps on the server in its script, before the
slot is free. A holder that never gives back (killed, or cut off past its lease) must
still leave the version changed, since its last write may have landed: the take marks
the slot as held (a `...-holder` key without expiry, cleared by the give-back), and a
take that finds the mark of a holder that never gave back bumps the version once.

**Round trips.** Each call is one round trip, a script or a pipeline: a `create_layer`
makes three (its cache key's epoch, the take, the give-back). A fencing check within
`FRESH_LEASE_SECONDS` of the server's last word on the lease (the take, or the last
check) is answered without one: no pause that could lose a lease fits in it. Values
recorded while the process holds a slot (`RedisValues.add`) ride in front of the next
round trip, at the latest the give-back, so they are on the server before another
process can take the slot.

A server that does not answer is an `AtomscaleConfigurationError` naming the URL without
its password; nothing falls back to local locks, which would not order other machines.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from prefect_atomscale._exceptions import AtomscaleConfigurationError
from prefect_atomscale._locks._settings import LOCK_URL_ENV, redacted

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["FRESH_LEASE_SECONDS", "RedisCounters", "RedisServer", "RedisSlots", "RedisValues"]

_PREFIX = "prefect-atomscale"
T = TypeVar("T")

FRESH_LEASE_SECONDS = 0.1
"""How long after the server's last word on a lease a fencing check needs no round trip.

Far below the shortest lease (1 s): a holder paused or cut off long enough to lose its
lease has been away longer than this, so its next check asks the server. What is left
is the window every check already has before its request reaches the service (see the
protocol's "What is not guaranteed")."""

# Extend the lease if the token is still ours: 1, else 0.
_FENCE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# Delete the slot's key if the token is still ours: 1, else 0.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  return 1
end
return 0
"""

# Take a versioned slot: KEYS slot, version, holder mark; ARGV token, lease (ms), bumps
# of this process not yet added (a give-back that never got an answer). The version, or
# -1 if someone holds the slot. A mark left by a holder that never gave back bumps once.
_TAKE_VERSIONED = """
if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return -1
end
local version = redis.call('incrby', KEYS[2], ARGV[3])
if redis.call('exists', KEYS[3]) == 1 then
  version = redis.call('incr', KEYS[2])
end
redis.call('set', KEYS[3], ARGV[1])
return version
"""

# Give a versioned slot back: add the bumps made while it was held (whether or not the
# lease is still ours: a write of this holder may have landed), clear our mark, delete
# the slot's key if the token is still ours: 1, else 0.
_RELEASE_VERSIONED = """
redis.call('incrby', KEYS[2], ARGV[2])
if redis.call('get', KEYS[3]) == ARGV[1] then
  redis.call('del', KEYS[3])
end
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  return 1
end
return 0
"""

# The incarnation, made on first use (or after the server lost it), and one counter.
_READ = """
local incarnation = redis.call('get', KEYS[1])
if not incarnation then
  redis.call('set', KEYS[1], ARGV[1], 'NX')
  incarnation = redis.call('get', KEYS[1])
end
return {incarnation, redis.call('get', KEYS[2]) or '0'}
"""


class RedisServer:
    """This process's client of one lock server, made on first use (and after a fork).

    Also keeps the commands that may wait for the next round trip (`send_later`).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Redis | None = None
        self._pid = 0
        self._mutex = threading.Lock()
        self._later: list[tuple[Any, ...]] = []
        self._holds = 0  # slots this process holds on the server, of every family
        os.register_at_fork(after_in_child=self._forget_after_fork)

    def _forget_after_fork(self) -> None:
        # A forked child holds nothing, and its parent sends its own commands.
        self._mutex = threading.Lock()
        self._later, self._holds = [], 0

    def client(self) -> Redis:
        """The client, connected lazily."""
        with self._mutex:
            if self._client is None or self._pid != os.getpid():
                try:
                    from prefect_redis.connection import redis_from_url
                except ImportError:
                    raise AtomscaleConfigurationError(
                        f"{LOCK_URL_ENV} is set but prefect-redis is not installed: "
                        "pip install 'prefect-atomscale[redis]'."
                    ) from None
                try:
                    client = redis_from_url(
                        self.url, socket_connect_timeout=5.0, socket_timeout=10.0
                    )
                except ValueError:  # its message never echoes the URL either
                    raise AtomscaleConfigurationError(
                        f"{LOCK_URL_ENV}={redacted(self.url)} is not a Redis URL; write "
                        "redis://HOST:PORT/DB, rediss://... or redis+sentinel://..."
                    ) from None
                self._client, self._pid = client, os.getpid()
            return self._client

    def call(self, what: str, action: Callable[[Any], T]) -> T:
        """Run `action` on the server in one round trip, behind any waiting commands.

        `action` gets the client, or a pipeline when commands wait (same methods). A
        server that does not answer is a configuration error; the waiting commands then
        wait for the next round trip.
        """
        return cast(T, self._round_trip(what, action))

    def _round_trip(self, what: str, action: Callable[[Any], Any] | None) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        client = self.client()
        with self._mutex:
            later, self._later = self._later, []
        try:
            if not later:
                return None if action is None else action(client)
            pipeline: Any = client.pipeline(transaction=False)
            for command in later:
                pipeline.execute_command(*command)
            if action is not None:
                action(pipeline)
            answers = pipeline.execute()
            return None if action is None else answers[-1]
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            with self._mutex:
                self._later[:0] = later  # sent again at worst: each is idempotent
            raise AtomscaleConfigurationError(
                f"Cannot reach the lock server {redacted(self.url)} ({LOCK_URL_ENV}) while "
                f"{what} ({type(exc).__name__}). Start it or fix the URL; to use this "
                f"machine's own locks instead, unset {LOCK_URL_ENV}. Runs never fall back "
                "to local locks on their own, since those would not keep other machines "
                "out. Nothing was written."
            ) from None

    def script(self, what: str, source: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script: one round trip, atomic on the server."""
        return self.call(what, lambda client: client.eval(source, len(keys), *keys, *args))

    def send_later(self, what: str, *command: Any) -> None:
        """Send an idempotent write with the next round trip, if a held slot has one coming.

        Why: while this process holds a slot it gives it back in a round trip of its
        own, so a value recorded under the slot reaches the server before anyone else
        can take it, without a round trip of its own. Holding nothing, it is sent now.
        """
        with self._mutex:
            if self._holds:
                self._later.append(command)
                return
        self.call(what, lambda client: client.execute_command(*command))

    def took(self) -> None:
        """This process now holds one more slot on the server."""
        with self._mutex:
            self._holds += 1

    def gave_back(self) -> None:
        """This process holds one slot fewer; holding none, nothing may wait any more."""
        with self._mutex:
            self._holds = max(0, self._holds - 1)
            send = not self._holds and bool(self._later)
        if send:
            self._round_trip("writing a value", None)


def _token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"


def _now() -> tuple[float, float]:
    # Both clocks: the monotonic one never goes back, the wall clock also counts time
    # the machine slept (the lock server's clock kept running meanwhile).
    return time.monotonic(), time.time()


@dataclass
class _Hold:
    """This process's hold on one slot: when the server last confirmed it, its version."""

    confirmed: tuple[float, float]
    version: int = 0


class RedisSlots:
    """A process's leased holds on the slots of one family; the caller counts its holders.

    Args:
        server: The lock server.
        family: Names the slots' keys.
        lease: Seconds a hold lasts unless fenced (extended) again.
        versions: The counters whose slot versions a hold carries (see the module's
            docstring), for the versioned family; None for the others.
    """

    remote = True

    def __init__(
        self,
        server: RedisServer,
        family: str,
        lease: float,
        versions: RedisCounters | None = None,
    ) -> None:
        self._server = server
        self._family = family
        self._lease_ms = max(1, round(lease * 1000))
        self._fresh = min(FRESH_LEASE_SECONDS, lease / 10)
        self._versions = versions
        self._token = _token()
        self._mutex = threading.Lock()
        self._held: dict[int, _Hold] = {}
        self._unsent: dict[int, int] = {}  # version bumps not yet added on the server
        os.register_at_fork(after_in_child=self._reset_after_fork)

    def _reset_after_fork(self) -> None:
        # A forked child must not pass for its parent, and holds nothing.
        self._token = _token()
        self._mutex = threading.Lock()
        self._held, self._unsent = {}, {}

    def _name(self, index: int) -> str:
        return f"{_PREFIX}:{self._family}:{index:04d}"

    def _mark(self, index: int) -> str:
        return f"{_PREFIX}:{self._family}-holder:{index:04d}"

    def try_take(self, index: int) -> bool:
        """Take slot `index` for this process if nobody holds it (and read its version)."""
        asked = _now()
        if self._versions is None:
            taken = self._server.call(
                "taking a lock",
                lambda client: client.set(
                    self._name(index), self._token, nx=True, px=self._lease_ms
                ),
            )
            version = 0 if taken else -1
        else:
            with self._mutex:
                unsent = self._unsent.get(index, 0)
            version = int(
                self._server.script(
                    "taking a lock",
                    _TAKE_VERSIONED,
                    [self._name(index), self._versions.key(index), self._mark(index)],
                    [self._token, self._lease_ms, unsent],
                )
            )
            if version >= 0:
                self._sent(index, unsent)
        if version < 0:
            return False
        with self._mutex:
            self._held[index] = _Hold(asked, version)
        self._server.took()
        return True

    def _sent(self, index: int, bumps: int) -> None:
        with self._mutex:
            left = self._unsent.get(index, 0) - bumps
            if left > 0:
                self._unsent[index] = left
            else:
                self._unsent.pop(index, None)

    def fence(self, index: int) -> bool:
        """Whether slot `index` is still this process's; if so, its lease starts again.

        Answered without a round trip within `FRESH_LEASE_SECONDS` of the server's
        last word on it.
        """
        now = _now()
        if self._confirmed_since(index, now):
            return True
        kept = self._server.script(
            "checking a lock", _FENCE, [self._name(index)], [self._token, self._lease_ms]
        )
        if kept:
            with self._mutex:
                if (hold := self._held.get(index)) is not None:
                    hold.confirmed = now
        return bool(kept)

    def fresh(self, index: int) -> bool:
        """Whether `fence(index)` would answer without a round trip now."""
        return self._confirmed_since(index, _now())

    def _confirmed_since(self, index: int, now: tuple[float, float]) -> bool:
        with self._mutex:
            hold = self._held.get(index)
            if hold is None:
                return False
            return all(
                0 <= later - then < self._fresh
                for later, then in zip(now, hold.confirmed, strict=True)
            )

    def version(self, index: int) -> int:
        """The version of held slot `index`, as this process keeps it."""
        with self._mutex:
            return self._held[index].version

    def bump(self, index: int) -> int:
        """Add one to the version of held slot `index`, sent with its give-back; the version."""
        with self._mutex:
            hold = self._held[index]
            hold.version += 1
            self._unsent[index] = self._unsent.get(index, 0) + 1
            return hold.version

    def give_back(self, index: int) -> bool:
        """Release slot `index`; False if the lease had run out (someone may hold it)."""
        with self._mutex:
            self._held.pop(index, None)
            unsent = self._unsent.get(index, 0)
        try:
            if self._versions is None:
                kept = self._server.script(
                    "releasing a lock", _RELEASE, [self._name(index)], [self._token]
                )
            else:
                kept = self._server.script(
                    "releasing a lock",
                    _RELEASE_VERSIONED,
                    [self._name(index), self._versions.key(index), self._mark(index)],
                    [self._token, unsent],
                )
                self._sent(index, unsent)
        finally:
            self._server.gave_back()
        return bool(kept)


class RedisCounters:
    """Counters on the lock server, with the database's incarnation.

    Args:
        server: The lock server.
        name: Names the counters' keys.
    """

    def __init__(self, server: RedisServer, name: str) -> None:
        self._server = server
        self._name = name

    def key(self, index: int) -> str:
        """The Redis key of counter `index`."""
        return f"{_PREFIX}:{self._name}:{index:04d}"

    def read(self, index: int) -> int:
        """The counter `index`."""
        value: Any = self._server.call("reading a counter", lambda c: c.get(self.key(index)))
        return int(value or 0)

    def read_with_incarnation(self, index: int) -> tuple[str, int]:
        """The database's incarnation and the counter `index`, in one round trip."""
        incarnation, value = self._server.script(
            "reading a counter",
            _READ,
            [f"{_PREFIX}:incarnation", self.key(index)],
            [uuid.uuid4().hex],
        )
        text = incarnation.decode() if isinstance(incarnation, bytes) else str(incarnation)
        return text, int(value or 0)

    def bump(self, index: int) -> int:
        """Add one to counter `index`; return it."""
        after: Any = self._server.call("writing a counter", lambda c: c.incr(self.key(index)))
        return int(after)


class RedisValues:
    """Small named values on the lock server.

    Args:
        server: The lock server.
    """

    def __init__(self, server: RedisServer) -> None:
        self._server = server

    def get(self, name: str) -> str | None:
        """The value of `name`, if set."""
        value: Any = self._server.call("reading a value", lambda c: c.get(f"{_PREFIX}:{name}"))
        return value.decode() if isinstance(value, bytes) else value

    def set(self, name: str, value: str) -> None:
        """Set `name`."""
        self._server.call("writing a value", lambda c: c.set(f"{_PREFIX}:{name}", value))

    def add(self, name: str, member: str) -> None:
        """Add `member` to the set `name`, with the next round trip (`send_later`)."""
        self._server.send_later("writing a value", "SADD", f"{_PREFIX}:{name}", member)

    def has(self, name: str, member: str) -> bool:
        """Whether the set `name` holds `member`."""
        found: Any = self._server.call(
            "reading a value", lambda c: c.sismember(f"{_PREFIX}:{name}", member)
        )
        return bool(found)
