"""Helpers of the emulator tests: the emulator as a real process, a real callback receiver,
signed requests, request builders and a polling wait.

(Fixtures live in each test module: this directory has no conftest of its own.)
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
import requests
from qcloud_cos import CosConfig, CosS3Client

from app.ci import wire
from app.ci.signing import sign_request
from app.schemas import SchemaSet

SECRET_ID = "AKIDemulatortest0000000000000001"
SECRET_KEY = "emulator-test-secret-key-0123456789"
BUCKET = "media-1300000000"
REGION = "ap-guangzhou"
HOST = f"{BUCKET}.ci.{REGION}.myqcloud.com"
COS_HOST = f"{BUCKET}.cos.{REGION}.myqcloud.com"

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        time.sleep(interval)


# --- building requests --------------------------------------------------------------------


def job_request(
    object_key: str = "songs/track.wav",
    *,
    callback: str | None = None,
    callback_format: str | None = None,
    codec: str = "mp3",
    **operation: Any,
) -> dict[str, Any]:
    """A VoiceSeparate request in wire's dict form (spec §2.8), Output keys with wildcards."""
    op: dict[str, Any] = {
        "VoiceSeparate": {
            "AudioMode": "AudioAndBackground",
            "AudioConfig": {
                "Codec": codec,
                "Samplerate": "44100",
                "Bitrate": "128",
                "Channels": "2",
            },
        },
        "Output": {
            "Region": REGION,
            "Bucket": BUCKET,
            "Object": "stems/${jobid}/bgm.${ext}",
            "AuObject": "stems/${jobid}/vocal.${ext}",
        },
        "UserData": "order-1",
    }
    op.update(operation)
    request: dict[str, Any] = {
        "Tag": "VoiceSeparate",
        "Input": {"Object": object_key},
        "Operation": op,
    }
    if callback is not None:
        request["CallBack"] = callback
    if callback_format is not None:
        request["CallBackFormat"] = callback_format
    return request


def sdk_client(
    port: int, *, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY
) -> CosS3Client:
    """Tencent's own SDK, pointed at the emulator exactly as the issue says."""
    config = CosConfig(
        Region=REGION,
        SecretId=secret_id,
        SecretKey=secret_key,
        IP="127.0.0.1",
        Port=port,
        Scheme="http",
        Timeout=10,
    )
    return CosS3Client(config, retry=0)


def signed(
    base_url: str,
    method: str,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    body: bytes = b"",
    host: str = HOST,
    secret_id: str = SECRET_ID,
    secret_key: str = SECRET_KEY,
    window: tuple[int, int] | None = None,
    timeout: float = 10.0,
) -> requests.Response:
    """A request signed like cirelay's client signs it (Host and Content-Type signed)."""
    headers = {"Host": host}
    if method == "POST":
        headers["Content-Type"] = "application/xml"
    now = int(time.time())
    start, end = window or (now - 60, now + 600)
    headers["Authorization"] = sign_request(
        method, path, dict(params or {}), headers, secret_id, secret_key, start=start, end=end
    )
    return requests.request(
        method, base_url + path, params=params, data=body, headers=headers, timeout=timeout
    )


def create_body(request: Mapping[str, Any], schemas: SchemaSet) -> bytes:
    return wire.build_create_request(request, schemas=schemas)


# --- a real callback receiver -------------------------------------------------------------


@dataclass
class Received:
    path: str
    content_type: str
    body: bytes
    at: float  # monotonic


