"""The emulator's HTTP API: CI's job endpoints, and a small admin API for tests and demos.

CI endpoints (spec §1, §4), on Hosts ``<bucket>.ci.<region>.myqcloud.com`` or, as Tencent's
Python SDK sends them when pointed at an IP, ``<bucket>.cos.<region>.myqcloud.com``:

* ``POST /jobs``: Host → signature → ``create_5xx`` fault → body (XSD) → business rules →
  jobs created (``create_timeout`` fault around that) → ``<Response>`` of JobsDetail;
* ``GET /jobs/<id>[,<id>…]`` (at most 10): JobsDetail of each, ``NonExistJobIds`` per miss;
* ``GET /jobs?tag=…``: the list with queueId, states, size, nextToken, orderByTime,
  startCreationTime/endCreationTime (and inputObject, workflowId).

Every answer carries ``Server: tencent-ci`` and ``x-ci-request-id``; errors are CI's XML
``<Error>`` with ``x-ci-trace-id`` (spec §6). The bodies are built by :mod:`app.ci.wire`,
which validates each against its XSD before it leaves.

Admin endpoints (any Host, no signature; an emulator runs on a developer's machine):

* ``GET /_emulator/faults``: settings, ``next`` counters left and fire counts;
* ``POST /_emulator/faults``: a JSON partial update (see :mod:`app.emulator.faults`),
  ``{"reset": true}`` clears everything; answers the new status, 400 on a bad setting;
* ``GET /_emulator/deliveries[?job_id=…]``: every callback delivery and attempt;
* ``GET /_emulator/jobs``: every job (id, bucket, state, times);
* ``POST /_emulator/flush``: release notifications held by ``reorder`` mode ``reverse``;
* ``GET /_emulator/health``: ``{"status": "ok"}``;
* ``POST /_emulator/inject``: a job of any tag, as a queue runs it (:mod:`app.emulator.queue`);
* ``POST /_emulator/workflows``: a workflow instance: its tasks' jobs, then its WorkflowFinish.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from app.ci import wire
from app.ci.errors import CIDocumentError, SignatureError
from app.ci.rules import check_request
from app.ci.signing import AUTH_FIELDS, verify_request
from app.emulator import jobs, queue
from app.emulator.callbacks import Notifier, Outgoing
from app.emulator.faults import Faults, FaultSettingsError
from app.schemas import SchemaSet

if TYPE_CHECKING:
    from app.emulator import EmulatorConfig

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
HOST = re.compile(
    r"(?P<bucket>[a-z0-9][a-z0-9-]*-[0-9]+)\.(?P<kind>ci|cos)\.(?P<region>[a-z]+(?:-[a-z0-9]+)+)"
    r"\.myqcloud\.com(?::[0-9]+)?",
    re.IGNORECASE,
)
MAX_DESCRIBE_IDS = 10
MAX_LIST_SIZE = 100
LIST_STATES = frozenset(jobs.STATES)


class CIAnswer(Exception):
    """An error answered in CI's form: status, Code, Message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# --- the running emulator -----------------------------------------------------------------


