"""Behind a load balancer: ``CIRELAY_PROXY_HOPS`` trusted hops of X-Forwarded-* (ProxyFix)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from flask import Flask, jsonify, request

from app import Services, create_app

FORWARDED = {
    "X-Forwarded-For": "198.51.100.9, 203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "cirelay.example.com",
}


def echo_app(services: Services, hops: int) -> Flask:
    settings = replace(services.settings, proxy_hops=hops)
    app = create_app(services=replace(services, settings=settings))

    @app.get("/_echo")
    def echo() -> object:
        return jsonify(remote=request.remote_addr, url=request.url)

    return app


@pytest.mark.parametrize(
    ("hops", "remote", "url"),
    [
        (0, "127.0.0.1", "http://localhost/_echo"),  # no proxy trusted: headers ignored
        (1, "203.0.113.7", "https://cirelay.example.com/_echo"),  # the balancer's view
        # two hops: the address two proxies back; one Proto/Host value is not enough
        (2, "198.51.100.9", "http://localhost/_echo"),
    ],
)
def test_client_address_and_public_url_come_from_trusted_hops_only(
    services: Services, hops: int, remote: str, url: str
) -> None:
    client = echo_app(services, hops).test_client()
    answer = client.get("/_echo", headers=FORWARDED, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert answer.json == {"remote": remote, "url": url}
