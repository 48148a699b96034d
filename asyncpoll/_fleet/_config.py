"""The public handle of a fleet: where its Redis is, its namespace, its lease."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .._validation import check_seconds

if TYPE_CHECKING:
    import coredis

__all__ = ["RedisFleet"]

_NAMESPACE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_SCHEMES = ("redis", "rediss", "unix")


def _import_coredis() -> Any:
    try:
        import coredis
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ImportError(
            "asyncpoll.RedisFleet needs coredis: pip install 'asyncpoll[fleet]'"
        ) from exc
    return coredis


def _redacted(url: str) -> str:
    """``url`` without its password (for reprs and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class RedisFleet:
    """Many processes (on many machines) sharing one polling schedule through Redis.

    Pass it to ``Poller(session, fleet=...)`` in every process of the fleet: each Poller
    becomes a member. Every member registers the operations its callers want; for each
    space one member holds a lease (renewed every ``lease / 4`` seconds, lapsing ``lease``
    seconds after its holder dies or loses Redis) and polls the union of every member's
    operations; the others get its observations through Redis. If Redis is unreachable,
    members poll on their own and rejoin when it returns.

    ``redis`` is a URL (``redis://``, ``rediss://`` for TLS, ``unix://``; a password in
    it works and never appears in reprs or logs) or a coredis client (``coredis.Redis``,
    one from ``coredis.Sentinel``, or ``coredis.RedisCluster``: every key of a namespace
    shares one hash tag, so one slot holds them), which is used as it is: enter it
    (``async with client:``) before the Poller, leave it after; it must not decode
    responses.
    ``namespace`` (1 to 64 letters, digits, ``_ . : -``) keeps one fleet's keys apart
    from another's. It is a trust boundary: every member of a namespace must hold
    credentials with the same access, since a member's callers get what another member
    saw. No token or header ever enters Redis. Needs the ``asyncpoll[fleet]`` extra.
    """

    def __init__(
        self,
        redis: str | coredis.Redis[bytes] | coredis.RedisCluster[bytes],
        *,
        namespace: str,
        lease: float = 10.0,
    ) -> None:
        module = _import_coredis()
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise ValueError(
                "namespace must be 1 to 64 letters, digits, '_', '.', ':' or '-', "
                f"got {namespace!r}"
            )
        self.namespace = namespace
        self.lease = check_seconds("lease", lease, allow_zero=False)
        if self.lease < 0.2:
            raise ValueError(f"lease must be at least 0.2 seconds, got {lease!r}")
        self._url: str | None = None
        self._client: coredis.Redis[bytes] | coredis.RedisCluster[bytes] | None = None
        if isinstance(redis, str):
            scheme = urlsplit(redis).scheme
            if scheme not in _SCHEMES:
                raise ValueError(
                    f"redis must be a redis://, rediss:// or unix:// URL, got {_redacted(redis)!r}"
                )
            self._url = redis
        elif isinstance(redis, module.Redis | module.RedisCluster):
            if redis.decode_responses:
                raise ValueError("the coredis client must not decode responses (decode_responses)")
            self._client = redis
        else:
            raise TypeError(
                f"redis must be a URL, a coredis.Redis or a coredis.RedisCluster, "
                f"got {type(redis).__name__}"
            )

    def __repr__(self) -> str:
        where = _redacted(self._url) if self._url is not None else "<coredis.Redis>"
        return f"<asyncpoll.RedisFleet {where} namespace={self.namespace!r} lease={self.lease:g}>"

    def _connect(
        self, timeout: float
    ) -> tuple[coredis.Redis[bytes] | coredis.RedisCluster[bytes], bool]:
        """The client a member uses, and whether the member must enter it itself."""
        if self._client is not None:
            return self._client, False
        module = _import_coredis()
        assert self._url is not None
        client: coredis.Redis[bytes] = module.Redis.from_url(
            self._url,
            stream_timeout=timeout,
            connect_timeout=timeout,
            # Our own fallback and rejoin handle an unreachable Redis: no silent retries.
            retry_policy=module.retry.NoRetryPolicy(),
        )
        return client, True
