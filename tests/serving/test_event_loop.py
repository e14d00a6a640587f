"""``cirelay serve`` on gunicorn's event-loop worker (``app.serving.asgi_worker``,
``app.web.asgi``): slow clients are cut off by their deadlines and cost no thread; hundreds of
event streams are served by the loop, and one whose client vanished is released.

One real ``cirelay serve`` (2 workers, SQLite) for the module, with short deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from app import store
from tests.conftest import ci_job_id, notification_xml
from tests.e2e_stack import (
    API_KEY,
    CIRELAY,
    QUEUE_SECRET,
    Process,
    children_of,
    free_port,
    poll,
    spawn,
    stack_env,
    wait_http,
)

pytestmark = pytest.mark.slow

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
QUEUE_PATH = f"/callbacks/ci/queue/{QUEUE_SECRET}"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class Service:
    def __init__(self, port: int, process: Process, database_url: str) -> None:
        self.port, self.process = port, process
        self.base = f"http://127.0.0.1:{port}"
        self.engine = store.create_engine(database_url)

    def stored(self) -> dict[str, int]:
        """Rows of what a notification can leave behind."""
        tables = {
            "notifications": store.notifications,
            "quarantined": store.quarantined_notifications,
            "events": store.events,
        }
        with self.engine.connect() as conn:
            return {
                name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                for name, table in tables.items()
            }

    def sse_clients(self) -> float:
        text = requests.get(f"{self.base}/metrics", timeout=10).text
        match = re.search(r"^cirelay_sse_clients (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def head(self) -> int:
        after = 0
        while True:
            page = requests.get(f"{self.base}/v1/events", params={"after": after, "limit": 500},
                                headers=AUTH, timeout=10).json()  # fmt: skip
            if page["next_after"] == after:
                return after
            after = page["next_after"]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory: Path = tmp_path_factory.mktemp("event-loop")
    port = free_port()
    env = dict(
        stack_env(directory, port, free_port()),
        CIRELAY_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        CIRELAY_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
        CIRELAY_MAX_STREAMS="300",
        CIRELAY_ACCESS_LOG="off",
    )
    command = [*CIRELAY, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    process = spawn("serve", command, env, directory)
    try:
        wait_http("cirelay serve", f"http://127.0.0.1:{port}/readyz", process)
        yield Service(port, process, env["CIRELAY_DATABASE_URL"])
    finally:
        process.stop()


def _notification(job: str) -> bytes:
    return notification_xml(job, "Success").encode()


def _request_head(length: int) -> bytes:
    return (
        f"POST {QUEUE_PATH} HTTP/1.1\r\nHost: cirelay.test\r\n"
        f"Content-Type: application/xml\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _dribble(port: int, data: bytes, interval: float, limit: float) -> tuple[bytes, float]:
    """Send ``data`` a byte every ``interval`` seconds; what the server answered (``b""``
    when it only closed) and after how many seconds, or after ``limit`` seconds."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as conn:
        conn.settimeout(interval)
        for byte in data:
            try:
                conn.sendall(bytes([byte]))
                return conn.recv(65536), time.monotonic() - started
            except TimeoutError:  # nothing yet: the next byte
                pass
            except OSError:  # reset: closed
                return b"", time.monotonic() - started
            assert time.monotonic() - started < limit, "the client was never cut off"
    raise AssertionError("every byte was sent")


def test_a_client_slow_with_its_headers_is_closed_at_the_deadline_with_nothing_stored(
    service: Service,
) -> None:
    before = service.stored()
    body = _notification(ci_job_id(901))
    answer, after = _dribble(service.port, _request_head(len(body)) + body, 0.2, limit=10)
    assert answer == b"" and HEADER_TIMEOUT <= after < HEADER_TIMEOUT + 2
    assert service.stored() == before


def test_a_client_slow_with_its_body_gets_408_at_the_deadline_with_nothing_stored(
    service: Service,
) -> None:
    before = service.stored()
    body = _notification(ci_job_id(902))
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as conn:
        conn.sendall(_request_head(len(body)) + body[:100])  # the headers at once, then slowly
        started = time.monotonic()
        answer = b""
        conn.settimeout(0.2)
        for byte in body[100:]:
            try:
                conn.sendall(bytes([byte]))
                answer = conn.recv(65536)
                break
            except TimeoutError:
                continue
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"request_timeout"' in answer and b"connection: close" in answer.lower()
    assert BODY_TIMEOUT <= took < BODY_TIMEOUT + 2
    assert service.stored() == before


def test_a_notification_is_answered_while_200_slow_clients_are_connected(
    service: Service,
) -> None:
    """gthread's 2 x 16 threads were all held by 32 such clients: nothing was answered."""
    body = _notification(ci_job_id(903))

    async def slow(n: int, stop: asyncio.Event) -> None:
        async def one(i: int) -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", service.port)
            data = _request_head(len(body)) + (body if i % 2 else b"")
            start = len(data) - 10 if i % 2 else 0  # half within their body, half headers
            writer.write(data[:start])
            for byte in data[start:]:  # slower than the deadlines: never complete
                if stop.is_set():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.5)
            writer.close()

        await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)

    async def scenario() -> requests.Response:
        stop = asyncio.Event()
        clients = asyncio.create_task(slow(200, stop))
        await asyncio.sleep(0.3)  # all connected, none complete
        answer = await asyncio.to_thread(
            requests.post, f"{service.base}{QUEUE_PATH}", data=body,
            headers={"Content-Type": "application/xml"}, timeout=20,
        )  # fmt: skip
        stop.set()
        await clients
        return answer

    answer = asyncio.run(scenario())
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["outcome"] == "accepted"


