"""The rest of a queue's traffic (spec §10): jobs of other tags and workflow instances.

A CI queue notifies its URL of every job that runs in it, not only VoiceSeparate jobs, and
of every workflow instance that ends. Through the admin API the emulator runs both:

* ``POST /_emulator/inject`` — a job of any tag (``NoiseReduction``, ``Transcode``, …) as if
  CI had created it: it lives as a VoiceSeparate job does (Submitted → Running →
  Success/Failed, the same fail marker) and notifies the queue's URL, in XML or JSON, with
  or without EventName (``legacy``: the 2020-2021 bodies);
* ``POST /_emulator/workflows`` — a workflow instance: one job per task (each carrying
  ``Workflow`` and the file's ``CosHeaders``), each notifying its TaskFinish, then, when the
  last has ended, the instance's WorkflowFinish (``Failed`` if any task failed).

Both take JSON: ``tag`` / ``tasks`` (a list of tags), ``input_object`` / ``object``,
``format`` (``XML`` or ``JSON``, default the queue's), ``legacy``, ``bucket``, ``region``,
``url`` (default the queue's callback URL), ``workflow_name``.
"""

from __future__ import annotations

import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.emulator.jobs import (
    CallbackSpec,
    Job,
    JobRequest,
    OperationSpec,
    Tree,
    ci_time,
)

_TAG = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]*-[0-9]+")
_REGION = re.compile(r"[a-z]+(-[a-z0-9]+)+")
#: each tag's own Operation container, as the emulator echoes it
_PARAMS: dict[str, Tree] = {
    "NoiseReduction": {"Format": "mp3", "Samplerate": "44100"},
    "Transcode": {"Container": {"Format": "mp4"}, "Video": {"Codec": "H.264"}},
    "SpeechRecognition": {"EngineModelType": "16k_zh", "ChannelNum": "1"},
    "VoiceSeparate": {"AudioMode": "AudioAndBackground"},
}


class InjectError(ValueError):
    """A request to the admin API that cannot be run (answered 400)."""


@dataclass(frozen=True)
class Injected:
    """What one admin request asks the emulator to run."""

    bucket: str
    region: str
    url: str
    format: str
    legacy: bool
    requests: tuple[JobRequest, ...]


def _choice(body: dict[str, Any], name: str, pattern: re.Pattern[str], default: str) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InjectError(f"{name}: not a valid value")
    return value


def _request(tag: str, source: str, fmt: str, legacy: bool, bucket: str, region: str,
             url: str, workflow: Tree | None = None,
             cos_headers: tuple[tuple[str, str], ...] = ()) -> JobRequest:  # fmt: skip
    name = tag.lower()
    output = {"Region": region, "Bucket": bucket, "Object": f"out/{name}/${{jobid}}.${{ext}}"}
    return JobRequest(
        input_object=source,
        operations=(OperationSpec(output=output, voice_separate=_PARAMS.get(tag, {"Mode": "1"})),),
        callback=CallbackSpec(url=url, format=fmt),
        tag=tag,
        legacy=legacy,
        workflow=workflow,
        cos_headers=cos_headers,
    )


