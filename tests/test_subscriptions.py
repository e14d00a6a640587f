"""The SSRF rules for subscriber URLs (unit)."""

from __future__ import annotations

import ipaddress

import pytest

from app.subscriptions import check_url, is_forbidden


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
