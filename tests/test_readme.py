"""README's "A first look", run as written: its shell blocks, with bash, against a ``cirelay
up`` of this test's own (free ports put in place of 8080 and 8081, a temporary directory as
the project directory). A README whose commands do nothing fails here."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.test_cli import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def first_look_blocks() -> list[str]:
    """The fenced ``sh`` blocks of README's "A first look" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## A first look\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```sh\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


@dataclass
class Stack:
    directory: Path
    port: int
    emulator_port: int

    def run(self, block: str) -> subprocess.CompletedProcess[str]:
        script = block.replace("127.0.0.1:8080", f"127.0.0.1:{self.port}").replace(
            "127.0.0.1:8081", f"127.0.0.1:{self.emulator_port}"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}
        env["CIRELAY_URL"] = f"http://127.0.0.1:{self.port}"  # `cirelay submit`'s --url
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``make run`` in a fresh project directory: ``var/`` there, ``.venv`` the project's."""
    directory = tmp_path_factory.mktemp("project")
    (directory / ".venv").symlink_to(ROOT / ".venv")
    port, emulator_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}
    output = (directory / "up.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--port", str(port),
         "--emulator-port", str(emulator_port)],
        cwd=directory, env={**env, "PYTHONPATH": str(ROOT)}, stdout=output,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, timeout=120)
        yield Stack(directory, port, emulator_port)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        output.close()


def test_the_first_look_has_its_three_blocks() -> None:
    blocks = first_look_blocks()
    assert len(blocks) == 3
    assert "v1/jobs" in blocks[0] and "cirelay submit" in blocks[1] and "faults" in blocks[2]


@pytest.mark.slow
def test_readme_submits_a_job_and_it_finishes(stack: Stack) -> None:
    done = stack.run(first_look_blocks()[0])
    assert done.returncode == 0, done.stderr
    assert '"state":"Success"' in done.stdout.replace(" ", ""), done.stdout
    assert "cirelay_notifications_total" in done.stdout


@pytest.mark.slow
def test_readme_cirelay_submit_wait_ends_with_the_final_job(stack: Stack) -> None:
    done = stack.run(first_look_blocks()[1])
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout[done.stdout.rindex("\n{") :])
    assert final["state"] == "Success" and final["result_files"], final


@pytest.mark.slow
def test_readme_fault_commands_set_the_faults(stack: Stack) -> None:
    done = stack.run(first_look_blocks()[2])
    assert done.returncode == 0, done.stderr
    status = requests.get(
        f"http://127.0.0.1:{stack.emulator_port}/_emulator/faults", timeout=5
    ).json()
    set_now = {name: n for name, n in status["remaining"].items() if n}
    assert set_now == {"drop": 1, "duplicate": 1, "malformed": 1}, status