class Emulator:
    """Store, faults, notifier and the ticker that moves jobs along; one per app."""

    def __init__(self, config: EmulatorConfig, clock: Clock, schemas: SchemaSet) -> None:
        self.config = config
        self.clock = clock
        self.schemas = schemas
        self.store = jobs.JobStore(
            job_seconds=config.job_seconds,
            fail_marker=config.fail_marker,
            queue_ids=config.queue_ids,
        )
        self.faults = Faults(config.faults)
        self.notifier = Notifier(
            self.faults,
            retry_schedule=config.callback_retry_schedule,
            timeout=config.callback_timeout,
            jitter=config.callback_jitter,
            workers=config.callback_workers,
        )
        #: workflow instances in flight (``POST /_emulator/workflows``)
        self.runs = queue.Runs()
        #: set when stopping: wakes the ticker and requests sleeping in ``create_timeout``
        self.stopping = threading.Event()
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._finishers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emulator-job")
        self._ticker = threading.Thread(target=self._tick_forever, name="emulator-ticker")
        self._ticker.daemon = True
        self._ticker.start()

    def tick(self, *, wait_for_finish: bool = False) -> None:
        """Move every job whose time has come; finishing happens on the finisher pool."""
        futures: list[Future[None]] = []
        for job in self.store.due(self.clock()):
            try:
                futures.append(self._finishers.submit(self._finish, job))
            except RuntimeError:  # shutting down
                return
        if wait_for_finish:
            wait(futures)

    def stop(self) -> None:
        """Stop the ticker, the finishers and the notifier; idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self.stopping.set()
        self._ticker.join(timeout=5)
        self._finishers.shutdown(wait=True, cancel_futures=True)
        self.notifier.stop()

    def _tick_forever(self) -> None:
        interval = min(0.05, max(self.config.job_seconds / 8, 0.01))
        while not self.stopping.wait(interval):
            try:
                self.tick()
            except Exception:  # the ticker must survive any one bad job
                log.exception("emulator tick failed")

    def _finish(self, job: jobs.Job) -> None:
        try:
            produced, failure = jobs.produce(job, self.config.data_dir)
        except Exception:
            log.exception("producing the results of job %s failed", job.job_id)
            produced, failure = None, jobs.Failure("1007", "InternalError: processing failed")
        done = self.store.finish(job.job_id, self.clock(), produced, failure)
        self._notify(done)
        run = self.runs.of(done.job_id)
        if run is not None:  # a workflow's task: the instance ends with its last one
            members, _ = self.store.get(run.injected.bucket, run.job_ids)
            if self.runs.ended(done, members):
                tree = queue.execution_tree(run, members)
                self.notifier.notify(
                    Outgoing(
                        job_id=str(run.workflow["RunId"]), url=run.injected.url,
                        format=run.injected.format, final=tree, running=tree,
                        event_name=None if run.injected.legacy else "WorkflowFinish",
                        element="WorkflowExecution",
                    )
                )  # fmt: skip

    def inject(self, body: Any, workflow: jobs.Tree | None = None) -> list[jobs.Job]:
        """Create the jobs an admin request asks for (:mod:`app.emulator.queue`)."""
        bucket = next(iter(self.config.queue_ids), "media-1250000000")
        injected = queue.parse_injection(
            body, bucket=bucket, region=self.config.region or "ap-guangzhou",
            queue_url=self.config.queue_callback_url,
            queue_format=self.config.queue_callback_format, workflow=workflow,
        )  # fmt: skip
        now = self.clock()
        created = [
            job
            for request in injected.requests
            for job in self.store.create(injected.bucket, injected.region, request, now)
        ]
        if workflow is not None:
            run = queue.Run(workflow, injected, now, [j.job_id for j in created])
            self.runs.add(run)
        return created

    def _notify(self, job: jobs.Job) -> None:
        """The TaskFinish notification, if the job (or its queue) asks for one (spec §5.1)."""
        spec = job.callback
        if spec.url == "no" or spec.type == "TDMQ":
            return  # CallBack=no; TDMQ is not emulated
        url = spec.url or self.config.queue_callback_url
        if not url:
            return
        fmt = spec.format or (self.config.queue_callback_format if not spec.url else "XML")
        self.notifier.notify(
            Outgoing(
                job_id=job.job_id,
                url=url,
                format=fmt,
                final=jobs.sorted_tree(jobs.job_detail(job)),
                running=jobs.sorted_tree(jobs.job_detail(job, as_state="Running")),
                event_name=None if job.legacy else "TaskFinish",
            )
        )


def emulator() -> Emulator:
    running: Emulator = current_app.extensions["ci_emulator"]
    return running


# --- request plumbing ---------------------------------------------------------------------

ci = Blueprint("ci", __name__)
admin = Blueprint("emulator_admin", __name__, url_prefix="/_emulator")


@ci.before_request
def _authenticate() -> None:
    """Host (→ bucket, region), then the q-sign signature over the request as received."""
    g.request_id = jobs.request_id()
    match = HOST.fullmatch(request.host or "")
    region = emulator().config.region
    if match is None or (region and match.group("region").lower() != region):
        raise CIAnswer(400, "InvalidHost", "the Host header is not a CI host of this service")
    g.cos_host = match.group("kind").lower() == "cos"
    g.bucket = match.group("bucket").lower()
    g.region = match.group("region").lower()
    params = {k: v for k, v in request.args.items()}
    authorization = request.headers.get("Authorization")
    if not authorization and "q-sign-algorithm" in params:  # signature in the query string
        authorization = "&".join(f"{k}={params.pop(k, '')}" for k in AUTH_FIELDS)
    config = emulator().config
    try:
        verify_request(
            request.method,
            request.path,
            params,
            dict(request.headers.items()),
            authorization,
            secret_lookup=lambda sid: config.secret_key if sid == config.secret_id else None,
            now=int(emulator().clock().timestamp()),
        )
    except SignatureError as exc:
        raise CIAnswer(exc.status_code, exc.ci_code, exc.message) from exc


@ci.after_request
def _ci_headers(response: Response) -> Response:
    response.headers["Server"] = "tencent-ci"
    response.headers["x-ci-request-id"] = getattr(g, "request_id", None) or jobs.request_id()
    return response


def _xml(body: bytes, status: int = 200) -> Response:
    return Response(body, status=status, content_type="application/xml")


def _error(status: int, code: str, message: str) -> Response:
    request_id = getattr(g, "request_id", None) or jobs.request_id()
    trace = jobs.trace_id()
    # COS hosts name the resource (spec §6.1); the SDK's error parser needs it
    resource = f"{request.host}{request.path}" if getattr(g, "cos_host", False) else None
    body = wire.build_error(
        code, message, request_id, trace, resource=resource, schemas=emulator().schemas
    )
    response = _xml(body, status)
    response.headers["x-ci-trace-id"] = trace
    return response


def _ci_error(exc: CIAnswer) -> Response:
    if exc.status >= 500:
        log.warning("answering %s %s", exc.status, exc.code)
    return _error(exc.status, exc.code, exc.message)


# --- CI endpoints -------------------------------------------------------------------------


@ci.post("/jobs")
def create_jobs() -> Response:
    running = emulator()
    if running.faults.fire("create_5xx"):
        raise CIAnswer(503, "ServiceUnavailable", "the service is busy, please retry later")
    document = _parse_body(running)
    violations = check_request(document)
    if violations:
        message = "; ".join(f"{v.field}: {v.message}" for v in violations)
        raise CIAnswer(400, violations[0].ci_code, message)
    job_request = jobs.job_request_from(document)
    timeout = running.faults.settings.create_timeout
    if running.faults.fire("create_timeout"):
        created = []
        if timeout.creates_job:
            created = running.store.create(g.bucket, g.region, job_request, running.clock())
        log.info("create_timeout fault: answering after %.1fs", timeout.seconds)
        running.stopping.wait(timeout.seconds)
        if not created:
            raise CIAnswer(503, "ServiceUnavailable", "the request timed out inside CI")
    else:
        created = running.store.create(g.bucket, g.region, job_request, running.clock())
    details = [jobs.job_detail(job) for job in created]
    return _xml(wire.build_create_response(details, schemas=running.schemas))


def _parse_body(running: Emulator) -> dict[str, Any]:
    body = request.get_data(cache=False)
    try:
        return wire.parse_request(body, schemas=running.schemas)
    except CIDocumentError as exc:
        raise CIAnswer(400, exc.ci_code, exc.message) from exc


@ci.get("/jobs/<path:job_ids>")
def describe_jobs(job_ids: str) -> Response:
    wanted = list(dict.fromkeys(i.strip() for i in job_ids.split(",") if i.strip()))
    if not wanted:
        raise CIAnswer(400, "InvalidArgument", "jobId: at least one JobId is required")
    if len(wanted) > MAX_DESCRIBE_IDS:
        raise CIAnswer(400, "InvalidArgument", f"jobId: at most {MAX_DESCRIBE_IDS} JobIds")
    found, missing = emulator().store.get(g.bucket, wanted)
    details = [jobs.job_detail(job) for job in found]
    body = wire.build_describe_response(details, missing, schemas=emulator().schemas)
    return _xml(body)


@ci.get("/jobs")
def list_jobs() -> Response:
    query = _list_query(request.args)
    try:
        page, token = emulator().store.page(g.bucket, query)
    except jobs.InvalidTokenError as exc:
        raise CIAnswer(400, "InvalidArgument", f"nextToken: {exc}") from exc
    details = [jobs.job_detail(job) for job in page]
    return _xml(wire.build_list_response(details, token, schemas=emulator().schemas))


def _list_query(args: Any) -> jobs.ListQuery:
    """Spec §4.2's parameters, each checked; InvalidArgument names the bad one."""
    tag = args.get("tag")
    if not tag:
        raise CIAnswer(400, "InvalidArgument", "tag: is required")
    size_text = args.get("size") or "10"
    if not size_text.isdigit() or not 1 <= int(size_text) <= MAX_LIST_SIZE:
        raise CIAnswer(400, "InvalidArgument", f"size: must be 1 to {MAX_LIST_SIZE}")
    order = args.get("orderByTime") or "Desc"
    if order not in ("Asc", "Desc"):
        raise CIAnswer(400, "InvalidArgument", "orderByTime: must be Asc or Desc")
    states = frozenset(s.strip() for s in (args.get("states") or "All").split(",") if s.strip())
    unknown = states - LIST_STATES - {"All"}
    if unknown:
        raise CIAnswer(400, "InvalidArgument", f"states: unknown {', '.join(sorted(unknown))}")
    return jobs.ListQuery(
        tag=tag,
        queue_id=args.get("queueId") or None,
        states=frozenset() if "All" in states else states,
        size=int(size_text),
        next_token=args.get("nextToken") or None,
        ascending=order == "Asc",
        start=_time_arg(args, "startCreationTime"),
        end=_time_arg(args, "endCreationTime"),
        input_object=args.get("inputObject") or None,
        workflow_id=args.get("workflowId") or None,
    )


