"""One Poller's membership of a fleet: its interest, its leases, what it shares.

The keys of a namespace ``NS`` (all with the hash tag ``{NS}``, so a Redis Cluster keeps
them in one slot and the multi-key commands work there too)::

    asyncpoll:{NS}:members            SET of member IDs
    asyncpoll:{NS}:member:M           "1", expires after the lease: member M is alive
    asyncpoll:{NS}:want:S:M           SET of the operation IDs member M wants in space S
    asyncpoll:{NS}:lead:S             the member ID that polls space S, expires after the lease
    asyncpoll:{NS}:snap:S             HASH operation ID -> latest record (unfinished ones)
    asyncpoll:{NS}:done:S:ID          the terminal record, kept for terminal_memory
    asyncpoll:{NS}:obs                channel: observations and shared failures
    asyncpoll:{NS}:wake               channel: "space S has new interest"

Why pub/sub and not a stream: an observation is only news to a member listening now, and
the snapshot (``snap`` and ``done``) already holds the latest state for anyone who was not;
a stream would need trimming and a cursor per member to say the same. A member reads the
snapshot of its operations each time its subscription (re)starts, after which the channel
carries every change, so a member that joins or reconnects late misses nothing.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from typing import Any, Protocol

import anyio
from anyio.abc import TaskStatus

from .._errors import AsyncpollError
from .._models import AsyncOperation
from ._codec import (
    Failure,
    Observation,
    decode_id,
    decode_message,
    decode_record,
    encode_failure,
    encode_observation,
    encode_record,
    warn_once,
)
from ._config import RedisFleet, _import_coredis, _redacted

__all__ = ["Host", "Member"]

logger = logging.getLogger("asyncpoll")

_CHUNK = 5000  # IDs per command
# Hold the lease if free, or renew it if ours. ARGV[3] == "1": take a free lease.
# Returns 1 when the caller holds it afterwards, 2 when it is free (not taken), 0 when
# another member holds it. A key of the wrong type, or naming no live member (ARGV[4] is
# the prefix of the members' liveness keys), is garbage: it is removed, the lease free.
_LEASE = """
local kind = redis.call('type', KEYS[1]).ok
if kind ~= 'none' and kind ~= 'string' then redis.call('del', KEYS[1]) end
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end
if holder and (not string.match(holder, '^%x+$') or #holder > 64
    or redis.call('exists', ARGV[4] .. holder) == 0) then
  redis.call('del', KEYS[1])
  holder = false
end
if not holder then
  if ARGV[3] == '1' then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
  return 2
end
return 0
"""
_RELEASE = """
if redis.call('type', KEYS[1]).ok == 'string' and redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
# The union of the sets among KEYS, skipping any key that is not a set (garbage).
_UNION = """
local out, seen = {}, {}
for _, key in ipairs(KEYS) do
  if redis.call('type', key).ok == 'set' then
    for _, id in ipairs(redis.call('smembers', key)) do
      if not seen[id] then seen[id] = true; out[#out + 1] = id end
    end
  end
end
return out
"""
# Add ARGV[1] to the members (replacing a key of the wrong type), and list them.
_MEMBERS = """
local kind = redis.call('type', KEYS[1]).ok
if kind ~= 'none' and kind ~= 'set' then redis.call('del', KEYS[1]) end
redis.call('sadd', KEYS[1], ARGV[1])
return redis.call('smembers', KEYS[1])
"""


_SCRIPTS = {"lease": _LEASE, "release": _RELEASE, "union": _UNION, "members": _MEMBERS}


class Host(Protocol):
    """What a member needs from its Poller."""

    def fleet_apply(
        self, space: str, operations: Sequence[AsyncOperation], gone: Sequence[str]
    ) -> None:
        """Take observations of ``space`` made elsewhere (or read from the snapshot)."""

    def fleet_fail(self, space: str, ids: Sequence[str], error: AsyncpollError) -> None:
        """Fail the callers of ``ids`` of ``space`` (all of the space if empty)."""

    def fleet_interest(self, space: str, ids: set[str] | None) -> None:
        """The other members' operations of a space this member leads (``None``: it
        leads the space no more)."""

    def fleet_accepts(self, space: str, operation_id: str) -> bool:
        """True if ``operation_id`` (read from Redis) can be polled in ``space``."""

    def fleet_changed(self) -> None:
        """Leadership or the connection changed: look at the schedule again."""


