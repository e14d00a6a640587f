from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ApiKey, ConfigError, Scope, Settings

GOOD = {
    "CIRELAY_API_KEYS": "a-key-0123456789abcdef, another-key-0123456789",
    "CIRELAY_CALLBACK_KEYS": "callback-key-0123456789,callback-key-old-0123456",
    "CIRELAY_QUEUE_CALLBACK_SECRET": "queue-secret-0123456789",
}


def test_from_env_coerces_lists_and_defaults() -> None:
    settings = Settings.from_env(GOOD)
    assert settings.api_keys == ("a-key-0123456789abcdef", "another-key-0123456789")
    assert settings.callback_keys[0] == "callback-key-0123456789"
    assert settings.database_url == "sqlite:///./var/cirelay.db"
    assert settings.max_body_bytes == 1 << 20


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"CIRELAY_MAX_DEPTH": "deep", "CIRELAY_CALLBACK_KEYS": "short"})
    problems = "\n".join(info.value.problems)
    assert "CIRELAY_MAX_DEPTH" in problems
    assert "CIRELAY_API_KEYS" in problems
    assert "at least 16" in problems


def test_repr_shows_no_secret() -> None:
    env = {**GOOD, "CIRELAY_DATABASE_URL": "postgresql://app:hunter2@db/cirelay"}
    text = repr(Settings.from_env(env))
    assert "hunter2" not in text and "a-key" not in text and "callback-key" not in text


def test_dev_settings_generate_and_keep_secrets(tmp_path: Path) -> None:
    first = Settings.dev(tmp_path, environ={})
    second = Settings.dev(tmp_path, environ={})
    assert first.api_keys == second.api_keys and first.api_keys[0]
    assert first.database_url == f"sqlite:///{tmp_path / 'cirelay.db'}"
    assert (tmp_path / "dev-secrets").stat().st_mode & 0o077 == 0


def test_delivery_settings() -> None:
    settings = Settings.from_env({
        **GOOD,
        "CIRELAY_DELIVERY_RETRY_SCHEDULE": "0.5, 2,10",
        "CIRELAY_DELIVERY_TIMEOUT_SECONDS": "2.5",
        "CIRELAY_DELIVERY_DISABLE_AFTER_SECONDS": "3600",
        "CIRELAY_MAX_STREAMS": "4",
    })  # fmt: skip
    assert settings.delivery_retry_schedule == (0.5, 2.0, 10.0)
    assert settings.delivery_timeout_seconds == 2.5
    assert settings.delivery_disable_after_seconds == 3600
    assert settings.max_streams == 4
    defaults = Settings.from_env(GOOD)
    assert defaults.delivery_retry_schedule[0] == 5 and len(defaults.delivery_retry_schedule) == 9
    assert sum(defaults.delivery_retry_schedule) > 12 * 3600  # retries over hours
    assert defaults.delivery_timeout_seconds == 15


def test_streams_per_process_by_default_follow_what_a_stream_costs() -> None:
    """On the event loop a stream costs a socket; under a thread per connection (gthread)
    each holds a thread, so by default at most half of them stream."""
    assert Settings.from_env(GOOD).max_streams == 2000
    assert Settings.from_env({**GOOD, "CIRELAY_WORKER_CLASS": "asgi"}).max_streams == 2000
    threaded = {**GOOD, "CIRELAY_WORKER_CLASS": "gthread", "CIRELAY_THREADS": "16"}
    assert Settings.from_env(threaded).max_streams == 8
    assert Settings.from_env({**threaded, "CIRELAY_MAX_STREAMS": "12"}).max_streams == 12


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CIRELAY_DELIVERY_RETRY_SCHEDULE", "5,soon"),
        ("CIRELAY_DELIVERY_RETRY_SCHEDULE", "5,-1"),
        ("CIRELAY_DELIVERY_RETRY_SCHEDULE", "inf"),
        ("CIRELAY_DELIVERY_TIMEOUT_SECONDS", "0"),
        ("CIRELAY_DELIVERY_TIMEOUT_SECONDS", "nan"),
        ("CIRELAY_DELIVERY_CONCURRENCY", "0"),
        ("CIRELAY_DB_POOL_SIZE", "x"),
    ],
)
def test_bad_delivery_settings_are_reported(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**GOOD, name: value})
    assert any(p.startswith(name) for p in info.value.problems)


