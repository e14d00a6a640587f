"""The gunicorn internals ``app/serving`` relies on, pinned by their source.

:class:`~app.serving.balanced_worker.BalancedThreadWorker` replaces gthread's
``worker_connections`` attribute with a property and reads its connection count
(``nr_conns``); the hooks in ``app/serving/gunicorn_conf.py`` rely on when and with which
worker object the arbiter calls them. None of that is gunicorn's public API, so a release may
change it without notice. Each upstream method involved is recorded below with its signature
and a hash of its source, as of the gunicorn that ``pyproject.toml`` pins.

When a test here fails, gunicorn changed one of them: read the new code against the note
beside it, fix the worker or the hooks if they no longer hold, run
``tests/serving/test_balanced_worker.py`` (the real-gunicorn tests are marked slow), then
record the new signature and hash (the failure prints them) and move the pin in
``pyproject.toml`` to the version checked.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any

import gunicorn
import pytest
from gunicorn.arbiter import Arbiter
from gunicorn.asgi.protocol import ASGIProtocol, BodyReceiver
from gunicorn.workers import gasgi
from gunicorn.workers.gasgi import ASGIWorker
from gunicorn.workers.gthread import ThreadWorker

#: the gunicorn version the records below were read from
RECORDED_WITH = "27.0.1"


@dataclass(frozen=True)
class Internal:
    owner: type
    name: str
    signature: str
    #: the first 16 hex digits of the sha256 of ``inspect.getsource`` of the method
    source_sha256: str
    #: what app/serving relies on in it: what to re-check when it changed
    relied_on: str


INTERNALS = [
    Internal(ThreadWorker, "__init__", "(self, *args, **kwargs)", "5681b8b542ea91bf",
             "sets self.worker_connections = self.cfg.worker_connections (the balanced "
             "worker's setter ignores it; its getter reads the config) and self.nr_conns = 0"),
    Internal(ThreadWorker, "run", "(self)", "f92c7394d85715a4",
             "reads self.worker_connections once per turn of the loop (can_accept = "
             "self.nr_conns < self.worker_connections, where the balanced worker publishes its "
             "count) and turns at least once a second (poll timeout 1.0), which STALE_AFTER "
             "and 'looks again at its next turn' assume"),
    Internal(ThreadWorker, "set_accept_enabled", "(self, enabled)", "140150ebfd3cae34",
             "what a limit of 0 does: the listener leaves the poller until a later turn, so "
             "the worker accepts nothing meanwhile and connections already open go on"),
    Internal(ThreadWorker, "accept", "(self, listener)", "f8dcead3dce5c851",
             "nr_conns += 1 for every connection taken: the count the worker publishes"),
    Internal(ThreadWorker, "finish_request", "(self, conn, fs)", "616e7bb15a009ff7",
             "nr_conns -= 1 when a connection closes after its request; kept alive, it still "
             "counts"),
    Internal(ThreadWorker, "murder_keepalived", "(self, force=False)", "4459960c4ccc36d4",
             "nr_conns -= 1 for every expired kept-alive connection"),
    Internal(ThreadWorker, "murder_pending", "(self)", "7bf11f46454296e1",
             "nr_conns -= 1 for every connection that sent nothing in time"),
    Internal(ThreadWorker, "handle_exit", "(self, sig, frame)", "b4e7decd4f9203ac",
             "a graceful stop that is safe in a signal handler: gunicorn_conf.post_worker_init "
             "sends SIGQUIT and SIGINT here instead of gthread's handle_quit"),
    Internal(Arbiter, "spawn_worker", "(self)", "6abc0d90b0b9f80b",
             "pre_fork(server, worker) runs in the master before the fork, with the worker "
             "object then kept in server.WORKERS (the slot and the CPU are remembered on it); "
             "post_fork runs in the child"),
    Internal(Arbiter, "reap_workers", "(self)", "ebcf4187e9ebf378",
             "child_exit(server, worker) is called with that same object when a worker exits "
             "(its slot cleared, its metrics marked dead)"),
    # app.serving.asgi_worker: the event-loop worker and its protocol
    Internal(ASGIWorker, "_serve", "(self)", "986a7a4ab51cb4a7",
             "what Worker._serve replaces (with TLS or without a slot it still runs it): "
             "lifespan (the application has none), asyncio servers, a heartbeat a second; it "
             "makes each connection's protocol by the module-level name ASGIProtocol, which "
             "Worker.run points at DeadlineProtocol"),
    Internal(ASGIWorker, "_shutdown", "(self)", "9598f4e44fbadf84",
             "closes self.servers (none when Worker._serve accepts by itself) and waits up to "
             "graceful_timeout for nr_conns to reach 0"),
    Internal(ASGIProtocol, "connection_made", "(self, transport)", "9113fc16d379728e",
             "sets up the HTTP/1 parser and _request_ready; DeadlineProtocol arms the headers' "
             "deadline after it"),
    Internal(ASGIProtocol, "_on_headers_complete", "(self)", "27b70078474dd11e",
             "called once a request's headers are parsed, sets _current_request and "
             "_body_receiver: the headers' deadline is met"),
    Internal(ASGIProtocol, "connection_lost", "(self, exc)", "b137894451589cb3",
             "the cleanup (nr_conns, the body receiver told): the timer is cancelled first"),
    Internal(ASGIProtocol, "_handle_connection", "(self)", "9e8aa1729b5ad113",
             "arms the keep-alive timer while it waits for a later request's headers and "
             "cancels it only once they are complete: keepalive bounds those headers; a body "
             "not framed complete refuses keep-alive (the answer to a half-closed request "
             "closes the connection)"),
    Internal(ASGIProtocol, "_build_http_scope", "(self, request, sockname, peername)",
             "323a0d69faa9dee0", "the scope handed to the application, built per request"),
    Internal(ASGIProtocol, "_build_environ", "(self, request, sockname, peername)",
             "eaac3ae92aaf891a", "the environ the access log gets, built after the call"),
    Internal(BodyReceiver, "signal_disconnect", "(self)", "c03b7c0ceac24e13",
             "receive() answers http.disconnect from then on: a half-closed body ends"),
    Internal(ASGIProtocol, "_close_transport", "(self)", "44a7b01bff383f42",
             "closes the connection and marks it _closed (the headers' deadline uses it)"),
]  # fmt: skip


def _hash(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def _recheck(internal: Internal, what: str, found: str) -> str:
    return (
        f"gunicorn {gunicorn.__version__} changed {internal.owner.__name__}.{internal.name} "
        f"(recorded with {RECORDED_WITH}): its {what} is now {found!r}. app/serving relies on "
        f"it: {internal.relied_on}. Re-check that, then update this record and the gunicorn "
        "pin in pyproject.toml (see this module's docstring)."
    )


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda i: f"{i.owner.__name__}.{i.name}")
def test_a_relied_on_gunicorn_method_is_unchanged(internal: Internal) -> None:
    function = getattr(internal.owner, internal.name)
    signature = str(inspect.signature(function))
    assert signature == internal.signature, _recheck(internal, "signature", signature)
    assert _hash(function) == internal.source_sha256, _recheck(
        internal, "source hash", _hash(function)
    )


def _methods_using(owner: type, attributes: set[str]) -> set[str]:
    """The methods of ``owner`` (its own, not inherited) that read or write one of
    ``attributes`` on ``self``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(owner)))
    (cls,) = tree.body
    assert isinstance(cls, ast.ClassDef)
    return {
        method.name
        for method in cls.body
        if isinstance(method, ast.FunctionDef)
        and any(
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and node.attr in attributes
            for node in ast.walk(method)
        )
    }