class _Keys:
    def __init__(self, namespace: str) -> None:
        self.prefix = prefix = f"asyncpoll:{{{namespace}}}:"
        self.members = prefix + "members"
        self.obs = prefix + "obs"
        self.wake = prefix + "wake"

    def member(self, member: str) -> str:
        return f"{self.prefix}member:{member}"

    def want(self, space: str, member: str) -> str:
        return f"{self.prefix}want:{space}:{member}"

    def lead(self, space: str) -> str:
        return f"{self.prefix}lead:{space}"

    def snap(self, space: str) -> str:
        return f"{self.prefix}snap:{space}"

    def done(self, space: str, operation_id: str) -> str:
        return f"{self.prefix}done:{space}:{operation_id}"


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class Member:
    """A Poller's membership: run :meth:`run` in the Poller's task group.

    Calls from the Poller (:meth:`want`, :meth:`unwant`, :meth:`publish`, ...) only
    queue work and return at once; three tasks do the talking: the heartbeat (leases,
    liveness, the interest of others), the listener (the channel) and the flusher
    (interest, lookups and observations written out).
    """

    def __init__(self, fleet: RedisFleet, host: Host, terminal_memory: float) -> None:
        self.fleet = fleet
        self.id = secrets.token_hex(8)
        self.connected = False
        self.leading: set[str] = set()
        self.members: int = 1
        self._host = host
        self._keys = _Keys(fleet.namespace)
        self._lease_ms = max(1, int(fleet.lease * 1000))
        self._tick = fleet.lease / 4
        self._timeout = max(0.1, fleet.lease / 4)
        self._terminal_ms = max(1, int(terminal_memory * 1000))
        self._client: Any = None
        self._wanted: dict[str, dict[str, int]] = {}  # space -> ID -> local callers
        self._adds: dict[str, set[str]] = {}
        self._removes: dict[str, set[str]] = {}
        self._lookups: dict[str, set[str]] = {}
        self._outbox: list[tuple[str, Observation | Failure]] = []
        self._forgotten: dict[str, set[str]] = {}
        self._free: set[str] = set()  # spaces seen without a leader at the last beat
        self._resigned_until = -math.inf
        self._kick = anyio.Event()
        self._sync = anyio.Event()
        self._scripts: dict[str, Any] = {}
        self._lost_since: float | None = None
        self._stopped = False
        self._flushing = anyio.Lock()  # one flush at a time: adds and removes stay in order
        self._tasks: anyio.CancelScope | None = None
        self._listening: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<asyncpoll fleet member {self.id} of {self.fleet!r}>"

    # -- what the Poller calls (synchronous, queueing only) -----------------------------

    def leads(self, space: str) -> bool:
        """True if this member polls ``space`` itself: it holds the lease, or it cannot
        reach Redis (then it polls everything on its own)."""
        return not self.connected or space in self.leading

    def shares(self, space: str) -> bool:
        """True if this member polls ``space`` for the fleet (what it sees is shared)."""
        return self.connected and space in self.leading

    def want(self, keys: Iterable[tuple[str, str]]) -> None:
        """Local callers want ``keys`` (one call per caller, as :meth:`unwant`)."""
        for space, operation_id in keys:
            counts = self._wanted.get(space)
            if counts is None:
                counts = self._wanted[space] = {}
                self._sync.set()  # a new space: look for its leader (or lead it) now
            count = counts.get(operation_id, 0)
            counts[operation_id] = count + 1
            if not count:
                self._removes.get(space, set()).discard(operation_id)
                self._adds.setdefault(space, set()).add(operation_id)
                self._lookups.setdefault(space, set()).add(operation_id)
        self._kick.set()

    def unwant(self, keys: Iterable[tuple[str, str]]) -> None:
        """A local caller no longer wants ``keys``."""
        for space, operation_id in keys:
            counts = self._wanted.get(space)
            if counts is None or operation_id not in counts:
                continue
            count = counts[operation_id] - 1
            if count:
                counts[operation_id] = count
                continue
            del counts[operation_id]
            if not counts:
                del self._wanted[space]
            self._adds.get(space, set()).discard(operation_id)
            self._lookups.get(space, set()).discard(operation_id)
            self._removes.setdefault(space, set()).add(operation_id)
        self._kick.set()

    def publish(
        self, space: str, operations: Sequence[AsyncOperation], gone: Sequence[str]
    ) -> None:
        """Share what the leader of ``space`` saw (changes, terminal outcomes, absences)."""
        if self.connected:
            observation = Observation(self.id, space, tuple(operations), tuple(gone))
            self._outbox.append((space, observation))
            self._kick.set()

    def share_failure(
        self, space: str, kind: str, error: AsyncpollError, ids: Sequence[str] = ()
    ) -> None:
        """Share an error every member would get (see :func:`._codec.failure_kind`)."""
        if self.connected:
            self._outbox.append((space, Failure(self.id, space, kind, str(error), tuple(ids))))
            self._kick.set()

    def forget(self, space: str, operation_id: str) -> None:
        """The leader stopped polling ``operation_id`` (nobody wants it): drop its
        snapshot record."""
        if self.shares(space):
            self._forgotten.setdefault(space, set()).add(operation_id)
            self._kick.set()

    def resign(self) -> None:
        """Leave every lease to the others for two leases (this member's token was
        refused: another member's may still be good); released at the next beat, now.
        A member alone keeps its leases: nobody else would poll."""
        if self.members <= 1:
            return
        self._resigned_until = anyio.current_time() + 2 * self.fleet.lease
        self._sync.set()

    # -- the tasks ----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join the fleet and stay until :meth:`stop`; then leave it (bounded).

        Shielded from the cancellation of the Poller's task group: coredis's pub/sub,
        cancelled from outside together with its connection's tasks, unsubscribes on a
        closed stream and raises. :meth:`stop` ends the listener first, then the rest.
        """
        with anyio.CancelScope(shield=True):
            client, enter = self.fleet._connect(self._timeout)
            self._client = client
            async with AsyncExitStack() as stack:
                if enter:
                    await stack.enter_async_context(client)
                for name, source in _SCRIPTS.items():
                    self._scripts[name] = client.register_script(source)
                try:
                    async with anyio.create_task_group() as group:
                        self._tasks = group.cancel_scope
                        if self._stopped:
                            group.cancel_scope.cancel()
                        await group.start(self._heartbeat)
                        group.start_soon(self._listen)
                        group.start_soon(self._flusher)
                        task_status.started()
                finally:
                    with anyio.move_on_after(self._timeout * 2):
                        await self._leave()

    def stop(self) -> None:
        """End :meth:`run` (the Poller calls it as it closes)."""
        self._stopped = True
        if self._listening is not None:
            self._listening.cancel()
        if self._tasks is not None:
            self._tasks.cancel()

    async def _leave(self) -> None:
        """Write out what is still to share (the last outcomes seen), then release this
        member's leases and interest, so no request continues for it."""
        if not self.connected:
            return
        try:
            self._lookups.clear()  # nobody is left to read them
            await self._flush()
            for space in self.leading:
                await self._release(space)
            async with self._client.pipeline(transaction=False) as pipe:
                for space in self._wanted:
                    pipe.delete([self._keys.want(space, self.id)])
                    pipe.publish(self._keys.wake, space)
                pipe.srem(self._keys.members, [self.id])
                pipe.delete([self._keys.member(self.id)])
        except _errors() as exc:
            logger.debug("could not leave fleet %r cleanly: %s", self.fleet.namespace, exc)

    async def _heartbeat(self, *, task_status: TaskStatus[None]) -> None:
        started = False
        while True:
            try:
                with anyio.fail_after(self._timeout * 4):
                    await self._beat()
            except _errors() as exc:
                self._lost(exc)
            if not started:
                started = True
                task_status.started()
            with anyio.move_on_after(self._tick):
                await self._sync.wait()
                await anyio.sleep(0.05)  # a burst of wake-ups, one beat
            self._sync = anyio.Event()

    async def _beat(self) -> None:
        keys, client = self._keys, self._client
        rejoining = not self.connected
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(keys.member(self.id), b"1", px=self._lease_ms)
            renewed = {
                space: pipe.pexpire(keys.want(space, self.id), self._lease_ms)
                for space in self._wanted
            }
        lapsed = [space for space, request in renewed.items() if not await request]
        if rejoining or lapsed:
            # Redis forgot our interest (restarted, or we were away): tell it again.
            for space in self._wanted if rejoining else lapsed:
                self._adds.setdefault(space, set()).update(self._wanted.get(space, ()))
                self._lookups.setdefault(space, set()).update(self._wanted.get(space, ()))
            await self._flush()
        members = await self._live_members()
        await self._renew_leases(members)
        if rejoining:
            if self._lost_since is not None:
                logger.warning(
                    "fleet %r: Redis is back after %.1f s; sharing the schedule again",
                    self.fleet.namespace,
                    anyio.current_time() - self._lost_since,
                )
            self._lost_since = None
            self.connected = True
            self._host.fleet_changed()

    async def _live_members(self) -> list[str]:
        """The other members alive now (dead ones are removed from the set)."""
        keys, client = self._keys, self._client
        found = await self._scripts["members"](keys=[keys.members], args=[self.id])
        others = [m.decode() for m in found if isinstance(m, bytes) and m.isascii()]
        others = [m for m in others if m != self.id and m.isalnum() and len(m) <= 64]
        async with client.pipeline(transaction=False) as pipe:
            alive = [pipe.exists([keys.member(member)]) for member in others]
        live = [member for member, request in zip(others, alive, strict=True) if await request]
        dead = [member for member in others if member not in live]
        if dead:
            await client.srem(keys.members, dead)
        self.members = len(live) + 1
        return live

    async def _renew_leases(self, members: list[str]) -> None:
        keys = self._keys
        may_take = anyio.current_time() >= self._resigned_until
        for space in sorted(set(self._wanted) | self.leading):
            others = await self._interest(space, members) if space in self.leading else None
            if space in self.leading and not others and space not in self._wanted:
                # Nobody wants this space any more: leave it.
                await self._release(space)
                self._lose(space)
                continue
            if not may_take:
                # Resigned (its token was refused): the lease is left to the others.
                await self._release(space)
                if space in self.leading:
                    self._lose(space)
                continue
            # A member that leads nothing takes a free lease at once; one that leads
            # already waits one beat, so that leadership spreads over the fleet.
            take = not self.leading or space in self._free
            held = await self._scripts["lease"](
                keys=[keys.lead(space)],
                args=[self.id, str(self._lease_ms), "1" if take else "0", keys.member("")],
            )
            if held == 1:
                self._free.discard(space)
                if space not in self.leading:
                    self.leading.add(space)
                    others = await self._interest(space, members)
                    logger.info("fleet %r: leading space %r", self.fleet.namespace, space)
                self._host.fleet_interest(space, others or set())
                self._host.fleet_changed()
            else:
                if held == 2:
                    self._free.add(space)
                if space in self.leading:
                    self._lose(space)

    async def _release(self, space: str) -> None:
        """Give up the lease of ``space`` if this member holds it, and say so ("!S" on
        the wake channel): whoever wants the space takes it at once."""
        if await self._scripts["release"](keys=[self._keys.lead(space)], args=[self.id]):
            await self._client.publish(self._keys.wake, "!" + space)

    def _lose(self, space: str) -> None:
        self.leading.discard(space)
        self._host.fleet_interest(space, None)
        self._host.fleet_changed()

    async def _interest(self, space: str, members: list[str]) -> set[str]:
        """The operations the other live members want in ``space``, validated."""
        if not members:
            return set()
        want_keys = [self._keys.want(space, member) for member in members]
        found = await self._scripts["union"](keys=want_keys)
        where = self._keys.want(space, "*")
        ids = set()
        for value in found:
            operation_id = decode_id(value, where)
            if operation_id is not None and self._host.fleet_accepts(space, operation_id):
                ids.add(operation_id)
        return ids

    def _lost(self, error: BaseException) -> None:
        if self._lost_since is None:
            self._lost_since = anyio.current_time()
            where = _redacted(self.fleet._url) if self.fleet._url else "(the client given)"
            logger.warning(
                "fleet %r: Redis at %s unreachable (%s): polling on our own until it returns",
                self.fleet.namespace,
                where,
                type(error).__name__,
            )
        if self.connected or self.leading:
            self.connected = False
            for space in list(self.leading):
                self._lose(space)
            self._host.fleet_changed()
        self.members = 1
        self._outbox.clear()
        self._forgotten.clear()

    async def _listen(self) -> None:
        keys = self._keys
        while not self._stopped:
            try:
                async with self._client.pubsub(channels=[keys.obs, keys.wake]) as channel:
                    with anyio.CancelScope() as self._listening:
                        async for message in channel:
                            self._on_message(message)
            except _errors() as exc:
                logger.debug("fleet channel lost: %s", type(exc).__name__)
            except BaseExceptionGroup as group:
                # coredis's own task groups wrap what its tasks raised.
                lost, rest = group.split(_errors())
                if rest is not None:
                    raise rest from None
                logger.debug("fleet channel lost: %r", lost)
            if not self._stopped:
                await anyio.sleep(self._tick)

    def _on_message(self, message: Any) -> None:
        try:
            self._read_message(message)
        except Exception as exc:  # anyone who can write to Redis can publish anything
            warn_once(self._keys.obs, f"{type(exc).__name__} reading a message")

    def _read_message(self, message: Any) -> None:
        kind, channel, data = message.get("type"), message.get("channel"), message.get("data")
        if channel == self._keys.obs.encode():
            if kind == "subscribe":
                # (Re)subscribed: what was shared while we did not listen is in the snapshot.
                for space, counts in self._wanted.items():
                    self._lookups.setdefault(space, set()).update(counts)
                self._kick.set()
            elif kind == "message":
                self._on_shared(decode_message(data, self._keys.obs, ignore=self.id))
        elif channel == self._keys.wake.encode() and kind == "message":
            # New interest in a space: its leader picks it up now, and so does a member
            # that saw the space without a leader. "!S": S's leader left.
            named = data.decode(errors="replace") if isinstance(data, bytes) else ""
            if named.startswith("!"):
                if named[1:] in self._wanted:
                    self._free.add(named[1:])
                    self._sync.set()
            elif named in self.leading or (named in self._free and named in self._wanted):
                self._sync.set()

    def _on_shared(self, shared: Observation | Failure | None) -> None:
        if shared is None:  # unreadable, or our own
            return
        if isinstance(shared, Observation):
            self._host.fleet_apply(shared.space, shared.operations, shared.gone)
        elif not self.leads(shared.space):
            self._host.fleet_fail(shared.space, shared.ids, shared.error())

    async def _flusher(self) -> None:
        while True:
            await self._kick.wait()
            self._kick = anyio.Event()
            if not self.connected:
                continue  # re-sent in full by the heartbeat when Redis is back
            try:
                # Shielded (and bounded): what a flush took out of the queues is written
                # even if the Poller closes meanwhile, or it would be lost.
                with anyio.CancelScope(shield=True), anyio.fail_after(self._timeout * 4):
                    await self._flush()
            except _errors() as exc:
                self._lost(exc)

    async def _flush(self) -> None:
        async with self._flushing:
            await self._flush_now()

    async def _flush_now(self) -> None:
        keys = self._keys
        adds, self._adds = self._adds, {}
        removes, self._removes = self._removes, {}
        lookups, self._lookups = self._lookups, {}
        outbox, self._outbox = self._outbox, []
        forgotten, self._forgotten = self._forgotten, {}
        checked: list[tuple[str, Any]] = []  # (key, request) of writes garbage can refuse
        async with self._client.pipeline(transaction=False, raise_on_error=False) as pipe:
            for space, ids in adds.items():
                if ids:
                    key = keys.want(space, self.id)
                    checked += [(key, pipe.sadd(key, chunk)) for chunk in _chunks(sorted(ids))]
                    pipe.pexpire(key, self._lease_ms)
            for space, ids in removes.items():
                key = keys.want(space, self.id)
                checked += [(key, pipe.srem(key, chunk)) for chunk in _chunks(sorted(ids))]
            for space in adds.keys() | removes.keys():
                pipe.publish(keys.wake, space)
            for space, ids in forgotten.items():
                checked.append((keys.snap(space), pipe.hdel(keys.snap(space), sorted(ids))))
            for space, shared in outbox:
                checked += self._write(pipe, space, shared)
        await self._repair(checked)
        for space, ids in lookups.items():
            if ids:
                await self._look_up(space, sorted(ids))

    async def _repair(self, checked: list[tuple[str, Any]]) -> None:
        """Delete our keys that garbage of the wrong type made refuse a write; their
        content is written again (interest at the next beat, records at the next change)."""
        broken: set[str] = set()
        for key, request in checked:
            try:
                await request
            except _response_errors() as exc:
                warn_once(key, type(exc).__name__)
                broken.add(key)
        if broken:
            await self._client.delete(sorted(broken))
            for space, counts in self._wanted.items():
                if self._keys.want(space, self.id) in broken:
                    self._adds.setdefault(space, set()).update(counts)
                    self._kick.set()

    def _write(self, pipe: Any, space: str, shared: Observation | Failure) -> list[tuple[str, Any]]:
        """Queue ``shared`` on ``pipe``: its records, then the message; the writes that
        garbage could refuse are returned."""
        keys = self._keys
        if isinstance(shared, Failure):
            pipe.publish(keys.obs, encode_failure(shared))
            return []
        checked: list[tuple[str, Any]] = []
        snapshot: dict[str, bytes] = {}
        finished: list[str] = list(shared.gone)
        for operation in shared.operations:
            record = encode_record(operation)
            if operation.is_terminal:
                pipe.set(keys.done(space, operation.id), record, px=self._terminal_ms)
                finished.append(operation.id)
            else:
                snapshot[operation.id] = record
        if snapshot:
            checked.append((keys.snap(space), pipe.hset(keys.snap(space), snapshot)))
            # Unfinished records outlive their leader by a few leases at most.
            pipe.pexpire(keys.snap(space), self._lease_ms * 6)
        if finished:
            checked.append((keys.snap(space), pipe.hdel(keys.snap(space), finished)))
        pipe.publish(keys.obs, encode_observation(shared))
        return checked

    async def _look_up(self, space: str, ids: list[str]) -> None:
        """Read the snapshot and the terminal memory of ``ids``, for callers that just
        came (or a subscription that just restarted)."""
        keys = self._keys
        found: list[AsyncOperation] = []
        for chunk in _chunks(ids):
            async with self._client.pipeline(transaction=False, raise_on_error=False) as pipe:
                snapshot = pipe.hmget(keys.snap(space), list(chunk))
                done = pipe.mget([keys.done(space, i) for i in chunk])
            # Warned about once per kind of key and space, not per operation.
            for request, where in ((snapshot, keys.snap(space)), (done, keys.done(space, "*"))):
                try:
                    values = await request
                except _response_errors() as exc:
                    warn_once(where, type(exc).__name__)
                    continue
                for operation_id, value in zip(chunk, values, strict=True):
                    if value is None:
                        continue
                    record = decode_record(value, where)
                    if record is not None and record.id == operation_id:
                        found.append(record)
        if found:
            self._host.fleet_apply(space, found, ())


def _errors() -> tuple[type[BaseException], ...]:
    """What an unreachable or misbehaving Redis raises through coredis."""
    coredis = _import_coredis()
    return (
        coredis.exceptions.RedisError,
        OSError,
        TimeoutError,
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
        anyio.EndOfStream,
    )


def _response_errors() -> tuple[type[BaseException], ...]:
    return (_import_coredis().exceptions.ResponseError,)
