"""Network targets: the rule-language and --net-allow forms."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockade.errors import PolicyError
from stockade.policy.model import NetPattern, PortRange
from stockade.policy.netspec import (
    ALL_PORTS,
    parse_net_allow,
    parse_net_pattern,
    parse_ports,
    validate_hostname,
)

# -- ports ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("80", ((80, 80),)),
        ("1024-65535", ((1024, 65535),)),
        ("443,80", ((80, 80), (443, 443))),
        ("80-90,85-95", ((80, 95),)),
        ("1-2,3-4", ((1, 4),)),  # adjacent ranges merge: one spelling per set
        ("*", ((0, 65535),)),
        ("0", ((0, 0),)),
        ("65535", ((65535, 65535),)),
        (" 80 , 81 ", ((80, 81),)),
        (8080, ((8080, 8080),)),
    ],
)
def test_parse_ports(text: str | int, ranges: tuple[tuple[int, int], ...]) -> None:
    assert parse_ports(text) == tuple(PortRange(a, b) for a, b in ranges)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("70000", "bad port '70000': expected N, N-M, N,M or * with ports 0-65535"),
        ("9-3", "bad port range '9-3'"),
        ("", "bad port ''"),
        ("80,", "bad port '80,'"),
        ("http", "bad port 'http'"),
        ("-1", "bad port '-1'"),
        ("1-70000", "bad port '1-70000'"),
        ("٨٠", "bad port"),  # non-ASCII digits are not ports
    ],
)
def test_parse_ports_errors(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_ports(text)
    assert message in str(info.value)


@given(st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535)), min_size=1))
def test_ports_sorted_merged(pairs: list[tuple[int, int]]) -> None:
    text = ",".join(f"{min(a, b)}-{max(a, b)}" for a, b in pairs)
    ranges = parse_ports(text)
    covered = {p for a, b in pairs for p in range(min(a, b), max(a, b) + 1)}
    assert {p for r in ranges for p in range(r.first, r.last + 1)} == covered
    for earlier, later in itertools.pairwise(ranges):
        assert earlier.last + 1 < later.first


# -- rule-language patterns ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("127.0.0.1!8080", "127.0.0.1/32!8080"),
        ("127.0.0.0/8!8080", "127.0.0.0/8!8080"),
        ("10.1.2.3/8!22", "10.0.0.0/8!22"),  # host bits cleared (strict=False)
        ("::1!1024-65535", "::1/128!1024-65535"),
        ("fe80::/10!*", "fe80::/10!*"),
        ("Example.COM", "example.com!*"),
        ("example.com.!443", "example.com!443"),
        ("*", "*!*"),
        ("*!53", "*!53"),
        ("*!443,80", "*!80,443"),
    ],
)
def test_parse_net_pattern(text: str, canonical: str) -> None:
    assert str(parse_net_pattern(text)) == canonical
    # The canonical text is a fixed point.
    assert str(parse_net_pattern(canonical)) == canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1", "an address needs !PORTS"),
        ("127.0.0.1:80", "does not appear to be an IPv4 or IPv6"),
        ("1.2.3!80", "bad address '1.2.3!80'"),
        ("300.1.1.1!80", "bad address"),
        ("10.0.0.0/33!80", "bad address"),
        ("host_name!80", "bad hostname"),
        ("-bad.com", "bad hostname"),
        ("a..b", "bad hostname"),
        ("*.example.com", "bad hostname"),
        ("x!80!81", "more than one '!'"),
        ("!80", "empty address"),
        ("host/8!80", "a prefix needs an IP address"),
        ("fe80::1%eth0!80", "drop the %SCOPE"),
        ("\u212aexample.com", "expected ASCII"),
        ("host!70000", "bad port '70000'"),
    ],
)
def test_parse_net_pattern_errors(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_net_pattern(text)
    assert message in str(info.value)


def test_hostname_length() -> None:
    assert validate_hostname("a" * 63 + ".com") == "a" * 63 + ".com"
    with pytest.raises(PolicyError, match="labels of 1-63"):
        validate_hostname("a" * 64 + ".com")
    with pytest.raises(PolicyError, match="1 to 253"):
        validate_hostname(".".join(["a" * 60] * 5))


# -- --net-allow (SPEC section 2) ----------------------------------------------


@pytest.mark.parametrize(
    ("spec", "host", "ports"),
    [
        ("*", "*", ALL_PORTS),
        ("*:443", "*", (PortRange(443, 443),)),
        ("*:*", "*", ALL_PORTS),
        ("*:80,443", "*", (PortRange(80, 80), PortRange(443, 443))),
        ("example.com", "example.com", ALL_PORTS),
        ("example.com:443", "example.com", (PortRange(443, 443),)),
        ("example.com:8000-8100", "example.com", (PortRange(8000, 8100),)),
        ("127.0.0.1", "127.0.0.1/32", ALL_PORTS),
        ("127.0.0.1:8080", "127.0.0.1/32", (PortRange(8080, 8080),)),
        ("10.0.0.0/8", "10.0.0.0/8", ALL_PORTS),
        ("10.0.0.0/8:22", "10.0.0.0/8", (PortRange(22, 22),)),
        ("[::1]:443", "::1/128", (PortRange(443, 443),)),
        ("[fe80::/10]:22", "fe80::/10", (PortRange(22, 22),)),
        ("[::1]", "::1/128", ALL_PORTS),
        ("::1", "::1/128", ALL_PORTS),
        ("fe80::/10", "fe80::/10", ALL_PORTS),
        ("2001:db8::1", "2001:db8::1/128", ALL_PORTS),
    ],
)
def test_parse_net_allow(spec: str, host: str, ports: tuple[PortRange, ...]) -> None:
    assert parse_net_allow(spec) == NetPattern(host, ports)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("[1.2.3.4]:80", "brackets are for IPv6"),
        ("[::1", "expected *:PORTS, HOST[:PORTS]"),
        ("[::1]80", "expected *:PORTS, HOST[:PORTS]"),
        ("host:70000", "bad port '70000'"),
        ("host:", "bad port ''"),
        (":80", "empty address"),
        ("1.2.3:80", "bad address"),
        ("a:b:c", "bad address"),
        ("bad_host:80", "bad hostname"),
    ],
)
def test_parse_net_allow_errors(spec: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_net_allow(spec)
    assert message in str(info.value)


# -- properties ------------------------------------------------------------------


port_sets = st.lists(
    st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(lambda t: (min(t), max(t))),
    min_size=1,
    max_size=4,
).map(lambda rs: parse_ports(",".join(f"{a}-{b}" for a, b in rs)))
networks = st.one_of(
    st.ip_addresses(v=4).flatmap(
        lambda a: st.integers(0, 32).map(
            lambda p: str(ipaddress.ip_network(f"{a}/{p}", strict=False))
        )
    ),
    st.ip_addresses(v=6).flatmap(
        lambda a: st.integers(0, 128).map(
            lambda p: str(ipaddress.ip_network(f"{a}/{p}", strict=False))
        )
    ),
)
# An all-numeric name is taken as a (bad) address on purpose, so names here
# end in a label that starts with a letter.
hostnames = st.from_regex(
    r"([a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\.){0,3}[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True
)
net_patterns = st.builds(NetPattern, st.one_of(st.just("*"), networks, hostnames), port_sets)


@given(net_patterns)
def test_net_pattern_round_trip(pattern: NetPattern) -> None:
    assert parse_net_pattern(str(pattern)) == pattern


@given(networks, port_sets)
def test_net_allow_agrees_with_rule_form(network: str, ports: tuple[PortRange, ...]) -> None:
    text = ",".join(str(p) for p in ports)
    spec = f"[{network}]:{text}" if ":" in network else f"{network}:{text}"
    assert parse_net_allow(spec) == NetPattern(network, ports)