def test_api_keys_have_a_name_and_a_scope_and_a_bare_key_is_admin() -> None:
    env = {**GOOD, "CIRELAY_API_KEYS":
           "bare-key-0123456789abcdef, dashboard:read:read-key-0123456789, "
           "ops:admin:admin-key:with:colons-0123456789"}  # fmt: skip
    settings = Settings.from_env(env)
    assert settings.api_credentials == (
        ApiKey("key1", Scope.ADMIN, b"bare-key-0123456789abcdef"),
        ApiKey("dashboard", Scope.READ, b"read-key-0123456789"),
        ApiKey("ops", Scope.ADMIN, b"admin-key:with:colons-0123456789"),
    )
    assert settings.admin_api_key == "bare-key-0123456789abcdef"
    assert "read-key" not in repr(settings) and "read-key" not in repr(settings.api_credentials)
    only_read = Settings.from_env({**GOOD, "CIRELAY_API_KEYS": "r:read:read-key-0123456789"})
    assert only_read.admin_api_key is None


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ("short-key", "entry 1: the key must be at least 16 characters"),
        ("good-key-0123456789abcdef,ci:read:short", "entry 2: the key must be at least 16"),
        ("ci:write:key-0123456789abcdef", "entry 1: the scope is read or admin, not 'write'"),
        ("ci:key-0123456789abcdef", "entry 1: name:scope:key, or a bare key without ':'"),
        (":read:key-0123456789abcdef", "entry 1: a name is 1 to 64"),
        ("a b:read:key-0123456789abcdef", "entry 1: a name is 1 to 64"),
        ("ci:read:key-0123456789abcdef,ci:admin:key-abcdef0123456789",
         "entry 2: the name 'ci' is used twice"),
        ("key-0123456789abcdef,key1:read:key-abcdef0123456789", "entry 2: the name 'key1'"),
    ],
)  # fmt: skip
def test_bad_api_keys_are_reported_without_the_key(keys: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**GOOD, "CIRELAY_API_KEYS": keys})
    (reported,) = [p for p in info.value.problems if p.startswith("CIRELAY_API_KEYS")]
    assert reported.startswith(f"CIRELAY_API_KEYS {problem}")
    assert "0123456789" not in str(info.value)


def test_the_queue_secret_is_a_list_whose_first_is_printed() -> None:
    one = Settings.from_env(GOOD)
    assert one.queue_callback_secrets == ("queue-secret-0123456789",)
    assert one.queue_callback_secret == "queue-secret-0123456789"
    env = {**GOOD, "CIRELAY_QUEUE_CALLBACK_SECRET": "queue-new-0123456789, queue-old-0123456789"}
    two = Settings.from_env(env)
    assert two.queue_callback_secrets == ("queue-new-0123456789", "queue-old-0123456789")
    assert two.queue_callback_secret == "queue-new-0123456789"
    assert "queue-" not in repr(two)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**GOOD, "CIRELAY_QUEUE_CALLBACK_SECRET": "queue-new-0123456789,short"})
    assert any("CIRELAY_QUEUE_CALLBACK_SECRET" in p for p in info.value.problems)


def test_dev_settings_make_a_working_admin_key(tmp_path: Path) -> None:
    settings = Settings.dev(tmp_path, environ={})
    (key,) = settings.api_credentials
    assert key.scope is Scope.ADMIN and settings.admin_api_key == key.secret.decode()
    assert len(key.secret) >= 16