async def _open_stream(port: int, after: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/events/stream?after={after} HTTP/1.1\r\nHost: t\r\n"
                 f"Authorization: Bearer {API_KEY}\r\n\r\n".encode())  # fmt: skip
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return reader, writer


def test_200_streams_open_at_once_all_receive_a_committed_event(service: Service) -> None:
    head = service.head()

    async def scenario() -> list[bytes]:
        streams = await asyncio.gather(*(_open_stream(service.port, head) for _ in range(200)))
        answer = await asyncio.to_thread(
            requests.post, f"{service.base}{QUEUE_PATH}",
            data=_notification(ci_job_id(904)),
            headers={"Content-Type": "application/xml"}, timeout=20,
        )  # fmt: skip
        assert answer.status_code == 200

        async def first_event(reader: asyncio.StreamReader) -> bytes:
            data = b""
            while b"\nid: " not in data and not data.startswith(b"id: "):
                data += await asyncio.wait_for(reader.read(65536), 15)
            return data

        try:
            return await asyncio.gather(*(first_event(r) for r, _ in streams))
        finally:
            for _, writer in streams:
                writer.close()

    received = asyncio.run(scenario())
    ids = {int(re.search(rb"id: (\d+)\n", data).group(1)) for data in received}  # type: ignore[union-attr]
    assert ids == {head + 1}  # each stream: the committed event, the first after the cursor
    assert all(b"event: com.cirelay.job." in data for data in received)


def test_a_stream_whose_client_vanished_is_released(service: Service) -> None:
    poll("no stream open", lambda: service.sse_clients() == 0)
    conn = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    conn.sendall(f"GET /v1/events/stream?after={service.head()} HTTP/1.1\r\nHost: t\r\n"
                 f"Authorization: Bearer {API_KEY}\r\n\r\n".encode())  # fmt: skip
    assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")
    poll("the stream counted", lambda: service.sse_clients() == 1)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # gone without a word: reset
    started = time.monotonic()
    # released at once (the loop sees the connection go), not at the next keep-alive write
    poll("the stream released", lambda: service.sse_clients() == 0, deadline=10)
    assert time.monotonic() - started < 3.0


def test_a_stream_on_the_loop_resumes_from_last_event_id_and_keeps_to_its_filter(
    service: Service,
) -> None:
    """The SSE contract on the event loop, not only under a thread per stream: resumed with
    ``Last-Event-ID``, each event after it once and in order; a ``type`` filter holds."""
    head = service.head()
    job_a, job_b = ci_job_id(905), ci_job_id(906)
    for job, state in ((job_a, "Running"), (job_a, "Success"), (job_b, "Success")):
        answer = requests.post(f"{service.base}{QUEUE_PATH}", data=notification_xml(job, state),
                               headers={"Content-Type": "application/xml"}, timeout=20)  # fmt: skip
        assert answer.json()["results"][0]["outcome"] == "accepted", answer.text
    assert service.head() == head + 3

    async def ids(request: str, wanted: int) -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(f"{request}Host: t\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode())
        data = await reader.readuntil(b"\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 200 "), data
        found: list[int] = []
        try:
            while len(found) < wanted:
                data += await asyncio.wait_for(reader.read(65536), 10)
                found = [int(i) for i in re.findall(rb"\nid: (\d+)\n", data)]
            await asyncio.sleep(0.3)  # nothing more comes
            with contextlib.suppress(TimeoutError):
                data += await asyncio.wait_for(reader.read(65536), 0.3)
            return [int(i) for i in re.findall(rb"\nid: (\d+)\n", data)]
        finally:
            writer.close()

    async def scenario() -> tuple[list[int], list[int]]:
        resumed = ids(f"GET /v1/events/stream HTTP/1.1\r\nLast-Event-ID: {head + 1}\r\n", 2)
        succeeded = ids(f"GET /v1/events/stream?after={head}&type=com.cirelay.job.succeeded "
                        "HTTP/1.1\r\n", 2)  # fmt: skip
        return await asyncio.gather(resumed, succeeded)

    resumed, succeeded = asyncio.run(scenario())
    assert resumed == [head + 2, head + 3]
    assert succeeded == [head + 2, head + 3]


def test_a_client_gone_before_its_answer_holds_no_connection_and_the_stop_is_prompt(
    tmp_path: Path,
) -> None:
    """A request sent and the connection closed before the worker took it (a health probe
    that timed out while the service started): the worker answers into a reset connection,
    and gunicorn's close gave up when ``shutdown`` raised ENOTCONN, leaving the connection
    counted for good, so SIGTERM waited out ``graceful_timeout`` and was killed. A client that
    only half-closes gets its answer, then the server's close at once (not after keep-alive).
    Afterwards SIGTERM finds no connection to wait for and gunicorn exits 0."""
    port = free_port()
    env = dict(stack_env(tmp_path, port, free_port()), CIRELAY_KEEPALIVE_SECONDS="60")
    command = [*CIRELAY, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    process = spawn("serve", command, env, tmp_path)
    request = b"GET /healthz HTTP/1.1\r\nHost: cirelay.test\r\n\r\n"
    try:
        wait_http("cirelay serve", f"http://127.0.0.1:{port}/readyz", process)
        (worker,) = children_of(process.popen.pid)
        os.kill(worker, signal.SIGSTOP)  # the kernel accepts; the worker takes it later
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as gone:
                gone.sendall(request)
        finally:
            os.kill(worker, signal.SIGCONT)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as half:
            half.sendall(request)
            half.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := half.recv(65536):  # keep-alive is 60 s: b"" is the server's close
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer
    finally:
        process.stop()
    log = process.log_path.read_text()
    assert "Waiting for" not in log, process.tail()
    assert process.popen.returncode == 0, process.tail()
