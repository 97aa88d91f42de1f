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

A server that does not answer is an `AtomscaleConfigurationError` naming the URL without
its password; nothing falls back to local locks, which would not order other machines.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from prefect_atomscale._exceptions import AtomscaleConfigurationError
from prefect_atomscale._locks._settings import LOCK_URL_ENV, redacted

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["RedisCounters", "RedisServer", "RedisSlots", "RedisValues"]

_PREFIX = "prefect-atomscale"
T = TypeVar("T")

# Extend the lease if the token is still ours: 1, else 0.
_FENCE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# Extend the lease and bump the slot's version if the token is still ours: the version,
# else -1. One round trip for protocol step L5.
_FENCE_AND_BUMP = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return redis.call('incr', KEYS[2])
end
return -1
"""

# Delete the slot's key if the token is still ours: 1, else 0.
_RELEASE = """
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
    """This process's client of one lock server, made on first use (and after a fork)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Redis | None = None
        self._pid = 0
        self._mutex = threading.Lock()

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

    def call(self, what: str, action: Callable[[Redis], T]) -> T:
        """Run `action` on the server; one that does not answer is a configuration error."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return action(self.client())
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
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


def _token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"


class RedisSlots:
    """A process's leased holds on the slots of one family; the caller counts its holders.

    Args:
        server: The lock server.
        family: Names the slots' keys.
        lease: Seconds a hold lasts unless fenced (extended) again.
    """

    remote = True

    def __init__(self, server: RedisServer, family: str, lease: float) -> None:
        self._server = server
        self._family = family
        self._lease_ms = max(1, round(lease * 1000))
        self._token = _token()
        os.register_at_fork(after_in_child=self.reset_after_fork)

    def reset_after_fork(self) -> None:
        # A forked child must not pass for its parent.
        self._token = _token()

    def _name(self, index: int) -> str:
        return f"{_PREFIX}:{self._family}:{index:04d}"

    def try_take(self, index: int) -> bool:
        """Take slot `index` for this process if nobody holds it."""
        taken = self._server.call(
            "taking a lock",
            lambda client: client.set(self._name(index), self._token, nx=True, px=self._lease_ms),
        )
        return bool(taken)

    def fence(self, index: int) -> bool:
        """Whether slot `index` is still this process's; if so, its lease starts again."""
        kept = self._server.script(
            "checking a lock", _FENCE, [self._name(index)], [self._token, self._lease_ms]
        )
        return bool(kept)

    def fence_and_bump(self, index: int, counter: str) -> int | None:
        """`fence`, then add one to the counter named `counter`: its value, or None if lost."""
        after = self._server.script(
            "checking a lock",
            _FENCE_AND_BUMP,
            [self._name(index), counter],
            [self._token, self._lease_ms],
        )
        return None if int(after) < 0 else int(after)

    def give_back(self, index: int) -> bool:
        """Release slot `index`; False if the lease had run out (someone may hold it)."""
        kept = self._server.script("releasing a lock", _RELEASE, [self._name(index)], [self._token])
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
        return int(self._server.call("writing a counter", lambda c: c.incr(self.key(index))))


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
        """Add `member` to the set `name`."""
        self._server.call("writing a value", lambda c: c.sadd(f"{_PREFIX}:{name}", member))

    def has(self, name: str, member: str) -> bool:
        """Whether the set `name` holds `member`."""
        found: Any = self._server.call(
            "reading a value", lambda c: c.sismember(f"{_PREFIX}:{name}", member)
        )
        return bool(found)
