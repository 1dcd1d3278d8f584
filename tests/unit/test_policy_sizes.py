"""Sizes, durations and rlimits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockade.errors import PolicyError
from stockade.policy.model import Rlimit
from stockade.policy.sizes import (
    RLIMIT_NAMES,
    format_rlimit_value,
    format_size,
    make_rlimit,
    parse_duration,
    parse_rlimit,
    parse_size,
)

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512M", 512 * M),
        ("512m", 512 * M),
        ("512MB", 512 * M),
        ("512MiB", 512 * M),
        ("512mib", 512 * M),
        ("2G", 2 * G),
        ("1T", T),
        ("4K", 4 * K),
        ("1.5G", 3 * G // 2),
        ("1.1K", 1126),  # rounded down to whole bytes
        ("4096", 4096),
        ("4096B", 4096),
        (" 2 G ", 2 * G),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "0", "0.1", "-1", "1X", "1iB", "1.5.5G", "1e3", -5, 0])
def test_parse_size_errors(text: str | int) -> None:
    with pytest.raises(PolicyError, match='expected a size like "512M"'):
        parse_size(text)


@pytest.mark.parametrize("value", [[1], True, None, 1.5])
def test_parse_size_wrong_type(value: object) -> None:
    with pytest.raises(PolicyError) as info:
        parse_size(value)  # type: ignore[arg-type]
    assert str(info.value) == f'expected a size like "512M" (got {value!r})'


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (512 * M, "512M"),
        (1000, "1000"),
        (1536, "1536"),
        (1536 * K, "1536K"),
        (3 * T, "3T"),
        (0, "0"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@given(st.integers(1, 1 << 62))
def test_size_round_trip(n: int) -> None:
    text = format_size(n)
    assert parse_size(text) == n
    # Shortest: no larger unit divides it.
    assert len(text) <= len(str(n))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("1.5", 1.5), ("2m", 120.0), ("1h", 3600.0), ("10s", 10.0), ("0.5S", 0.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", [30, 1.5])
def test_parse_duration_numbers(value: float) -> None:
    assert parse_duration(value) == float(value)


@pytest.mark.parametrize(
    "value", ["0", "-1", "", "1d", "inf", "nan", 0, -1.0, float("inf"), float("nan"), True, [1]]
)
def test_parse_duration_errors(value: object) -> None:
    with pytest.raises(PolicyError, match="expected seconds like 30"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("nofile=256", Rlimit("nofile", 256, 256)),
        ("core=0", Rlimit("core", 0, 0)),
        ("NOFILE=256:1024", Rlimit("nofile", 256, 1024)),
        ("RLIMIT_NOFILE=256", Rlimit("nofile", 256, 256)),
        ("rlimit_stack=8M", Rlimit("stack", 8 * M, 8 * M)),
        ("as=1G:2G", Rlimit("as", G, 2 * G)),
        ("as=unlimited", Rlimit("as", None, None)),
        ("cpu=10:infinity", Rlimit("cpu", 10, None)),
        ("cpu=INFINITY", Rlimit("cpu", None, None)),
        ("fsize=4096", Rlimit("fsize", 4096, 4096)),
    ],
)
def test_parse_rlimit(text: str, limit: Rlimit) -> None:
    assert parse_rlimit(text) == limit


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nofile", "expected NAME=VALUE or NAME=SOFT:HARD"),
        ("files=1", "unknown rlimit 'files'; expected one of as, core"),
        ("nofile=1K", "expected an integer, 'unlimited' or SOFT:HARD"),
        ("stack=lots", 'expected an integer, a size like "64M"'),
        ("nofile=2:1", "expected SOFT <= HARD"),
        ("nofile=unlimited:1", "expected SOFT <= HARD"),
        ("nofile=-1", "expected an integer"),
        ("nofile=", "expected an integer"),
        ("nofile=1:", "expected an integer"),
        (f"nofile={1 << 64}", "below 2**64-1"),
    ],
)
def test_parse_rlimit_errors(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_rlimit(text)
    assert message in str(info.value)


def test_make_rlimit_int() -> None:
    assert make_rlimit("nofile", 256) == Rlimit("nofile", 256, 256)
    with pytest.raises(PolicyError, match="expected 0 or more"):
        make_rlimit("nofile", -1)
    with pytest.raises(PolicyError, match="expected an integer or a string"):
        make_rlimit("nofile", True)


limits = st.builds(
    lambda name, a, b: Rlimit(name, *sorted((a, b), key=lambda v: (v is None, v or 0))),
    st.sampled_from(RLIMIT_NAMES),
    st.one_of(st.none(), st.integers(0, (1 << 64) - 2)),
    st.one_of(st.none(), st.integers(0, (1 << 64) - 2)),
)


@given(limits)
def test_rlimit_text_round_trip(limit: Rlimit) -> None:
    assert make_rlimit(limit.name, format_rlimit_value(limit)) == limit
