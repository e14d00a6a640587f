"""The emulator's jobs: an in-memory store and the Submitted → Running → Success/Failed life.

A job's life is planned when it is created (Running after a quarter of ``job_seconds``,
finished after all of it) and carried out by whoever calls :meth:`JobStore.due` with the
current time: the emulator's ticker thread, or a test holding a manual clock. Moving to
Running is instant; finishing is split in two (:meth:`JobStore.due` hands out the jobs to
finish, :meth:`JobStore.finish` records what they produced) so that producing real media
never runs under the store's lock.

The outcome is decided at creation, deterministically: an input Object containing the fail
marker (default ``fail``) ends ``Failed`` with a CI job-failure code (spec §6.4): ``1103``
ResourceNotFound when the key also contains ``notfound``, ``1124`` WriteTargetBucketDenied
when it contains ``denied``, ``1007`` InternalError otherwise. Everything else succeeds.

Documents are built as plain trees (``dict``: element name → ``str`` | tree | list of
them, a list meaning a repeated element), the shape of CI's JSON callbacks; the server and
the notifier render them as XML or JSON.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from app.emulator import media

Tree = dict[str, Any]

CHINA = timezone(timedelta(hours=8))
CI_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
STATES = ("Submitted", "Running", "Success", "Failed", "Pause", "Cancel")
TERMINAL = frozenset({"Success", "Failed", "Cancel"})


def ci_time(moment: datetime | None) -> str:
    """CI's ``2024-03-05T09:41:07+0800`` (Beijing time), or ``-`` before it happens."""
    if moment is None:
        return "-"
    return moment.astimezone(CHINA).strftime(CI_TIME_FORMAT)


def parse_ci_time(text: str) -> datetime:
    """Inverse of :func:`ci_time`; ``ValueError`` on anything else."""
    return datetime.strptime(text.strip().replace(" ", "+"), CI_TIME_FORMAT)


#: a random node for version-1 UUIDs, so JobIds do not carry this machine's MAC address
_NODE = secrets.randbits(48) | (1 << 40)


def new_job_id() -> str:
    """``j`` + 32 hex: a version-1 UUID, as real JobIds look (``j7d3e1c22a0b111ef…``)."""
    return "j" + uuid.uuid1(node=_NODE).hex


def queue_id_for(bucket: str) -> str:
    """The default queue of a bucket: ``p`` + 32 hex, stable across restarts."""
    return "p" + hashlib.md5(bucket.encode()).hexdigest()  # noqa: S324 - an identifier


def request_id() -> str:
    """An opaque id like CI's ``x-ci-request-id`` (base64 of ``<time>_<hex>_<hex>_<hex>``)."""
    parts = (secrets.token_hex(4), secrets.token_hex(4), secrets.token_hex(2), secrets.token_hex(2))
    raw = "_".join(parts)
    return base64.b64encode(raw.encode()).decode()


def trace_id() -> str:
    return base64.b64encode(secrets.token_hex(20).encode()).decode().rstrip("=")


# --- what was asked -----------------------------------------------------------------------


@dataclass(frozen=True)
class OperationSpec:
    """One ``Request.Operation``: what to produce and where."""

    output: dict[str, str]  # Region, Bucket, Object, AuObject, BassObject, DrumObject
    template_id: str | None = None
    voice_separate: Tree | None = None  # echoed as given
    user_data: str | None = None
    job_level: str | None = None

    @property
    def audio_mode(self) -> str:
        if self.template_id or not self.voice_separate:
            return "AudioAndBackground"
        return str(self.voice_separate.get("AudioMode") or "AudioAndBackground")

    @property
    def audio_params(self) -> media.AudioParams:
        """The request's AudioConfig with CI's defaults (codec aac, 44100 Hz; amr 8000/mono).
        A template's parameters are unknown to the emulator: it uses the defaults."""
        config = (self.voice_separate or {}).get("AudioConfig") or {}
        if self.template_id or not isinstance(config, dict):
            config = {}
        codec = str(config.get("Codec") or "aac")
        amr = codec == "amr"
        bitrate = config.get("Bitrate")
        return media.AudioParams(
            codec=codec,
            samplerate=int(config.get("Samplerate") or (8000 if amr else 44100)),
            channels=int(config.get("Channels") or (1 if amr else 2)),
            bitrate=float(bitrate) if bitrate not in (None, "") else None,
        )


