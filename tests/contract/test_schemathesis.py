"""schemathesis against a live ``cirelay serve`` (SQLite, an admin key, the CI emulator as a
process): every operation of ``/openapi.json`` with generated requests, then the stateful
links (subscription create → get → patch → rotate the secret → deliveries → send a test
event → retry deliveries → delete; submit a job → get it). Every answer must keep to the
document: no 5xx, a documented status, content type, body and headers. Bounded examples per
operation (``MAX_EXAMPLES``)."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.contract import openapi_document
from tests.conftest import job_json
from tests.contract.outbox import problems
from tests.e2e_stack import Stack
from tests.subscriber import Subscriber

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
STREAM = "/v1/events/stream"


@pytest.fixture(scope="module")
def api(live: Stack, subscriber: Subscriber) -> Any:
    # subscriber URLs: mostly one that may be used (a loopback subscriber the environment
    # allows), some that may not (private, unresolvable): 201s and 422s both
    schemathesis.openapi.format(
        "uri",
        st.sampled_from(
            [subscriber.url(), subscriber.url("/other"), "http://10.1.2.3/hook",
             "https://hooks.invalid/x"]
        ),
    )  # fmt: skip
    schema = schemathesis.openapi.from_url(f"{live.base}/openapi.json", timeout=10)
    schema.config.update(headers=live.auth, request_timeout=30)
    return schema


#: every operation, as the document this process builds lists them (the one the server serves
#: is the same: tests/contract/test_document.py)
OPERATIONS = [
    (method.upper(), path)
    for path, item in openapi_document()["paths"].items()
    for method in item
    if method != "parameters"
]


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_every_operation_keeps_to_the_document(api: Any, live: Stack, method: str,
                                              path: str) -> None:  # fmt: skip
    operation = api[path][method]
    statuses: list[int] = []

    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # a failure is reported as found
    )
    def keeps_to_it(case: Any) -> None:
        if path == STREAM:
            response = _first_of_stream(case, live)
        else:
            response = case.call(base_url=live.base, timeout=30)
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    keeps_to_it()
    if "{" not in path:  # (a made-up id is a 404: the links reach those: below)
        assert any(200 <= status < 300 for status in statuses), f"never a success: {statuses}"


def _first_of_stream(case: Any, live: Stack) -> requests.Response:
    """The stream's answer with what it sent first (it never ends by itself)."""
    sent = case.as_transport_kwargs(base_url=live.base)
    sent.pop("timeout", None)
    response = requests.request(**sent, stream=True, timeout=10)
    try:
        first = next(response.iter_content(chunk_size=None), b"")
    finally:
        response.close()
    response._content = first
    return response


#: per area of the API: what the links must reach, a success of each step on a resource an
#: earlier step made (each area explored on its own, so the steps go deep enough)
CHAINS = {
    "subscriptions": {
        ("POST", "/v1/subscriptions", 201),
        ("GET", "/v1/subscriptions/{ident}", 200),
        ("PATCH", "/v1/subscriptions/{ident}", 200),
        ("POST", "/v1/subscriptions/{ident}/rotate-secret", 200),
        ("GET", "/v1/subscriptions/{ident}/deliveries", 200),
        ("POST", "/v1/subscriptions/{ident}/test", 200),
        ("POST", "/v1/subscriptions/{ident}/deliveries/retry", 202),
        ("DELETE", "/v1/subscriptions/{ident}", 204),
    },
    "jobs": {("POST", "/v1/jobs", 201), ("GET", "/v1/jobs/{ident}", 200)},
}


@pytest.mark.parametrize("area", sorted(CHAINS))
def test_the_stateful_links_keep_to_the_document(api: Any, live: Stack, area: str) -> None:
    reached: set[tuple[str, str, int]] = set()

    class Links(api.include(tag=area).as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": live.base, "timeout": 30}

        def call(self, case: Any, **kwargs: Any) -> Any:
            response = case.call(**kwargs)
            reached.add((case.method.upper(), case.operation.path, response.status_code))
            return response

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    run_state_machine_as_test(
        Links,
        settings=settings(
            max_examples=30,
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
        ),
    )
    assert CHAINS[area] - reached == set(), "links the state machine never followed to a success"


def test_every_event_the_fuzzing_made_is_in_the_catalogue(live: Stack) -> None:
    """The server's own events (its outbox is in another process: read back through the API),
    a job's whole life among them."""
    live.wait_final(live.submit(job_json())["id"])
    after, seen = 0, 0
    while True:
        page = live.http.get(
            f"{live.base}/v1/events", params={"after": after, "limit": 500},
            headers=live.auth, timeout=10,
        ).json()  # fmt: skip
        for event in page["events"]:
            assert problems(event["type"], event["data"]) == [], event
            seen += 1
        if not page["events"]:
            break
        after = page["next_after"]
    assert seen, "the fuzzing made no event"