@dataclass
class Receiver:
    """A tiny HTTP server recording every POST; per-path scripted statuses (default 200)."""

    server: ThreadingHTTPServer
    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls) -> Receiver:
        receiver: Receiver

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status = receiver.record(
                    Received(
                        self.path, self.headers.get("Content-Type", ""), body, time.monotonic()
                    )
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        receiver = cls(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return receiver

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def record(self, item: Received) -> int:
        with self.lock:
            self.received.append(item)
            script = self.scripts.get(item.path)
            return script.pop(0) if script else 200

    def script(self, path: str, statuses: list[int]) -> None:
        with self.lock:
            self.scripts[path] = list(statuses)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait(self, path: str, count: int, timeout: float = 10.0) -> list[Received]:
        return wait_until(lambda: len(self.at(path)) >= count and self.at(path), timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the emulator as a real process -------------------------------------------------------

_SERVE = (
    "from app.emulator import EmulatorConfig, serve; "
    "serve('127.0.0.1', 0, EmulatorConfig.from_env())"
)


@dataclass
class EmulatorProcess:
    """``python -c "…serve(…)"`` on a free loopback port, configured by environment."""

    process: subprocess.Popen[str]
    port: int
    log: Any
    final_log: str = ""

    @classmethod
    def start(cls, env: Mapping[str, str]) -> EmulatorProcess:
        log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by stop()
        full_env = {
            **os.environ,
            "CIRELAY_CI_SECRET_ID": SECRET_ID,
            "CIRELAY_CI_SECRET_KEY": SECRET_KEY,
            **env,
        }
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVE],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = process.stdout
        threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
        try:
            line = lines.get(timeout=20)
        except queue.Empty:
            process.kill()
            log.seek(0)
            raise AssertionError(f"emulator did not start:\n{log.read()}") from None
        port = int(line.strip().rsplit(":", 1)[1])
        return cls(process, port, log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self, method: str, path: str, payload: Any = None) -> Any:
        response = requests.request(method, f"{self.url}/_emulator{path}", json=payload, timeout=10)
        response.raise_for_status()
        return response.json()

    def set_faults(self, **faults: Any) -> Any:
        return self.admin("POST", "/faults", {"reset": True, **faults})

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.admin("GET", f"/deliveries?job_id={job_id}")
        return result

    def stop(self) -> int:
        """SIGTERM, then the exit status (the process must stop by itself); keeps the log."""
        try:
            self.process.send_signal(signal.SIGTERM)
            return self.process.wait(timeout=15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.log.seek(0)
            self.final_log = str(self.log.read())
            self.log.close()

    def logs(self) -> str:
        if self.log.closed:
            return self.final_log
        self.log.seek(0)
        return str(self.log.read())


def create_job(emulator: EmulatorProcess, request: Mapping[str, Any], schemas: SchemaSet) -> str:
    """POST /jobs through a signed request; the JobId."""
    response = signed(emulator.url, "POST", "/jobs", body=create_body(request, schemas))
    assert response.status_code == 200, response.text
    reports = wire.parse_create_response(response.content, schemas=schemas)
    return reports[0].ci_job_id


def job_state(emulator: EmulatorProcess, job_id: str, schemas: SchemaSet) -> str:
    response = signed(emulator.url, "GET", f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    reports, _ = wire.parse_describe_response(response.content, schemas=schemas)
    return str(reports[0].state)


# --- one emulator process and one receiver for the whole session --------------------------

#: fast enough for tests: jobs finish in 0.2 s, callbacks retry after 0.2 s and 0.4 s
SHARED_ENV = {
    "CIRELAY_EMULATOR_JOB_SECONDS": "0.2",
    "CIRELAY_EMULATOR_CALLBACK_RETRIES": "0.2,0.4",
    "CIRELAY_EMULATOR_CALLBACK_TIMEOUT": "2",
    "CIRELAY_EMULATOR_CALLBACK_JITTER": "0.1",
    "CIRELAY_EMULATOR_SEED": "7",
}
_EMULATOR = pytest.StashKey[EmulatorProcess]()
_RECEIVER = pytest.StashKey[Receiver]()


def shared_emulator(config: pytest.Config) -> EmulatorProcess:
    """The session's emulator process (starting one costs seconds: schemas, imports);
    stopped with SIGTERM when the session ends."""
    if _EMULATOR not in config.stash:
        process = EmulatorProcess.start(SHARED_ENV)
        config.stash[_EMULATOR] = process
        config.add_cleanup(process.stop)
    return config.stash[_EMULATOR]


def shared_receiver(config: pytest.Config) -> Receiver:
    if _RECEIVER not in config.stash:
        receiver = Receiver.start()
        config.stash[_RECEIVER] = receiver
        config.add_cleanup(receiver.close)
    return config.stash[_RECEIVER]


def json_body(received: Received) -> Any:
    return json.loads(received.body)