def parse_injection(
    body: Any, *, bucket: str, region: str, queue_url: str | None, queue_format: str,
    workflow: Tree | None = None,
) -> Injected:  # fmt: skip
    """The jobs an ``inject`` (or, with ``workflow``, a ``workflows``) request asks for."""
    if not isinstance(body, dict):
        raise InjectError("a JSON object is required")
    url = body.get("url") or queue_url
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InjectError("url: no queue callback URL is configured; give one")
    fmt = body.get("format", queue_format)
    if fmt not in ("XML", "JSON"):
        raise InjectError("format: XML or JSON")
    bucket = _choice(body, "bucket", _BUCKET, bucket)
    region = _choice(body, "region", _REGION, region)
    legacy = bool(body.get("legacy", False))
    source = body.get("object" if workflow else "input_object", "in/sample.wav")
    if not isinstance(source, str) or not source:
        raise InjectError("input_object: a non-empty object key")
    if workflow is None:
        tags = [_choice(body, "tag", _TAG, "NoiseReduction")]
    else:
        tags = body.get("tasks", ["VoiceSeparate"])
        if not isinstance(tags, list) or not 1 <= len(tags) <= 10:
            raise InjectError("tasks: a list of 1 to 10 tags")
        tags = [_choice({"tag": t}, "tag", _TAG, "") for t in tags]
    headers = (("Content-Type", "application/octet-stream"), ("EventName", "cos:ObjectCreated:Put"))
    requests = tuple(
        _request(
            tag,
            source,
            fmt,
            legacy,
            bucket,
            region,
            url,
            workflow={**workflow, "Name": f"{tag}_{n}"} if workflow else None,
            cos_headers=headers if workflow else (),
        )
        for n, tag in enumerate(tags, start=1)
    )
    return Injected(bucket, region, url, fmt, legacy, requests)


def new_workflow(body: Any) -> Tree:
    """A workflow instance's identity: RunId (legacy bodies: not ``i`` + 32 hex, as the
    2020-2021 ones), WorkflowId and WorkflowName."""
    legacy = isinstance(body, dict) and bool(body.get("legacy"))
    name = body.get("workflow_name", "emulator-workflow") if isinstance(body, dict) else ""
    if not isinstance(name, str) or not name:
        raise InjectError("workflow_name: a non-empty name")
    run_id = f"run-{secrets.token_hex(6)}" if legacy else "i" + uuid.uuid4().hex
    return {"RunId": run_id, "WorkflowId": "w" + uuid.uuid5(uuid.NAMESPACE_URL, name).hex,
            "WorkflowName": name}  # fmt: skip


@dataclass
class Run:
    """A workflow instance in flight: its jobs, and where its WorkflowFinish goes."""

    workflow: Tree
    injected: Injected
    created_at: datetime
    job_ids: list[str] = field(default_factory=list)
    sent: bool = False


class Runs:
    """Workflow instances by job; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_job: dict[str, Run] = {}

    def add(self, run: Run) -> None:
        with self._lock:
            for job_id in run.job_ids:
                self._by_job[job_id] = run

    def ended(self, job: Job, done: list[Job]) -> Run | None:
        """The run ``job`` belongs to, once, when ``done`` (its jobs as they are now) have
        all finished; else None."""
        with self._lock:
            run = self._by_job.get(job.job_id)
            if run is None or run.sent or not all(j.is_finished for j in done):
                return None
            run.sent = True
            return run

    def of(self, job_id: str) -> Run | None:
        with self._lock:
            return self._by_job.get(job_id)


def execution_tree(run: Run, jobs: list[Job]) -> Tree:
    """The ``WorkflowExecution`` of a finished run, in the page's order."""
    injected = run.injected
    first = injected.requests[0]
    tree: Tree = {"RunId": run.workflow["RunId"], "BucketId": injected.bucket,
                  "Object": first.input_object}  # fmt: skip
    if first.cos_headers:
        tree["CosHeaders"] = [{"Key": k, "Value": v} for k, v in first.cos_headers]
    failed = any(j.state != "Success" for j in jobs)
    tree |= {
        "WorkflowId": run.workflow["WorkflowId"],
        "WorkflowName": run.workflow["WorkflowName"],
        "CreateTime": ci_time(run.created_at),
        "State": "Failed" if failed else "Success",
        "Tasks": [
            {
                "Type": j.tag,
                "CreateTime": ci_time(j.created_at),
                "EndTime": ci_time(j.ended_at),
                "State": j.state,
                "JobId": j.job_id,
                "Name": (j.workflow or {}).get("Name", j.tag),
            }
            for j in jobs
        ],
    }
    return tree