def _time_arg(args: Any, name: str) -> datetime | None:
    text = args.get(name)
    if not text:
        return None
    try:
        return jobs.parse_ci_time(text)
    except ValueError as exc:
        raise CIAnswer(
            400, "InvalidArgument", f"{name}: must look like 2001-01-01T00:00:00+0800"
        ) from exc


# --- admin endpoints ----------------------------------------------------------------------


@admin.get("/faults")
def get_faults() -> Response:
    return jsonify(emulator().faults.status())


@admin.post("/faults")
def set_faults() -> Response | tuple[Response, int]:
    # whatever its declared type: `curl -d '{"drop": …}'` sends a form type (a dev tool)
    changes = request.get_json(force=True, silent=True)
    if not isinstance(changes, dict):
        return jsonify({"error": "bad_request", "message": "a JSON object is required"}), 400
    try:
        emulator().faults.update(changes)
    except FaultSettingsError as exc:
        return jsonify({"error": "bad_request", "message": str(exc)}), 400
    log.info("faults updated: %s", sorted(changes))
    return jsonify(emulator().faults.status())


@admin.get("/deliveries")
def get_deliveries() -> Response:
    return jsonify(emulator().notifier.deliveries(request.args.get("job_id") or None))


@admin.get("/jobs")
def get_jobs() -> Response:
    return jsonify(
        [
            {
                "job_id": job.job_id,
                "bucket": job.bucket,
                "state": job.state,
                "input_object": job.input_object,
                "created": jobs.ci_time(job.created_at),
                "started": jobs.ci_time(job.started_at),
                "ended": jobs.ci_time(job.ended_at),
            }
            for job in emulator().store.all()
        ]
    )


