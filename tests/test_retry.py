"""RetryPolicy (backoff with full jitter) and parse_retry_after (seconds or HTTP dates)."""

from __future__ import annotations

import email.utils
import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncpoll import RetryPolicy, parse_retry_after

NOW = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)
DAY = 86_400.0


def http_date(when: datetime) -> str:
    return email.utils.format_datetime(when, usegmt=True)


# -- parse_retry_after ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("1", 1.0),
        ("120", 120.0),
        ("  7  ", 7.0),
        ("0.25", 0.25),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("86400", DAY),
        ("86401", DAY),
        ("999999999999", DAY),
        ("1e400", DAY),
        ("inf", DAY),
    ],
)
def test_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    "value", [None, "", "   ", "soon", "nan", "12 seconds", "1,5", "Mon, 99 Foo 2026", "0x10"]
)
def test_unreadable_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_http_date_in_the_future() -> None:
    assert parse_retry_after(http_date(NOW + timedelta(seconds=90)), now=NOW) == 90.0


def test_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after(http_date(NOW - timedelta(hours=3)), now=NOW) == 0.0


def test_http_date_far_ahead_is_capped_at_a_day() -> None:
    assert parse_retry_after(http_date(NOW + timedelta(days=400)), now=NOW) == DAY


def test_http_date_other_formats() -> None:
    # RFC 850 and asctime forms are obsolete but still legal in Retry-After.
    assert parse_retry_after("Saturday, 28-Nov-26 10:01:00 GMT", now=NOW) == 60.0
    assert parse_retry_after("Sat Nov 28 10:00:30 2026", now=NOW) == 30.0


def test_http_date_without_now_uses_the_clock() -> None:
    ahead = datetime.now(UTC) + timedelta(seconds=120)
    seconds = parse_retry_after(http_date(ahead))
    assert seconds is not None
    # The date has whole seconds and the clock moves on: generous bounds, no timing claim.
    assert 100.0 <= seconds <= 120.0


@given(st.text())
def test_any_text_is_bounded_seconds_or_none(value: str) -> None:
    seconds = parse_retry_after(value, now=NOW)
    assert seconds is None or (isinstance(seconds, float) and 0.0 <= seconds <= DAY)


@given(
    st.one_of(
        st.floats(allow_nan=False).map(repr),
        st.integers().map(str),
        st.datetimes(timezones=st.just(UTC)).map(http_date),
    )
)
def test_plausible_values_are_bounded(value: str) -> None:
    seconds = parse_retry_after(value, now=NOW)
    assert seconds is not None
    assert 0.0 <= seconds <= DAY


# -- RetryPolicy ----------------------------------------------------------------------------


@given(
    initial=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    maximum=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    retry=st.integers(min_value=1, max_value=10_000),
    seed=st.integers(),
)
def test_backoff_within_full_jitter_bounds(
    initial: float, maximum: float, retry: int, seed: int
) -> None:
    policy = RetryPolicy(initial=initial, maximum=maximum)
    delay = policy.backoff(retry, random.Random(seed))
    ceiling = min(maximum, initial * 2.0 ** min(retry - 1, 1000))
    assert math.isfinite(delay)
    assert 0.0 <= delay <= ceiling


def test_backoff_grows_then_caps() -> None:
    policy = RetryPolicy(initial=1.0, maximum=8.0)
    rng = random.Random(0)
    # With full jitter, the maximum of many draws approaches the ceiling of each retry.
    ceilings = [max(policy.backoff(n, rng) for _ in range(2000)) for n in range(1, 7)]
    for got, ceiling in zip(ceilings, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0], strict=True):
        assert 0.9 * ceiling <= got <= ceiling


def test_defaults_and_validation() -> None:
    policy = RetryPolicy()
    assert policy.attempts >= 1
    assert policy.timeout > 0
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="initial"):
        RetryPolicy(initial=-1.0)
    with pytest.raises(ValueError, match="maximum"):
        RetryPolicy(maximum=-1.0)
    with pytest.raises(ValueError, match="timeout"):
        RetryPolicy(timeout=-1.0)
