"""Webhook subscriptions: who gets which events, at which URL, signed with which secret.

A subscription's URL is checked when it is saved (and again by the deliverer when it
connects, so DNS rebinding does not get through): the host must resolve only to public
addresses — not loopback, private, link-local (cloud metadata lives there), multicast,
reserved or unspecified, nor an IPv6 address carrying an IPv4 one (NAT64, 6to4, Teredo,
IPv4-compatible or -mapped) — unless ``CIRELAY_DELIVERY_ALLOWED_NETWORKS`` permits the network.
Secrets are in Standard Webhooks form (``whsec_`` + base64 of 24 random bytes), returned once;
rotating keeps the previous secret valid (and signing) for a grace period.

A subscription's URL may also name a message broker (:class:`BrokerTarget`):

- ``nats://[user:password@|token@]host[:4222]/<stream>[?subject_prefix=<prefix>]``: a JetStream
  stream; the subject is ``<prefix>.<event type without com.cirelay.>``, e.g.
  ``cirelay.events.job.succeeded`` (prefix default ``cirelay.events``);
- ``amqp[s]://[user:password@]host[:5672|5671]/<vhost>?exchange=<name>[&routing_key_prefix=…]``:
  a RabbitMQ exchange, the routing key derived likewise (vhost percent-encoded, ``%2F`` for
  ``/``; an empty path is ``/``).

Either may say ``credentials=<name>`` instead of carrying them: the user and password are then
the entry of that name in ``CIRELAY_BROKER_CREDENTIALS`` (``name=user:password``, comma-
separated, percent-encoded like a URL's), read by the worker when it connects. Credentials in
a URL are kept like a signing secret: :func:`mask_url` hides them in every answer, log line and
event; a URL sent back with the mask in it is refused rather than stored. The SSRF rule holds
for brokers as for webhooks: a broker inside the network needs its network in
``CIRELAY_DELIVERY_ALLOWED_NETWORKS``, checked at save and again at every connect.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

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
    url: Any,
    allowed: Sequence[str],
    resolver: Resolver = resolve,
    credentials: Mapping[str, Login] | None = None,
) -> list[dict[str, str]]:
    """Problems with a subscriber URL (``[]`` when it may be used)."""
    if not isinstance(url, str) or not url:
        return [{"field": "url", "message": "required: an http(s), nats or amqp(s) URL"}]
    parts = urlsplit(url)
    if parts.scheme in BROKER_SCHEMES:
        try:
            target = BrokerTarget.parse(url, credentials=credentials)
        except ValueError as exc:
            return [{"field": "url", "message": str(exc)}]
        host, port = target.host, target.port
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        return [{"field": "url", "message": "must be an absolute http(s), nats or amqp(s) URL"}]
    elif parts.username or parts.password:
        return [{"field": "url", "message": "must not carry credentials"}]
    else:
        host, port = parts.hostname, 0
    try:
        port = port or _port(parts, 443 if parts.scheme == "https" else 80)
        allowed_address(host, port, allowed, resolver)
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
    body: Any,
    allowed: Sequence[str],
    *,
    partial: bool = False,
    resolver: Resolver = resolve,
    credentials: Mapping[str, Login] | None = None,
) -> dict[str, Any]:
    """The fields of a subscription from a JSON body; every problem in one 422."""
    if not isinstance(body, dict):
        raise UnprocessableError("a subscription is a JSON object")
    known = {"url", "event_types", "description", "enabled"}
    problems = [{"field": k, "message": "unknown field"} for k in sorted(set(body) - known)]
    values: dict[str, Any] = {}
    if "url" in body or not partial:
        problems += check_url(body.get("url"), allowed, resolver, credentials)
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


# --- brokers -------------------------------------------------------------------------------

#: URL scheme -> transport (the ``transport`` label of the delivery metrics)
BROKER_SCHEMES = {"nats": "nats", "amqp": "amqp", "amqps": "amqp"}
#: every value of the ``transport`` label
TRANSPORTS = ("http", "nats", "amqp")
DEFAULT_TOPIC_PREFIX = "cirelay.events"
#: what a credential is shown as
MASK = "***"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_TOPIC = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_EVENT_TYPE_PREFIX = "com.cirelay."
_DEFAULT_PORTS = {"nats": 4222, "amqp": 5672, "amqps": 5671}


def transport_of(url: str) -> str:
    """``http``, ``nats`` or ``amqp``: which sender a subscription URL goes through."""
    return BROKER_SCHEMES.get(url.partition(":")[0].lower(), "http")


def _port(parts: Any, default: int) -> int:
    port = parts.port  # ValueError when out of range or not a number
    if port == 0:
        raise ValueError("port 0")
    return default if port is None else int(port)


@dataclass(frozen=True)
class BrokerTarget:
    """A broker subscription's URL, parsed: where to connect, as whom, and where each event
    goes (a JetStream stream's subject, or an exchange's routing key)."""

    scheme: str
    host: str
    port: int
    #: the JetStream stream, or the AMQP exchange
    destination: str
    #: subjects / routing keys are ``<prefix>.<event type without com.cirelay.>``
    prefix: str
    #: the AMQP virtual host ("" for NATS)
    vhost: str = ""
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    #: a name in ``CIRELAY_BROKER_CREDENTIALS`` instead of credentials in the URL
    credentials: str | None = None

    @property
    def transport(self) -> str:
        return BROKER_SCHEMES[self.scheme]

    @property
    def broker(self) -> str:
        """The broker without credentials (for logs, errors and ``/readyz``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        vhost = "/" + quote(self.vhost, safe="") if self.transport == "amqp" else ""
        return f"{self.scheme}://{host}:{self.port}{vhost}"

    def topic(self, event_type: str) -> str:
        """The subject (NATS) or routing key (AMQP) of an event of ``event_type``."""
        return f"{self.prefix}.{event_type.removeprefix(_EVENT_TYPE_PREFIX)}"

    def login(self, named: Mapping[str, Login]) -> tuple[str | None, str | None]:
        """The user and password (or, for NATS, a token as the user) to connect with."""
        if self.credentials is not None:
            if self.credentials not in named:
                raise KeyError(f"no broker credentials named {self.credentials!r}")
            return named[self.credentials]
        return self.username, self.password

    @classmethod
    def parse(cls, url: str, *, credentials: Mapping[str, Login] | None = None) -> BrokerTarget:
        """The target of a ``nats://`` or ``amqp(s)://`` URL; ``ValueError`` says what is
        wrong with it. ``credentials``: the names a ``credentials=`` may use (unchecked when
        ``None``, as in the worker)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in BROKER_SCHEMES or not parts.hostname:
            raise ValueError("must be nats://host/<stream> or amqp(s)://host/<vhost>?exchange=")
        if parts.fragment:
            raise ValueError("must not have a #fragment")
        try:
            port = _port(parts, _DEFAULT_PORTS[scheme])
        except ValueError:
            raise ValueError("the port must be a number from 1 to 65535") from None
        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        if MASK in (username, password):
            raise ValueError(f"carries the mask {MASK} where a credential goes: send the real "
                             "one, or name it with credentials=")  # fmt: skip
        query = parse_qsl(parts.query, keep_blank_values=True)
        params = dict(query)
        if len(params) != len(query):
            raise ValueError("a query parameter is repeated")
        is_nats = scheme == "nats"
        known = {"credentials", "subject_prefix"} if is_nats else {
            "credentials", "exchange", "routing_key_prefix"}  # fmt: skip
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown query parameter {unknown[0]!r}; known: {sorted(known)}")
        named = params.get("credentials")
        if named is not None:
            if username is not None or password is not None:
                raise ValueError("credentials= or credentials in the URL, not both")
            if credentials is not None and named not in credentials:
                raise ValueError(f"no broker credentials named {named!r} in "
                                 "CIRELAY_BROKER_CREDENTIALS")  # fmt: skip
        prefix = params.get("subject_prefix" if is_nats else "routing_key_prefix",
                            DEFAULT_TOPIC_PREFIX)  # fmt: skip
        if not _TOPIC.fullmatch(prefix):
            raise ValueError("the prefix is dot-separated tokens of letters, digits, _ and -")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if is_nats:
            if not _TOKEN.fullmatch(path):
                raise ValueError("the path is the JetStream stream: nats://host:4222/<stream>")
            destination, vhost = path, ""
        else:
            destination = params.get("exchange", "")
            if not destination or len(destination) > 255:
                raise ValueError("exchange=<name> is required (the exchange to publish to)")
            vhost = unquote(path) or "/"
            if "/" in path or len(vhost) > 255:
                raise ValueError("the path is one vhost, percent-encoded (%2F for /)")
        return cls(
            scheme=scheme, host=parts.hostname, port=port, destination=destination,
            prefix=prefix, vhost=vhost, username=username, password=password,
            credentials=named,
        )  # fmt: skip


#: a named broker login: user and password, or (NATS) a token as the user and no password
Login = tuple[str, str | None]


def mask_url(url: str) -> str:
    """``url`` with the password (or a NATS token) in it replaced by :data:`MASK`."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in BROKER_SCHEMES or "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:{MASK}" if colon else MASK
    return parts._replace(netloc=f"{masked}@{hostport}").geturl()


def parse_broker_credentials(
    entries: Sequence[str],
) -> tuple[dict[str, Login], list[str]]:
    """``CIRELAY_BROKER_CREDENTIALS`` entries (``name=user:password``, or ``name=token`` for
    NATS, percent-encoded) as name -> (user, password or None), and what is wrong with them
    (never the values themselves)."""
    named: dict[str, Login] = {}
    problems = []
    for i, entry in enumerate(entries):
        name, eq, login = entry.partition("=")
        user, colon, password = login.partition(":")
        if not eq or not _TOKEN.fullmatch(name) or not user or name in named:
            problems.append(
                f"CIRELAY_BROKER_CREDENTIALS: entry {i + 1} is not name=user:password "
                "(a unique name of letters, digits, _ and -)"
            )
            continue
        named[name] = (unquote(user), unquote(password) if colon else None)
    return named, problems
