"""A real ``redis-server`` for tests (arq workers, fleets of processes).

:func:`redis_server` yields the URL of a running Redis: ``REDIS_URL``'s if it is set, else
a :class:`~asyncpoll.testing._redis.RedisProcess` started here (the one the command
line's ``demo --fleet`` uses) and killed afterwards. Without either it fails with a message
that says what to install: a test that needs Redis must never be skipped in silence
(``.ci/run`` installs ``redis-server``). A test that kills or restarts Redis makes its own
:class:`RedisProcess` (never ``REDIS_URL``'s server).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from asyncpoll.testing._redis import RedisProcess, RedisUnavailable

__all__ = ["RedisProcess", "RedisUnavailable", "redis_server"]

_ATTEMPTS = 3  # a free port can be taken by someone else before redis-server binds it


@contextmanager
def redis_server() -> Iterator[str]:
    """Yield the URL (``redis://127.0.0.1:PORT``) of a running Redis: ``REDIS_URL`` if it
    is set, else a ``redis-server`` started here and killed on exit.

    Raises :class:`RedisUnavailable` if ``redis-server`` is not on the ``PATH`` (and
    ``REDIS_URL`` is unset) or does not come up.
    """
    existing = os.environ.get("REDIS_URL")
    if existing:
        yield existing
        return
    if shutil.which("redis-server") is None:
        raise RedisUnavailable(
            "redis-server is not on the PATH and REDIS_URL is not set: install it "
            "(apt-get install redis-server, as .ci/run does) or set REDIS_URL=redis://HOST:PORT"
        )
    error: RedisUnavailable | None = None
    for _ in range(_ATTEMPTS):
        redis = RedisProcess()
        try:
            redis.start()
        except RedisUnavailable as exc:
            redis.close()
            error = exc
            continue
        try:
            yield redis.url
        finally:
            redis.close()
        return
    assert error is not None
    raise error