def test_no_other_gthread_method_touches_the_count_or_the_limit() -> None:
    """A new method that changes ``nr_conns`` or reads ``worker_connections`` would escape the
    hashes above: the records must cover every one."""
    using = _methods_using(ThreadWorker, {"nr_conns", "worker_connections"})
    recorded = {i.name for i in INTERNALS if i.owner is ThreadWorker}
    assert using <= recorded, (
        f"gunicorn {gunicorn.__version__}: ThreadWorker methods {sorted(using - recorded)} now "
        "use nr_conns or worker_connections. Read them against "
        "app/serving/balanced_worker.py and record them in INTERNALS."
    )


def test_gthread_reads_the_limit_each_turn_and_sets_it_once() -> None:
    """The two lines the balanced worker's property stands on, named so that a record
    updated without reading the code still fails here."""
    assert "self.worker_connections = self.cfg.worker_connections" in inspect.getsource(
        ThreadWorker.__init__
    )
    run = inspect.getsource(ThreadWorker.run)
    assert "can_accept = self.nr_conns < self.worker_connections" in run
    assert "self.wait_for_and_dispatch_events(timeout=1.0)" in run
    assert "worker_connections" not in vars(ThreadWorker)  # an attribute, not a descriptor


def test_the_event_loop_worker_names_its_protocol_by_the_module_global() -> None:
    """``ASGIWorker._serve`` looks ``ASGIProtocol`` up in its module when a connection comes,
    which is how :class:`app.serving.asgi_worker.Worker` puts its protocol in."""
    source = textwrap.dedent(inspect.getsource(ASGIWorker._serve))
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)]
    assert any(isinstance(c.func, ast.Name) and c.func.id == "ASGIProtocol" for c in calls)
    assert gasgi.ASGIProtocol is ASGIProtocol or gasgi.ASGIProtocol.__mro__[1] is ASGIProtocol
