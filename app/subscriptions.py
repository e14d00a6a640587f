"""Webhook subscriptions: who gets which events, at which URL, signed with which secret.

A subscription's URL is checked when it is saved (and again by the deliverer when it
connects, so DNS rebinding does not get through): the host must resolve only to public
addresses — not loopback, private, link-local (cloud metadata lives there), multicast,
reserved or unspecified, nor an IPv6 address carrying an IPv4 one (NAT64, 6to4, Teredo,
IPv4-compatible or -mapped) — unless ``CIRELAY_DELIVERY_ALLOWED_NETWORKS`` permits the network.
Secrets are in Standard Webhooks form (``whsec_`` + base64 of 24 random bytes), returned once;
rotating keeps the previous secret valid (and signing) for a grace period.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
import socket
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from app.errors import UnprocessableError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_TYPE = re.compile(r"\*|[a-z0-9]+(\.[a-z0-9_]+)*(\.\*)?")
MAX_EVENT_TYPES = 50


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


#: IPv6 ranges whose addresses carry an IPv4 address that some translator or tunnel (ours,
#: the network's or the kernel's) would reach instead: NAT64 (RFC 6052, RFC 8215), 6to4,
#: Teredo, IPv4-compatible, IPv4-mapped and IPv4-translated (SIIT). ``is_global`` says
#: nothing about the IPv4 inside (``64:ff9b::7f00:1`` is "global" and is 127.0.0.1 behind a
#: NAT64), so they are refused whole: a subscriber has a native address.
EMBEDDING_IPV4 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "2002::/16",
        "2001::/32",
        "::/96",
        "::ffff:0:0/96",
        "::ffff:0:0:0/96",
    )
)


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is on the public internet: global, not multicast, and no IPv6
    address that embeds an IPv4 one (see :data:`EMBEDDING_IPV4`)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped or address.sixtofour or address.teredo:
            return False
        if any(address in net for net in EMBEDDING_IPV4):
            return False
    # is_global is false for loopback, private, link-local (metadata), shared (CGNAT),
    # reserved and unspecified; multicast is "global" for some ranges, so refuse it too
    return address.is_global and not address.is_multicast


def is_forbidden(address: IPAddress, allowed: Sequence[str]) -> bool:
    """Whether connecting to ``address`` would reach something inside rather than the public
    internet — unless an allowed network covers it (for an IPv4-mapped address, the network
    of the IPv4 address it is)."""
    if _is_allowed(address, allowed):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return not _is_allowed(address.ipv4_mapped, allowed)
    return not is_public(address)


def _is_allowed(address: IPAddress, allowed: Sequence[str]) -> bool:
    return any(address in ipaddress.ip_network(net, strict=False) for net in allowed)


class ForbiddenAddress(Exception):
    """A subscriber host that resolves to nothing, or to an address that is not public."""


def allowed_address(
    host: str, port: int, allowed: Sequence[str], resolver: Resolver = resolve
) -> str:
    """An address to connect to for ``host``, once every address it resolves to has passed
    :func:`is_forbidden` (one bad address is enough to refuse: a resolver may rotate them).
    Raises :class:`ForbiddenAddress`; ``OSError``/``ValueError`` when it does not resolve."""
    addresses = resolver(host, port)
    if not addresses:
        raise ForbiddenAddress(f"{host} resolves to no address")
    for address in addresses:
        if is_forbidden(ipaddress.ip_address(address), allowed):
            raise ForbiddenAddress(f"{host} resolves to {address}, which is not public")
    return addresses[0]


def check_url(
    url: Any, allowed: Sequence[str], resolver: Resolver = resolve
) -> list[dict[str, str]]:
    """Problems with a subscriber URL (``[]`` when it may be used)."""
    if not isinstance(url, str) or not url:
        return [{"field": "url", "message": "required: an http(s) URL"}]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [{"field": "url", "message": "must be an absolute http(s) URL"}]
    if parts.username or parts.password:
        return [{"field": "url", "message": "must not carry credentials"}]
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        allowed_address(parts.hostname, port, allowed, resolver)
    except ForbiddenAddress:
        message = (
            "resolves to an address that is not public (loopback, private, link-local, "
            "metadata, or an IPv4 one inside IPv6); see CIRELAY_DELIVERY_ALLOWED_NETWORKS"
        )
        return [{"field": "url", "message": message}]
    except (OSError, ValueError) as exc:
        return [{"field": "url", "message": f"host does not resolve: {exc}"}]
    return []


def check_event_types(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value or len(value) > MAX_EVENT_TYPES:
        return [{"field": "event_types", "message": f"a list of 1 to {MAX_EVENT_TYPES} types"}]
    return [
        {"field": f"event_types[{i}]", "message": "a type, a prefix ending in .*, or *"}
        for i, t in enumerate(value)
        if not isinstance(t, str) or not _TYPE.fullmatch(t)
    ]


def parse(
    body: Any, allowed: Sequence[str], *, partial: bool = False, resolver: Resolver = resolve
) -> dict[str, Any]:
    """The fields of a subscription from a JSON body; every problem in one 422."""
    if not isinstance(body, dict):
        raise UnprocessableError("a subscription is a JSON object")
    known = {"url", "event_types", "description", "enabled"}
    problems = [{"field": k, "message": "unknown field"} for k in sorted(set(body) - known)]
    values: dict[str, Any] = {}
    if "url" in body or not partial:
        problems += check_url(body.get("url"), allowed, resolver)
        values["url"] = body.get("url")
    if "event_types" in body or not partial:
        types = body.get("event_types", ["*"])
        problems += check_event_types(types)
        values["event_types"] = types
    if "description" in body:
        if not isinstance(body["description"], str) or len(body["description"]) > 1024:
            problems.append({"field": "description", "message": "a string of at most 1024"})
        values["description"] = body["description"]
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            problems.append({"field": "enabled", "message": "true or false"})
        values["enabled"] = body["enabled"]
    if problems:
        raise UnprocessableError("the subscription is not valid", problems)
    return values
