"""The SSRF rules for subscriber URLs (unit)."""

from __future__ import annotations

import ipaddress

import pytest

from app.delivery.sender import Sender
from app.models import AttemptResult
from app.subscriptions import check_url, is_forbidden, is_public
from tests.subscriber import Answer, Subscriber


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1",
     "fe80::1", "fd00::1", "0.0.0.0", "224.0.0.1", "::ffff:127.0.0.1", "100.64.0.1"],
)  # fmt: skip
def test_inside_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden(ipaddress.ip_address(address), [])


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden(ipaddress.ip_address(address), [])


def test_an_allowed_network_lets_its_addresses_through() -> None:
    assert not is_forbidden(ipaddress.ip_address("127.0.0.1"), ["127.0.0.0/8"])
    assert is_forbidden(ipaddress.ip_address("10.0.0.1"), ["127.0.0.0/8"])


def test_a_name_resolving_to_any_inside_address_is_refused() -> None:
    """DNS may return several addresses; one inside is enough to refuse."""
    two = lambda host, port: ["93.184.216.34", "10.0.0.7"]  # noqa: E731
    assert check_url("https://hooks.example.org/x", [], resolver=two)
    public = lambda host, port: ["93.184.216.34"]  # noqa: E731
    assert check_url("https://hooks.example.org/x", [], resolver=public) == []


def test_an_unresolvable_host_is_refused() -> None:
    def fails(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    assert check_url("https://nowhere.invalid/x", [], resolver=fails)


#: IPv6 addresses that carry an IPv4 one: refused whether or not the IPv4 inside is public
EMBEDDED_IPV4 = [
    pytest.param("::127.0.0.1", id="ipv4-compatible-loopback"),
    pytest.param("::93.184.216.34", id="ipv4-compatible-public"),
    pytest.param("64:ff9b::7f00:1", id="nat64-loopback"),
    pytest.param("64:ff9b::a9fe:a9fe", id="nat64-metadata"),
    pytest.param("64:ff9b::5db8:d822", id="nat64-public"),
    pytest.param("64:ff9b:1::a9fe:a9fe", id="local-nat64-metadata"),
    pytest.param("2002:7f00:1::", id="6to4-loopback"),
    pytest.param("2002:5db8:d822::1", id="6to4-public"),
    pytest.param("2001:0:4136:e378:8000:63bf:3fff:fdd2", id="teredo"),
    pytest.param("::ffff:127.0.0.1", id="ipv4-mapped-loopback"),
    pytest.param("::ffff:93.184.216.34", id="ipv4-mapped-public"),
    pytest.param("::ffff:0:7f00:1", id="ipv4-translated-loopback"),
]


@pytest.mark.parametrize("address", EMBEDDED_IPV4)
def test_an_ipv6_address_carrying_an_ipv4_one_is_refused_when_saved(address: str) -> None:
    """The literal goes through the real resolver, as a subscriber URL's host does."""
    assert is_forbidden(ipaddress.ip_address(address), [])
    (problem,) = check_url(f"http://[{address}]:8080/hook", [])
    assert problem["field"] == "url" and "not public" in problem["message"]


@pytest.mark.parametrize("address", EMBEDDED_IPV4)
def test_an_ipv6_address_carrying_an_ipv4_one_is_refused_at_connect(address: str) -> None:
    """DNS rebinding to such an address: the sender refuses it before connecting."""
    sender = Sender(allowed_networks=(), timeout=1.0, resolver=lambda host, port: [address])
    report = sender.post("http://hooks.example.com/", b"{}", {})
    assert report.result == AttemptResult.FORBIDDEN_ADDRESS


def test_an_allowed_network_still_covers_the_ipv4_of_a_mapped_address() -> None:
    loopback = ["127.0.0.0/8"]
    assert not is_forbidden(ipaddress.ip_address("::ffff:127.0.0.1"), loopback)
    assert is_forbidden(ipaddress.ip_address("64:ff9b::7f00:1"), loopback)
    assert not is_forbidden(ipaddress.ip_address("64:ff9b::7f00:1"), ["64:ff9b::/96"])


@pytest.mark.parametrize(
    ("address", "public"),
    [("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True),
     ("127.0.0.1", False), ("10.0.0.7", False), ("::1", False), ("64:ff9b::5db8:d822", False)],
)  # fmt: skip
def test_only_a_public_address_is_public(address: str, public: bool) -> None:
    """What decides whether a subscriber's answer is kept with a failed attempt."""
    assert is_public(ipaddress.ip_address(address)) is public


def test_the_answer_of_a_subscriber_on_an_allowed_inside_network_is_not_kept() -> None:
    """A real subscriber on loopback, allowed by CIRELAY_DELIVERY_ALLOWED_NETWORKS: its error
    page and its redirect target stay out of the attempt (and so out of the deliveries API)."""
    with Subscriber() as hook:
        sender = Sender(allowed_networks=("127.0.0.0/8",), timeout=2.0)
        hook.answer = lambda n, req: Answer(500, body=b"db password is hunter2")
        report = sender.post(f"http://127.0.0.1:{hook.port}/", b"{}", {})
        assert report.result == AttemptResult.HTTP_ERROR and report.status_code == 500
        assert report.error == "HTTP 500"
        hook.answer = lambda n, req: Answer(302, {"Location": "http://10.0.0.7/admin?x=1"})
        report = sender.post(f"http://127.0.0.1:{hook.port}/", b"{}", {})
        assert report.status_code == 302 and report.error == "HTTP 302: redirect not followed"
