"""Broker subscription URLs (unit): their forms, what is refused and why, the subject or
routing key each event gets, credentials masked and named from settings."""

from __future__ import annotations

import pytest

from app.config import ConfigError, Settings
from app.models import Subscription
from app.subscriptions import (
    BrokerTarget,
    check_url,
    mask_url,
    parse_broker_credentials,
    transport_of,
)

ANYWHERE = ["0.0.0.0/0"]
PUBLIC = lambda host, port: ["93.184.216.34"]  # noqa: E731


def test_nats_form_and_subject() -> None:
    t = BrokerTarget.parse("nats://nats.example.org/MEDIA")
    assert (t.transport, t.host, t.port, t.destination, t.prefix) == (
        "nats", "nats.example.org", 4222, "MEDIA", "cirelay.events")  # fmt: skip
    assert t.topic("com.cirelay.job.succeeded") == "cirelay.events.job.succeeded"
    custom = BrokerTarget.parse("nats://u:p@n:4333/MEDIA?subject_prefix=teams.media")
    assert custom.topic("com.cirelay.subscription.disabled") == (
        "teams.media.subscription.disabled")  # fmt: skip
    assert custom.login({}) == ("u", "p") and custom.port == 4333
    assert BrokerTarget.parse("nats://tok3n@n/S").login({}) == ("tok3n", None)  # a token


def test_amqp_form_vhost_and_routing_key() -> None:
    t = BrokerTarget.parse("amqps://app:pw@mq.example.org/prod%2Feu?exchange=media.events")
    assert (t.transport, t.port, t.vhost, t.destination) == ("amqp", 5671, "prod/eu",
                                                             "media.events")  # fmt: skip
    assert t.topic("com.cirelay.job.failed") == "cirelay.events.job.failed"
    assert t.broker == "amqps://mq.example.org:5671/prod%2Feu"  # no credentials
    assert BrokerTarget.parse("amqp://mq/?exchange=x").vhost == "/"
    assert BrokerTarget.parse("amqp://mq?exchange=x&routing_key_prefix=a.b").topic(
        "com.cirelay.job.running") == "a.b.job.running"  # fmt: skip
    assert [transport_of(u) for u in ("https://h/x", "nats://h/S", "AMQPS://h/?exchange=x")] == [
        "http", "nats", "amqp"]  # fmt: skip


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nats://h", "JetStream stream"),
        ("nats://h/a.b", "JetStream stream"),
        ("nats://h/S/extra", "JetStream stream"),
        ("nats://h/S?subject_prefix=a..b", "prefix"),
        ("nats://h/S?subject_prefix=a.*", "prefix"),
        ("nats://h/S?exchange=x", "unknown query parameter 'exchange'"),
        ("nats://h/S?subject_prefix=a&subject_prefix=b", "repeated"),
        ("nats://h:0/S", "port"),
        ("nats://h:70000/S", "port"),
        ("nats://h/S#frag", "fragment"),
        ("amqp://h/v", "exchange=<name> is required"),
        ("amqp://h/a/b?exchange=x", "one vhost"),
        ("amqp://u:***@h/?exchange=x", "mask"),
        ("nats://***@h/S", "mask"),
        ("amqp://u:p@h/?exchange=x&credentials=rabbit", "not both"),
        ("amqp://h/?exchange=x&credentials=unknown", "no broker credentials named 'unknown'"),
        ("nats:///S", "must be"),
        ("ftp://h/x", "http(s), nats or amqp(s)"),
    ],
)
def test_what_is_refused_and_why(url: str, says: str) -> None:
    problems = check_url(url, ANYWHERE, resolver=PUBLIC, credentials={"rabbit": ("u", "p")})
    assert len(problems) == 1 and says in problems[0]["message"], problems


def test_valid_broker_urls_pass_and_the_ssrf_rule_holds() -> None:
    for url in ("nats://nats.example.org/MEDIA", "amqp://u:p@mq.example.org/?exchange=x",
                "amqp://mq.example.org/?exchange=x&credentials=rabbit"):  # fmt: skip
        assert check_url(url, [], resolver=PUBLIC, credentials={"rabbit": ("u", "p")}) == []
    inside = lambda host, port: ["10.0.0.5"]  # noqa: E731
    (problem,) = check_url("nats://nats.internal/MEDIA", [], resolver=inside)
    assert "CIRELAY_DELIVERY_ALLOWED_NETWORKS" in problem["message"]
    assert check_url("nats://nats.internal/MEDIA", ["10.0.0.0/8"], resolver=inside) == []


def test_credentials_are_masked_and_never_in_a_repr() -> None:
    assert mask_url("amqp://app:s3cret@mq/%2F?exchange=x") == "amqp://app:***@mq/%2F?exchange=x"
    assert mask_url("nats://t0ken@n:4222/S") == "nats://***@n:4222/S"
    assert mask_url("nats://n/S?credentials=x") == "nats://n/S?credentials=x"
    assert mask_url("https://h/x") == "https://h/x"
    target = BrokerTarget.parse("amqp://app:s3cret@mq/?exchange=x")
    assert "s3cret" not in repr(target) and "s3cret" not in target.broker
    sub = Subscription(id="sub_1", url="amqp://app:s3cret@mq/?exchange=x", event_types=["*"],
                       description="", enabled=True, secret="whsec_x", previous_secret=None,
                       previous_secret_expires_at=None, disabled_reason=None,
                       created_at=None, updated_at=None)  # type: ignore[arg-type]  # fmt: skip
    assert "s3cret" not in str(sub.view())


def test_named_credentials_from_the_environment() -> None:
    named, problems = parse_broker_credentials(["rabbit=app:p%2Cw", "nats=tok"])
    assert named == {"rabbit": ("app", "p,w"), "nats": ("tok", None)} and problems == []
    # a NATS token named in the settings connects as a token, like one in the URL
    named_token = BrokerTarget.parse("nats://n/S?credentials=nats").login(named)
    assert named_token == BrokerTarget.parse("nats://tok@n/S").login({}) == ("tok", None)
    _, problems = parse_broker_credentials(["nouser=", "=x:y", "dup=a:b", "dup=c:d"])
    assert len(problems) == 3 and all("p,w" not in p for p in problems)
    settings = Settings.from_env({"CIRELAY_BROKER_CREDENTIALS": "rabbit=app:s3cret"},
                                 requires=())  # fmt: skip
    assert settings.broker_logins == {"rabbit": ("app", "s3cret")}
    assert "s3cret" not in repr(settings)
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"CIRELAY_BROKER_CREDENTIALS": "bad entry=s3cret"}, requires=())
    assert "s3cret" not in str(refused.value)
