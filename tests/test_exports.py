"""Guards of the public surface: ``asyncpoll.__all__`` and ``asyncpoll.testing.__all__``.

The expected names are spelled out so that any change to the public API is deliberate
(as httpx's ``tests/test_exported_members.py`` does).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from types import ModuleType

import pytest

import asyncpoll
import asyncpoll._errors
import asyncpoll.testing

EXPECTED_ASYNCPOLL = [
    "APIError",
    "AiohttpTransport",
    "AsyncOperation",
    "AsyncTransport",
    "AsyncpollError",
    "AuthenticationError",
    "BlockingPoller",
    "ConnectError",
    "Endpoint",
    "HttpxTransport",
    "InvalidResponseError",
    "MockTransport",
    "OperationError",
    "OperationFailed",
    "OperationNotFound",
    "OperationState",
    "PermissionDeniedError",
    "PollInterval",
    "Poller",
    "PollerStatistics",
    "ProgressEvent",
    "RateLimitedError",
    "RedisFleet",
    "Request",
    "RequestTimeout",
    "Response",
    "ResponseTooLarge",
    "RetryPolicy",
    "Session",
    "SpaceNotFoundError",
    "TokenProvider",
    "TransportError",
    "decode_operations",
    "parse_retry_after",
]

EXPECTED_TESTING = [
    "Faults",
    "LoggedRequest",
    "ScriptedResponse",
    "SimulatedServer",
    "WireVariant",
]

# Type aliases cannot carry a docstring or a __module__ of their own (Python 3.11).
ALIASES = {"TokenProvider"}

MODULES = [
    pytest.param(asyncpoll, EXPECTED_ASYNCPOLL, id="asyncpoll"),
    pytest.param(asyncpoll.testing, EXPECTED_TESTING, id="asyncpoll.testing"),
]


@pytest.mark.parametrize(("module", "expected"), MODULES)
def test_all_is_exactly_the_expected_names(module: ModuleType, expected: list[str]) -> None:
    assert module.__all__ == expected


@pytest.mark.parametrize(("module", "expected"), MODULES)
def test_all_is_sorted_and_unique(module: ModuleType, expected: list[str]) -> None:
    assert module.__all__ == sorted(module.__all__)
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize(("module", "expected"), MODULES)
def test_every_name_exists(module: ModuleType, expected: list[str]) -> None:
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize(("module", "expected"), MODULES)
def test_star_import_gives_exactly_all(module: ModuleType, expected: list[str]) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module.__name__} import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(expected)


@pytest.mark.parametrize(("module", "expected"), MODULES)
def test_public_objects_are_documented_and_read_as_the_package(
    module: ModuleType, expected: list[str]
) -> None:
    for name in module.__all__:
        if name in ALIASES:
            continue
        obj = getattr(module, name)
        assert inspect.isclass(obj) or inspect.isfunction(obj), name
        # A class's own __doc__ (not inherited): every public name documents itself.
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
        assert obj.__module__ == module.__name__, name
        assert obj.__qualname__ == name


@pytest.mark.parametrize(("module", "expected"), MODULES)
def test_public_methods_are_documented(module: ModuleType, expected: list[str]) -> None:
    for name in module.__all__:
        obj = getattr(module, name)
        if not inspect.isclass(obj):
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            if isinstance(value, staticmethod | classmethod):
                value = value.__func__
            if inspect.isfunction(value) or isinstance(value, property):
                assert (value.__doc__ or "").strip(), f"{name}.{attr} has no docstring"


def test_token_provider_alias() -> None:
    assert asyncpoll.TokenProvider == Callable[[], Awaitable[str]]


def test_version_is_a_string() -> None:
    assert isinstance(asyncpoll.__version__, str)
    assert asyncpoll.__version__


def test_the_version_has_one_source() -> None:
    import importlib.metadata
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text("utf-8"))
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert importlib.metadata.version("asyncpoll") == asyncpoll.__version__


def test_error_tree() -> None:
    api = [
        asyncpoll.AuthenticationError,
        asyncpoll.PermissionDeniedError,
        asyncpoll.SpaceNotFoundError,
        asyncpoll.RateLimitedError,
    ]
    transport = [
        asyncpoll.ConnectError,
        asyncpoll.RequestTimeout,
        asyncpoll.ResponseTooLarge,
        asyncpoll.InvalidResponseError,
    ]
    for cls in api:
        assert issubclass(cls, asyncpoll.APIError)
    for cls in transport:
        assert issubclass(cls, asyncpoll.TransportError)
    for cls in [
        asyncpoll.APIError,
        asyncpoll.TransportError,
        asyncpoll.OperationFailed,
        asyncpoll.OperationNotFound,
    ]:
        assert issubclass(cls, asyncpoll.AsyncpollError)
    assert not issubclass(asyncpoll.TransportError, asyncpoll.APIError)
    # The module docstring draws the tree: every error class appears in it.
    tree = asyncpoll._errors.__doc__ or ""
    for cls in [*api, *transport, asyncpoll.APIError, asyncpoll.TransportError]:
        assert cls.__name__ in tree