@dataclass(frozen=True)
class CallbackSpec:
    url: str | None = None  # None: the queue's; "no": none at all
    format: str | None = None  # None: the queue's (XML for a job-level URL)
    type: str = "Url"


@dataclass(frozen=True)
class JobRequest:
    input_object: str
    operations: tuple[OperationSpec, ...]
    queue_id: str | None = None
    callback: CallbackSpec = field(default_factory=CallbackSpec)
    #: the job's Tag: VoiceSeparate through ``POST /jobs``; another tag (NoiseReduction,
    #: Transcode, ...) when injected through the admin API, as a queue runs any tag's jobs
    tag: str = "VoiceSeparate"
    #: a 2020-2021 body: no EventName in its notification
    legacy: bool = False
    #: for a workflow's node: RunId, WorkflowId, WorkflowName, Name (spec §5.3)
    workflow: Tree | None = None
    cos_headers: tuple[tuple[str, str], ...] = ()


def _first(value: Any) -> Any:
    """xmlschema decodes a repeatable element as a list: take the first."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _text(value: Any) -> str | None:
    value = _first(value)
    if value is None:
        return None
    return str(value)


def _tree(value: Any) -> Tree:
    value = _first(value)
    return value if isinstance(value, dict) else {}


def _plain(value: Any) -> Any:
    """A decoded subtree with every scalar as a string (CI echoes strings)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return "" if value is None else str(value)


def job_request_from(document: Mapping[str, Any]) -> JobRequest:
    """A :class:`JobRequest` from a decoded, schema-valid ``<Request>`` (root left out)."""
    operations = document.get("Operation") or []
    operations = operations if isinstance(operations, list) else [operations]
    specs = []
    for op in operations:
        op = op if isinstance(op, dict) else {}
        output = {k: str(v) for k, v in _tree(op.get("Output")).items() if v not in (None, "")}
        vs = _tree(op.get("VoiceSeparate"))
        specs.append(
            OperationSpec(
                output=output,
                template_id=_text(op.get("TemplateId")),
                voice_separate=_plain(vs) if vs else None,
                user_data=_text(op.get("UserData")),
                job_level=_text(op.get("JobLevel")),
            )
        )
    return JobRequest(
        input_object=_text(_tree(document.get("Input")).get("Object")) or "",
        operations=tuple(specs),
        queue_id=_text(document.get("QueueId")),
        callback=CallbackSpec(
            url=_text(document.get("CallBack")) or None,
            format=_text(document.get("CallBackFormat")) or None,
            type=_text(document.get("CallBackType")) or "Url",
        ),
    )


# --- a job --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    code: str
    message: str


def planned_failure(input_object: str, marker: str) -> Failure | None:
    """The deterministic outcome rule (see the module docstring)."""
    key = input_object.lower()
    if not marker or marker.lower() not in key:
        return None
    if "notfound" in key:
        return Failure("1103", f"ResourceNotFound: input object {input_object} does not exist")
    if "denied" in key:
        return Failure("1124", "WriteTargetBucketDenied: no permission to write the output bucket")
    return Failure("1007", "InternalError: the audio stream could not be decoded")


@dataclass
class Job:
    """One job. Mutated only by :class:`JobStore`, under its lock; readers get copies."""

    job_id: str
    seq: int
    bucket: str
    region: str
    queue_id: str
    input_object: str
    operation: OperationSpec
    callback: CallbackSpec
    created_at: datetime
    run_at: datetime
    finish_at: datetime
    failure: Failure | None = None
    state: str = "Submitted"
    started_at: datetime | None = None
    ended_at: datetime | None = None
    code: str = "Success"
    message: str = ""
    produced: media.Produced | None = None
    finishing: bool = False
    tag: str = "VoiceSeparate"
    legacy: bool = False
    workflow: Tree | None = None
    cos_headers: tuple[tuple[str, str], ...] = ()

    @property
    def is_finished(self) -> bool:
        return self.state in TERMINAL

    def resolved_output(self) -> dict[str, str]:
        """Output with ``${jobid}`` and ``${ext}`` replaced, as callbacks show it (§2.5)."""
        real = self.produced.real if self.produced else False
        ext = media.extension_for(self.operation.audio_params, real=real)
        return {k: resolve_key(v, self.job_id, ext) for k, v in self.operation.output.items()}

    def output_targets(self, *, real: bool) -> list[media.OutputTarget]:
        ext = media.extension_for(self.operation.audio_params, real=real)
        output = self.operation.output
        return [
            media.OutputTarget(
                role=role,
                bucket=output.get("Bucket", self.bucket),
                key=resolve_key(output[media.ROLE_KEYS[role]], self.job_id, ext),
            )
            for role in media.roles_for(self.operation.audio_mode, output)
        ]