@admin.post("/flush")
def flush() -> Response:
    emulator().notifier.flush_held()
    return jsonify({"status": "flushed"})


@admin.post("/inject")
def inject() -> tuple[Response, int]:
    try:
        created = emulator().inject(request.get_json(force=True, silent=True))
    except queue.InjectError as exc:
        return jsonify({"error": "bad_request", "message": str(exc)}), 400
    return jsonify({"job_ids": [j.job_id for j in created]}), 201


@admin.post("/workflows")
def start_workflow() -> tuple[Response, int]:
    body = request.get_json(force=True, silent=True)
    try:
        workflow = queue.new_workflow(body)
        created = emulator().inject(body, workflow)
    except queue.InjectError as exc:
        return jsonify({"error": "bad_request", "message": str(exc)}), 400
    return jsonify({**workflow, "job_ids": [j.job_id for j in created]}), 201


@admin.get("/health")
def health() -> Response:
    return jsonify({"status": "ok"})


# --- the app ------------------------------------------------------------------------------


def build_app(config: EmulatorConfig, clock: Clock, schemas: SchemaSet) -> Flask:
    """The emulator's Flask app; its :class:`Emulator` is ``app.extensions["ci_emulator"]``
    (stop it with ``.stop()`` when done; :func:`app.emulator.serve` does)."""
    app = Flask("cirelay-ci-emulator")
    app.config["MAX_CONTENT_LENGTH"] = wire.MAX_BODY_BYTES
    app.extensions["ci_emulator"] = Emulator(config, clock, schemas)
    app.register_blueprint(ci)
    if config.admin:
        app.register_blueprint(admin)

    @app.errorhandler(CIAnswer)
    def ci_answer(exc: CIAnswer) -> Response:
        return _ci_error(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if request.path.startswith("/_emulator/"):
            answer = jsonify({"error": exc.name, "message": exc.description})
            answer.status_code = exc.code or 500
            return answer
        g.request_id = getattr(g, "request_id", None) or jobs.request_id()
        code, status = _HTTP_CODES.get(exc.code or 500, ("InvalidUrl", 404))
        response = _error(status, code, exc.description or exc.name)
        response.headers["Server"] = "tencent-ci"
        response.headers["x-ci-request-id"] = g.request_id
        return response

    return app


#: werkzeug's errors in CI's words (spec §6.2)
_HTTP_CODES: dict[int, tuple[str, int]] = {
    404: ("InvalidUrl", 404),
    405: ("MethodNotAllowed", 405),
    411: ("MissingContentLength", 411),
    413: ("InvalidContent", 413),
}
