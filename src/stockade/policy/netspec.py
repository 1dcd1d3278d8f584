"""Network targets: the rule-language and command-line spellings.

Two syntaxes name the same thing, a :class:`~stockade.policy.model.NetPattern`
(an address set and a port set):

* the rule language (SPEC section 4) separates ports with ``!``, so that an
  IPv6 address needs no brackets: ``127.0.0.0/8!8080``, ``::1!1024-65535``,
  ``example.com`` (all ports), ``example.com!443``, ``*!53``, ``*``;
* ``--net-allow`` (SPEC section 2) uses the familiar ``:``:
  ``127.0.0.1:8080``, ``[::1]:443``, ``example.com``, ``*:443``, ``*``.

Both produce the canonical form that ``str(NetPattern)`` prints: addresses
as networks (``127.0.0.1`` becomes ``127.0.0.1/32``, host bits cleared),
hostnames case-folded, ports sorted and merged.  In the rule language an
address must carry its ``!PORTS``; a hostname or ``*`` without ports means
every port.
"""

from __future__ import annotations

import re

from stockade.errors import PolicyError
from stockade.policy.model import NetPattern, PortRange

__all__ = [
    "ALL_PORTS",
    "parse_net_allow",
    "parse_net_pattern",
    "parse_ports",
    "validate_hostname",
]

MAX_PORT = 65535
ALL_PORTS: tuple[PortRange, ...] = (PortRange(0, MAX_PORT),)

_RULE_FORMS = "expected ADDR[/PREFIX]!PORTS, HOST[!PORTS], *!PORTS or *"
_CLI_FORMS = "expected *:PORTS, HOST[:PORTS], IP[/PREFIX][:PORTS], [IPV6[/PREFIX]]:PORTS or *"
_PORT_FORMS = "expected N, N-M, N,M or * with ports 0-65535"

_PORT_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+))?", re.ASCII)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
# A dotted run of digits is an attempt at an IPv4 address, never a hostname:
# "10.1" must not silently become a name that resolves somewhere else.
_NUMERIC_HOST = re.compile(r"[0-9./]+", re.ASCII)


def parse_ports(text: str | int) -> tuple[PortRange, ...]:
    """Parse ``N``, ``N-M``, comma lists of those, or ``*``.

    Returns sorted, merged, non-overlapping ranges.  Raises
    :class:`~stockade.errors.PolicyError` naming the bad item.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise PolicyError(f"bad ports {text!r}: {_PORT_FORMS}")
    if isinstance(text, int):
        text = str(text)
    ranges: list[PortRange] = []
    items = text.split(",")
    for raw in items:
        item = raw.strip()
        if item == "*":
            return ALL_PORTS
        m = _PORT_ITEM.fullmatch(item)
        if m is None:
            shown = item if item else text
            raise PolicyError(f"bad port {shown!r}: {_PORT_FORMS}")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        if last > MAX_PORT or first > MAX_PORT:
            raise PolicyError(f"bad port {item!r}: {_PORT_FORMS}")
        if first > last:
            raise PolicyError(f"bad port range {item!r}: {_PORT_FORMS} and N <= M")
        ranges.append(PortRange(first, last))
    return _merge(ranges)


def _merge(ranges: list[PortRange]) -> tuple[PortRange, ...]:
    merged: list[PortRange] = []
    for r in sorted(ranges):
        # Adjacent ranges merge too, so that every port set has one spelling.
        if merged and r.first <= merged[-1].last + 1:
            if r.last > merged[-1].last:
                merged[-1] = PortRange(merged[-1].first, r.last)
        else:
            merged.append(r)
    return tuple(merged)


def validate_hostname(name: str) -> str:
    """Check an RFC 1123 hostname; return it case-folded without a final dot.

    Raises :class:`~stockade.errors.PolicyError`.
    """
    # ASCII first: str.lower() maps some non-ASCII letters to ASCII ones
    # (KELVIN SIGN to "k"), which would let a look-alike name through.
    if not name.isascii():
        raise PolicyError(f"bad hostname {name!r}: expected ASCII (use the xn-- form)")
    host = name.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        raise PolicyError(f"bad hostname {name!r}: expected 1 to 253 characters")
    for label in host.split("."):
        if _LABEL.fullmatch(label) is None:
            raise PolicyError(
                f"bad hostname {name!r}: expected labels of 1-63 letters, digits "
                "and '-', not starting or ending with '-'"
            )
    return host


def _parse_address(text: str, shown: str) -> str:
    """An IP address or network in canonical CIDR form."""
    if "%" in text:
        # A peer address never carries a scope id, so the rule could not match.
        raise PolicyError(f"bad address {shown!r}: drop the %SCOPE; addresses match without it")
    try:
        import ipaddress  # only when an address is parsed: it costs start-up time

        net = ipaddress.ip_network(text, strict=False)
    except ValueError as err:
        raise PolicyError(f"bad address {shown!r}: {err}") from None
    return str(net)


def _parse_host(text: str, shown: str, forms: str) -> tuple[str, bool]:
    """Return (canonical host, is an address) for an address, ``*`` or a name."""
    if not text:
        raise PolicyError(f"bad network target {shown!r}: empty address; {forms}")
    if text == "*":
        return "*", False
    if ":" in text or _NUMERIC_HOST.fullmatch(text):
        return _parse_address(text, shown), True
    if "/" in text:
        raise PolicyError(f"bad address {shown!r}: a prefix needs an IP address; {forms}")
    return validate_hostname(text), False


def parse_net_pattern(text: str) -> NetPattern:
    """Parse a rule-language network pattern.

    Forms: ``ADDR[/PREFIX]!PORTS``, ``HOST[!PORTS]``, ``*!PORTS``, ``*``.
    Raises :class:`~stockade.errors.PolicyError` with the expected forms.
    """
    host_text, sep, ports_text = text.partition("!")
    host, is_address = _parse_host(host_text, text, _RULE_FORMS)
    if not sep:
        if is_address:
            raise PolicyError(
                f"bad network target {text!r}: an address needs !PORTS; {_RULE_FORMS}"
            )
        return NetPattern(host, ALL_PORTS)
    if "!" in ports_text:
        raise PolicyError(f"bad network target {text!r}: more than one '!'; {_RULE_FORMS}")
    return NetPattern(host, parse_ports(ports_text))


def parse_net_allow(spec: str) -> NetPattern:
    """Parse a ``--net-allow`` target (SPEC section 2).

    Forms: ``*:PORTS``, ``HOST[:PORTS]``, ``IP[/PREFIX][:PORTS]``,
    ``[IPV6[/PREFIX]]:PORTS`` and ``*``; a bare IPv6 address or network
    without brackets (``::1``, ``fe80::/10``) means all its ports.  Raises
    :class:`~stockade.errors.PolicyError` with the expected forms.
    """
    if spec.startswith("["):
        inner, sep, rest = spec[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise PolicyError(f"bad network target {spec!r}: {_CLI_FORMS}")
        if ":" not in inner:
            raise PolicyError(
                f"bad network target {spec!r}: brackets are for IPv6 addresses; {_CLI_FORMS}"
            )
        host = _parse_address(inner, spec)
        return NetPattern(host, parse_ports(rest[1:]) if rest else ALL_PORTS)
    if spec.count(":") > 1:
        # Unbracketed IPv6: the colons belong to the address.
        return NetPattern(_parse_address(spec, spec), ALL_PORTS)
    host_text, sep, ports_text = spec.partition(":")
    host, _ = _parse_host(host_text, spec, _CLI_FORMS)
    return NetPattern(host, parse_ports(ports_text) if sep else ALL_PORTS)