def resolve_key(key: str, job_id: str, ext: str) -> str:
    return key.replace("${jobid}", job_id).replace("${ext}", ext)


def job_detail(job: Job, *, as_state: str | None = None) -> Tree:
    """The ``JobsDetail`` tree of ``job`` in the order of CI's responses (spec §3.3).

    ``as_state="Running"`` gives the job as it looked while running (the stale notification
    of the ``reorder`` fault).
    """
    state = as_state or job.state
    finished = state in TERMINAL
    operation: Tree = {}
    if job.operation.template_id:
        operation["TemplateId"] = job.operation.template_id
        operation["TemplateName"] = "emulator-voice-separate"
    if job.operation.voice_separate and not job.operation.template_id:
        operation[job.tag] = job.operation.voice_separate  # the tag's own container
    operation["Output"] = dict(job.resolved_output() if finished else job.operation.output)
    if finished and state == "Success" and job.produced is not None:
        operation["MediaInfo"] = job.produced.media_info
        operation["MediaResult"] = {"OutputFile": _output_file(job)}
    if job.operation.user_data is not None:
        operation["UserData"] = job.operation.user_data
    if job.operation.job_level is not None:
        operation["JobLevel"] = job.operation.job_level
    started = job.started_at if state != "Submitted" else None
    source: Tree = {"BucketId": job.bucket, "Object": job.input_object, "Region": job.region}
    if job.cos_headers:
        source["CosHeaders"] = [{"Key": k, "Value": v} for k, v in job.cos_headers]
    extra: Tree = {"Workflow": dict(job.workflow)} if job.workflow else {}
    return {
        "Code": job.code if finished else "Success",
        "Message": job.message if finished else "",
        "JobId": job.job_id,
        "State": state,
        "CreationTime": ci_time(job.created_at),
        "StartTime": ci_time(started),
        "EndTime": ci_time(job.ended_at if finished else None),
        "QueueId": job.queue_id,
        "Tag": job.tag,
        "Input": source,
        "Operation": operation,
        **extra,
    }


def _output_file(job: Job) -> Tree:
    assert job.produced is not None
    output = job.operation.output
    return {
        "Bucket": output.get("Bucket", job.bucket),
        "Md5Info": [{"Md5": md5, "ObjectName": key} for key, md5 in job.produced.files],
        "ObjectName": [key for key, _ in job.produced.files],
        "ObjectPrefix": "",
        "Region": output.get("Region", job.region),
    }


def sorted_tree(tree: Any) -> Any:
    """Children in alphabetical order, as CI's callbacks have them (spec §5.5)."""
    if isinstance(tree, dict):
        return {k: sorted_tree(tree[k]) for k in sorted(tree)}
    if isinstance(tree, list):
        return [sorted_tree(v) for v in tree]
    return tree


# --- the store ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    """``GET /jobs`` filters (spec §4.2), already checked by the server."""

    tag: str = "VoiceSeparate"
    queue_id: str | None = None
    states: frozenset[str] = frozenset()  # empty: All
    size: int = 10
    next_token: str | None = None
    ascending: bool = False
    start: datetime | None = None
    end: datetime | None = None
    input_object: str | None = None
    workflow_id: str | None = None


class InvalidTokenError(ValueError):
    """A nextToken this emulator did not issue."""


