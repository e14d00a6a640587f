from __future__ import annotations

from app.tokens import is_valid_secret, is_valid_token, sign_job

KEYS = ("k-new-0123456789abcdef", "k-old-0123456789abcdef")


def test_first_key_signs_and_every_key_verifies() -> None:
    assert sign_job("job_1", KEYS) == sign_job("job_1", KEYS[:1])
    assert is_valid_token("job_1", sign_job("job_1", KEYS[1:]), KEYS)


def test_token_is_bound_to_its_job() -> None:
    assert not is_valid_token("job_2", sign_job("job_1", KEYS), KEYS)


def test_dropped_key_no_longer_verifies() -> None:
    assert not is_valid_token("job_1", sign_job("job_1", KEYS[1:]), KEYS[:1])


def test_token_is_url_safe_and_unpadded() -> None:
    token = sign_job("job_1", KEYS)
    assert len(token) == 43 and "=" not in token and "/" not in token and "+" not in token


def test_queue_secret() -> None:
    assert is_valid_secret("s" * 20, "s" * 20)
    assert not is_valid_secret("s" * 20, "t" * 20)
    assert not is_valid_secret("", "")


def test_every_queue_secret_is_accepted() -> None:
    secrets = ("queue-new-0123456789", "queue-old-0123456789")
    assert is_valid_secret("queue-new-0123456789", secrets)
    assert is_valid_secret("queue-old-0123456789", secrets)
    assert not is_valid_secret("queue-gone-0123456789", secrets)
    assert not is_valid_secret("q", "queue-new-0123456789")  # a str is one secret, not its chars
    assert not is_valid_secret("", ())
    assert not is_valid_secret("\u00e9\u00e9", secrets)  # not ASCII: no error, just no
