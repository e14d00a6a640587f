"""A Python client generated from the served ``/openapi.json`` with openapi-python-client
(the standard generator on PyPI) submits a job to the live stack and reads it back."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from app.models import JobState
from tests.conftest import job_json
from tests.e2e_stack import API_KEY, Stack, poll

pytestmark = pytest.mark.slow

PACKAGE = "cirelay_generated_client"


@pytest.fixture
def generated(live: Stack, tmp_path: Path) -> Iterator[ModuleType]:
    document = tmp_path / "openapi.json"
    document.write_bytes(live.http.get(f"{live.base}/openapi.json", timeout=10).content)
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        [str(bin_dir / "openapi-python-client"), "generate", "--path", str(document),
         "--meta", "none", "--output-path", str(tmp_path / PACKAGE)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},  # its ruff post-hooks: the venv's
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
            del sys.modules[name]
        shutil.rmtree(tmp_path / PACKAGE)


def test_a_generated_client_submits_a_job_and_reads_it_back(
    generated: ModuleType, live: Stack
) -> None:
    submit = importlib.import_module(f"{PACKAGE}.api.jobs.submit_job")
    get_job = importlib.import_module(f"{PACKAGE}.api.jobs.get_job")
    models = importlib.import_module(f"{PACKAGE}.models")
    client = generated.AuthenticatedClient(base_url=live.base, token=API_KEY)

    with client:
        job = submit.sync(client=client, body=models.JobRequest.from_dict(job_json()))
        assert isinstance(job, models.Job), job
        assert job.state.value == JobState.SUBMITTED
        assert job.ci_job_id

        def finished() -> object:
            found = get_job.sync(client=client, ident=job.id)
            assert isinstance(found, models.JobDetail), found
            return found if found.state.value == JobState.SUCCESS else None

        done = poll(f"job {job.id} to succeed", finished)
        assert done.id == job.id and done.ci_job_id == job.ci_job_id
        assert [n.state for n in done.notifications][-1] == JobState.SUCCESS
        missing = get_job.sync(client=client, ident="job_that_does_not_exist")
        assert isinstance(missing, models.Error) and missing.error == "not_found"