class JobStore:
    """Every job, by id and by bucket. Thread-safe; hands out copies, never live jobs."""

    def __init__(
        self,
        *,
        job_seconds: float,
        fail_marker: str = "fail",
        queue_ids: Mapping[str, str] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._seq = 0
        self._job_seconds = job_seconds
        self._fail_marker = fail_marker
        self._queue_ids = dict(queue_ids or {})

    def queue_id(self, bucket: str) -> str:
        return self._queue_ids.get(bucket) or queue_id_for(bucket)

    def create(self, bucket: str, region: str, request: JobRequest, now: datetime) -> list[Job]:
        """One job per Operation, all Submitted at ``now``."""
        run_at = now + timedelta(seconds=self._job_seconds / 4)
        finish_at = now + timedelta(seconds=self._job_seconds)
        queue = request.queue_id or self.queue_id(bucket)
        created = []
        with self._lock:
            for operation in request.operations:
                self._seq += 1
                job = Job(
                    job_id=new_job_id(),
                    seq=self._seq,
                    bucket=bucket,
                    region=region,
                    queue_id=queue,
                    input_object=request.input_object,
                    operation=operation,
                    callback=request.callback,
                    created_at=now,
                    run_at=run_at,
                    finish_at=finish_at,
                    failure=planned_failure(request.input_object, self._fail_marker),
                    tag=request.tag,
                    legacy=request.legacy,
                    workflow=request.workflow,
                    cos_headers=request.cos_headers,
                )
                self._jobs[job.job_id] = job
                created.append(replace(job))
        return created

    def get(self, bucket: str, job_ids: Iterable[str]) -> tuple[list[Job], list[str]]:
        """``(found, missing)``; a job of another bucket counts as missing."""
        found, missing = [], []
        with self._lock:
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                if job is not None and job.bucket == bucket:
                    found.append(replace(job))
                else:
                    missing.append(job_id)
        return found, missing

    def all(self) -> list[Job]:
        with self._lock:
            return [replace(j) for j in sorted(self._jobs.values(), key=lambda j: j.seq)]

    def page(self, bucket: str, query: ListQuery) -> tuple[list[Job], str]:
        """One page and the token of the next one (``""`` when there is none).

        The token is the sequence number of the last job returned, so paging stays stable
        while new jobs arrive.
        """
        after = _token_seq(query.next_token)
        with self._lock:
            jobs = [j for j in self._jobs.values() if _matches(j, bucket, query)]
        jobs.sort(key=lambda j: j.seq, reverse=not query.ascending)
        if after is not None:
            jobs = [j for j in jobs if (j.seq > after if query.ascending else j.seq < after)]
        page = jobs[: query.size]
        token = _make_token(page[-1].seq) if len(jobs) > query.size else ""
        return [replace(j) for j in page], token

    def due(self, now: datetime) -> list[Job]:
        """Start what is due to run; claim and return (copies of) what is due to finish."""
        claimed = []
        with self._lock:
            for job in self._jobs.values():
                if job.state == "Submitted" and now >= job.run_at:
                    job.state = "Running"
                    job.started_at = now
                if job.state == "Running" and now >= job.finish_at and not job.finishing:
                    job.finishing = True
                    claimed.append(replace(job))
        return claimed

    def finish(
        self, job_id: str, now: datetime, produced: media.Produced | None, failure: Failure | None
    ) -> Job:
        """Record the end of a claimed job; returns a copy of it, finished."""
        with self._lock:
            job = self._jobs[job_id]
            job.produced = produced
            job.ended_at = now
            job.finishing = False
            if failure is None:
                job.state, job.code, job.message = "Success", "Success", ""
            else:
                job.state, job.code, job.message = "Failed", failure.code, failure.message
            return replace(job)


def _matches(job: Job, bucket: str, query: ListQuery) -> bool:
    return (
        job.bucket == bucket
        and query.tag == "VoiceSeparate"
        and query.workflow_id is None
        and (query.queue_id is None or job.queue_id == query.queue_id)
        and (not query.states or job.state in query.states)
        and (query.start is None or job.created_at >= query.start)
        and (query.end is None or job.created_at <= query.end)
        and (query.input_object is None or job.input_object == query.input_object)
    )


def _make_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"emu:{seq}".encode()).decode().rstrip("=")


def _token_seq(token: str | None) -> int | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "emu" or not number.isdigit():
            raise ValueError(token)
        return int(number)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidTokenError("nextToken is not one this service issued") from exc


# --- running a job to its end -------------------------------------------------------------


def produce(job: Job, data_dir: Path | None) -> tuple[media.Produced | None, Failure | None]:
    """What finishing ``job`` yields: its planned failure, real media or synthetic media."""
    if job.failure is not None:
        return None, job.failure
    source = media.real_input(data_dir, job.bucket, job.input_object)
    params = job.operation.audio_params
    if source is not None and data_dir is not None:
        try:
            targets = job.output_targets(real=True)
            return media.separate(source, data_dir, targets, params.channels), None
        except media.MediaError as exc:
            return None, Failure(exc.code, exc.message)
    targets = job.output_targets(real=False)
    return media.synthesize(job.job_id, job.input_object, targets, params), None
