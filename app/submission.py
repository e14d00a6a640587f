"""Submitting VoiceSeparate jobs to CI for cirelay's clients.

    POST /v1/jobs ─▶ request in CI's terms ─▶ every rule checked (422 lists them all)
      ─▶ Idempotency-Key: same key + same request ─▶ the same job, no second CI call;
                          same key + another request ─▶ 409
      ─▶ store the job (state Submitting, its CallBack URL carries its token) ─▶ commit
      ─▶ signed POST /jobs to CI (outside any transaction)
      ─▶ store CI's JobId, state Submitted, event job.submitted ─▶ 201

If CI refuses, the job is recorded as Failed with CI's Code, Message and RequestId and the
client gets CI's error. If CI does not answer in time the job may or may not exist at CI: it
stays Submitting with the error recorded; if CI did create it, its first notification (to the
job's own CallBack URL) binds it. It is never submitted a second time by cirelay.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from app import store, tracing
from app.ci import rules
from app.ci.client import CIClient
from app.ci.errors import CIError, CITimeoutError
from app.errors import ConflictError, UnavailableError, UnprocessableError
from app.jobs import JobChange, change_job, is_transition_allowed
from app.metrics import Metrics
from app.models import Job, JobReport, JobState, new_id
from app.tokens import sign_job

ClientFor = Callable[[str, str], CIClient]

_JSON_FIELDS = {
    "input", "template_id", "voice_separate", "output", "queue_id", "user_data", "job_level",
    "callback_format",
}  # fmt: skip
_AUDIO_CONFIG = {"codec": "Codec", "samplerate": "Samplerate", "bitrate": "Bitrate",
                 "channels": "Channels"}  # fmt: skip
#: each is one label of CI's host name ``<bucket>.ci.<region>.myqcloud.com``: at most 63
_BUCKET = re.compile(r"(?=.{1,63}$)[a-z0-9][a-z0-9-]{0,48}-[0-9]{1,20}")
_REGION = re.compile(r"(?=.{1,63}$)[a-z]{2,}(-[a-z0-9]+)+")
_OUTPUT = {"region": "Region", "bucket": "Bucket", "object": "Object", "au_object": "AuObject"}


def request_from_json(
    body: Any, *, default_bucket: str, default_region: str
) -> tuple[dict[str, Any], str, str]:
    """The CI ``<Request>`` (as a dict) for cirelay's JSON job, with its bucket and region.

    Only shapes are checked here (unknown fields, types); the rules of a VoiceSeparate job
    are :func:`app.ci.rules.check_request`'s, applied to the result.
    """
    problems: list[dict[str, str]] = []

    def text(value: Any, field: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            problems.append({"field": field, "message": "must be a string"})
            return None
        return str(value)

    def section(value: Any, field: str, allowed: Mapping[str, str]) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            problems.append({"field": field, "message": "must be an object"})
            return {}
        for key in sorted(set(value) - set(allowed)):
            problems.append({"field": f"{field}.{key}", "message": "unknown field"})
        converted = {ci: text(value.get(ours), f"{field}.{ours}") for ours, ci in allowed.items()}
        return {k: v for k, v in converted.items() if v is not None}

    if not isinstance(body, dict):
        raise UnprocessableError("the job must be a JSON object")
    for key in sorted(set(body) - _JSON_FIELDS):
        problems.append({"field": key, "message": "unknown field"})
    source = section(body.get("input"), "input", {"bucket": "b", "region": "r", "object": "o"})
    bucket = source.get("b") or default_bucket
    region = source.get("r") or default_region
    if not _BUCKET.fullmatch(bucket):
        problems.append({"field": "input.bucket", "message": "a bucket like name-1250000000"})
    if not _REGION.fullmatch(region):
        problems.append({"field": "input.region", "message": "a region like ap-guangzhou"})

    operation: dict[str, Any] = {}
    if (template := text(body.get("template_id"), "template_id")) is not None:
        operation["TemplateId"] = template
    voice = body.get("voice_separate")
    if voice is not None:
        if not isinstance(voice, dict):
            problems.append({"field": "voice_separate", "message": "must be an object"})
        else:
            extra = sorted(set(voice) - {"audio_mode", "audio_config"})
            problems += [
                {"field": f"voice_separate.{k}", "message": "unknown field"} for k in extra
            ]
            inline: dict[str, Any] = {}
            if (mode := text(voice.get("audio_mode"), "voice_separate.audio_mode")) is not None:
                inline["AudioMode"] = mode
            config = section(
                voice.get("audio_config"), "voice_separate.audio_config", _AUDIO_CONFIG
            )
            if config:
                inline["AudioConfig"] = config
            operation["VoiceSeparate"] = inline
    operation["Output"] = section(body.get("output"), "output", _OUTPUT)
    if (user_data := text(body.get("user_data"), "user_data")) is not None:
        operation["UserData"] = user_data
    if (level := text(body.get("job_level"), "job_level")) is not None:
        operation["JobLevel"] = level

    request: dict[str, Any] = {"Tag": "VoiceSeparate", "Input": {}, "Operation": operation}
    if "o" in source:
        request["Input"]["Object"] = source["o"]
    if (queue := text(body.get("queue_id"), "queue_id")) is not None:
        request["QueueId"] = queue
    if (fmt := text(body.get("callback_format"), "callback_format")) is not None:
        request["CallBackFormat"] = fmt
    if problems:
        raise UnprocessableError("the job is not valid", problems)
    return request, bucket, region


def request_digest(request: Mapping[str, Any], bucket: str, region: str) -> str:
    """What the client asked for, for Idempotency-Key comparisons (the CallBack is ours)."""
    asked = {k: v for k, v in request.items() if k not in ("CallBack", "CallBackType")}
    canonical = json.dumps([asked, bucket, region], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Submitter:
    def __init__(
        self,
        engine: Engine,
        client_for: ClientFor,
        *,
        public_url: str,
        callback_keys: tuple[str, ...],
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.engine = engine
        self.client_for = client_for
        self.public_url = public_url.rstrip("/")
        self.callback_keys = callback_keys

    def callback_url(self, job_id: str) -> str:
        return f"{self.public_url}/callbacks/ci/{job_id}/{sign_job(job_id, self.callback_keys)}"

    def submit(
        self,
        request: dict[str, Any],
        bucket: str,
        region: str,
        now: datetime,
        *,
        idempotency_key: str | None = None,
    ) -> tuple[Job, bool]:
        """Submit one job; returns it and whether it is an earlier job replayed by key."""
        violations = rules.check_request(request)
        if violations:
            raise UnprocessableError(
                f"the job breaks {len(violations)} rule(s)",
                [{"field": v.field, "message": v.message} for v in violations],
            )
        digest = request_digest(request, bucket, region)
        if idempotency_key and (earlier := self._earlier(idempotency_key, digest)):
            return earlier, True
        try:
            client = self.client_for(bucket, region)
        except ValueError as exc:  # no CI credentials: an operator's problem, nothing stored
            raise UnavailableError("job submission is not configured (CIRELAY_CI_*)") from exc

        job_id = new_id("job", now)
        sent = {**request, "CallBack": self.callback_url(job_id), "CallBackType": "Url"}
        traceparent = tracing.current_traceparent()  # the submit's span: the job's trace
        try:
            with store.transaction(self.engine) as conn:
                store.insert_job(
                    conn,
                    _new_job_values(job_id, sent, bucket, region, now)
                    | {"idempotency_key": idempotency_key, "request_digest": digest,
                       "traceparent": traceparent},
                )  # fmt: skip
        except IntegrityError:  # a concurrent request with the same key won
            if idempotency_key and (earlier := self._earlier(idempotency_key, digest)):
                return earlier, True
            raise
        tracing.remember_job(job_id, traceparent)
        try:
            result = client.create_job(sent)
        except CIError as exc:
            self._record_refusal(job_id, exc, now)
            exc.details = [*exc.details, {"job_id": job_id}]
            raise
        with store.transaction(self.engine) as conn:
            change = record_submitted(conn, job_id, result.reports[0], now)
        self._count(change)
        return change.after, False

    def resubmit(self, job_id: str, now: datetime) -> Job | None:
        """Send a stored job CI never got: the process that stored it died before (or while)
        calling CI, and a retry with the same Idempotency-Key found it stored and answered
        201. The reconciler calls this only after CI's job list showed no such job. Marked
        first (``submit_error.code = "resubmitted"``, ambiguous), so two workers never both
        send it and a crash now leaves it to the ordinary bind-or-fail path. Returns the job
        once CI took it, else ``None``."""
        with store.transaction(self.engine) as conn:
            job = store.get_job(conn, job_id, for_update=True)
            if (job is None or job.state != JobState.SUBMITTING or job.ci_job_id or job.submit_error
                    or not job.request):  # fmt: skip
                return None
            mark = {"code": "resubmitted", "ambiguous": True,
                    "message": "CI never received the first submission; sent again"}  # fmt: skip
            store.update_job(conn, job_id, {"submit_error": mark})
        client = self.client_for(job.input.get("bucket") or "", job.input.get("region") or "")
        try:
            result = client.create_job(job.request)
        except CIError as exc:
            self._record_refusal(job_id, exc, now)
            return None
        with store.transaction(self.engine) as conn:
            change = record_submitted(conn, job_id, result.reports[0], now)
        self._count(change)
        return change.after

    def _earlier(self, key: str, digest: str) -> Job | None:
        with self.engine.connect() as conn:
            job = store.find_job_by_idempotency_key(conn, key)
        if job is not None and job.request_digest != digest:
            raise ConflictError(
                "this Idempotency-Key was used for a different job",
                [{"job_id": job.id}],
            )
        return job

    def _record_refusal(self, job_id: str, exc: CIError, now: datetime) -> None:
        error = {
            "code": exc.ci_code or exc.code,
            "message": exc.ci_message or exc.message,
            "request_id": exc.request_id,
        }
        ambiguous = isinstance(exc, CITimeoutError)  # CI may have the job: wait for its callback

        def refused(job: Job) -> dict[str, Any]:
            if ambiguous:
                return {"submit_error": error | {"ambiguous": True}}
            return {"state": JobState.FAILED, "submit_error": error, "updated_at": now,
                    "code": error["code"], "message": error["message"]}  # fmt: skip

        with store.transaction(self.engine) as conn:
            self._count(change_job(conn, job_id, refused, now))

    def _count(self, change: JobChange | None) -> None:
        if change and change.moved and self.metrics:
            self.metrics.transitions.labels(change.before.state, change.after.state).inc()


def record_submitted(conn: Connection, job_id: str, report: JobReport, now: datetime) -> JobChange:
    """CI accepted the job: bind its JobId and move Submitting -> Submitted, unless the job's
    first notification got here first (then only the JobId is filled in, if missing)."""

    def accepted(job: Job) -> dict[str, Any]:
        values: dict[str, Any] = {"updated_at": now}
        if job.ci_job_id is None:
            values |= {"ci_job_id": report.ci_job_id, "queue_id": report.queue_id,
                       "ci_created_at": report.created_at}  # fmt: skip
        if job.state == JobState.SUBMITTING and is_transition_allowed(job.state, report.state):
            values["state"] = report.state
        return values

    change = change_job(conn, job_id, accepted, now)
    assert change is not None
    return change


def _new_job_values(
    job_id: str, request: dict[str, Any], bucket: str, region: str, now: datetime
) -> dict[str, Any]:
    operation = request["Operation"]
    output = operation.get("Output", {})
    return {
        "id": job_id,
        "ci_job_id": None,
        "origin": "api",
        "state": JobState.SUBMITTING,
        "tag": "VoiceSeparate",
        "queue_id": request.get("QueueId"),
        "user_data": operation.get("UserData"),
        "detail": {
            "input": {"bucket": bucket, "region": region, "object": request["Input"].get("Object")},
            "output": {ours: output[ci] for ours, ci in _OUTPUT.items() if output.get(ci)},
            "result_files": [],
            "media_info": {},
            "workflow": None,
            "template": {"id": operation["TemplateId"], "name": None}
            if operation.get("TemplateId")
            else None,
        },
        "request": request,
        "created_at": now,
        "updated_at": now,
    }
