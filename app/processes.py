"""The processes around the ``cirelay`` commands: who holds a port, ``cirelay up``'s
children (the emulator and the worker, then the service, announced only once all three are
ready), and the one line a command prints for a fault outside it.

- :func:`taken_ports` says, before anything starts, which of the ports a command would bind
  are in use, and by which process when this user can see it (``/proc/net/tcp*`` gives the
  listening socket's inode, ``/proc/<pid>/fd`` the process holding it).
- :class:`Stack` starts the children, waits for each to be ready (the emulator: its port
  answers; the worker: it writes a byte on the pipe given by ``--ready-fd``; the service:
  ``/readyz`` answers 200), and stops them all on Ctrl-C, SIGTERM or SIGHUP, or when one of
  them exits. The service starts last, so whatever reaches it finds CI and the worker there.
- :func:`failure_message` turns the service, the database or a port failing into one line
  saying what was tried and what to do (no traceback).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from app.config import DEFAULT_DATABASE_URL, command_environ
from app.errors import ServiceError

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
#: after Ctrl-C, how long the children get to stop on it before they are sent SIGTERM
INTERRUPT_GRACE_SECONDS = 10.0


def taken_ports(host: str, ports: Mapping[str, int]) -> list[str]:
    """``"port 8080 (--port) is in use by pid 12 (cirelay: master)"`` for each of ``ports``
    (option name → port) that cannot be bound on ``host``; ``[]`` when all are free."""
    found = []
    for option, port in ports.items():
        if is_port_free(host, port):
            continue
        owner = port_owner(port)
        found.append(f"port {port} ({option}) is in use" + (f" by {owner}" if owner else ""))
    return found


def refuse_taken_ports(command: str, host: str, ports: dict[str, int]) -> int | None:
    """Exit status 1 and one line when a port is in use, before anything else happens."""
    if taken := taken_ports(host, ports):
        print(f"cirelay {command}: {'; '.join(taken)}. Stop that process or choose another"
              f" {' / '.join(ports)}.", file=sys.stderr)  # fmt: skip
        return 1
    return None


def is_port_free(host: str, port: int) -> bool:
    """Whether a listening socket could bind ``host:port`` now (SO_REUSEADDR as gunicorn and
    werkzeug set it, so a connection of a previous run in TIME_WAIT does not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int, proc: Path = Path("/proc")) -> str | None:
    """``pid 12 (python -m gunicorn …)`` for the process listening on TCP ``port``, if this
    user may see it (Linux); ``None`` otherwise."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if (
                    len(fields) > 9
                    and fields[3] == _LISTEN
                    and int(fields[1].rsplit(":", 1)[1], 16) == port
                ):
                    inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (pid_dir / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return f"pid {pid_dir.name} ({_command_line(pid_dir)})"
    return None


def _command_line(pid_dir: Path) -> str:
    try:
        words = (pid_dir / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    text = " ".join(" ".join(w.decode(errors="replace") for w in words).split())  # one line
    return text if len(text) <= 80 else text[:79] + "…"


@dataclass
class Child:
    """One process of the stack: how to start it and how to tell it is ready."""

    name: str
    command: list[str]
    is_ready: Callable[[Child], bool]
    #: the child says it is ready on a pipe given by ``--ready-fd``
    has_ready_fd: bool = False
    #: the pipe's read end, while the child runs
    ready_pipe: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def port_answers(host: str, port: int) -> Callable[[Child], bool]:
    def check(child: Child) -> bool:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
        except OSError:
            return False
        return True

    return check


def url_answers_200(url: str) -> Callable[[Child], bool]:
    def check(child: Child) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - our own URL
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    return check


def wrote_ready_byte(child: Child) -> bool:
    if child.ready_pipe is None:
        return False
    try:
        return bool(os.read(child.ready_pipe, 1))
    except BlockingIOError:
        return False


def ready_pipe() -> tuple[int, int]:
    """A pipe whose read end does not block: (read, write)."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    return read, write


class Stack:
    """The children of ``cirelay up``; :meth:`run` blocks until they stop."""

    def __init__(self, env: Mapping[str, str], out: Callable[[str], None]) -> None:
        self.env = dict(env)
        self.out = out
        self.children: list[Child] = []
        self.stop = threading.Event()
        #: Ctrl-C at a terminal reaches every child of the process group by itself
        self.group_interrupted = False

    def run(self, stages: Sequence[Sequence[Child]], banner: str) -> int:
        """Start each stage's children together, wait until all of them are ready, then the
        next stage; print ``banner`` once all are. Returns the exit status for ``up``."""
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, self._on_signal) for s in signals}
        try:
            for stage in stages:
                for child in stage:
                    self._start(child)
                if not self._wait_ready(stage):
                    return self._finish()
            self.out(banner)
            while not self.stop.is_set() and self._exited() is None:
                self.stop.wait(0.2)
            return self._finish()
        finally:
            self._terminate()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.group_interrupted = signum == signal.SIGINT
        self.stop.set()

    def _start(self, child: Child) -> None:
        pass_fds: tuple[int, ...] = ()
        if child.has_ready_fd:
            read, write = ready_pipe()
            child.ready_pipe = read
            child.command = [*child.command, "--ready-fd", str(write)]
            pass_fds = (write,)
        # Ctrl-C reaches the whole process group: each child takes it once its own handlers
        # are installed, and ignores it while still importing (no KeyboardInterrupt
        # traceback); this process sends SIGTERM to each child in any case.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            child.process = subprocess.Popen(child.command, env=self.env, pass_fds=pass_fds)  # noqa: S603
        finally:
            signal.signal(signal.SIGINT, previous)
            if pass_fds:
                os.close(pass_fds[0])
        self.children.append(child)

    def _wait_ready(self, stage: Sequence[Child]) -> bool:
        waiting = list(stage)
        while waiting:
            if self.stop.is_set() or self._exited() is not None:
                return False
            waiting = [child for child in waiting if not child.is_ready(child)]
            if waiting:
                self.stop.wait(0.1)
        return True

    def _exited(self) -> Child | None:
        return next(
            (c for c in self.children if c.process is not None and c.process.poll() is not None),
            None,
        )

    def _finish(self) -> int:
        """What ``up`` says when it ends: a calm "stopped" after a signal, else which child
        exited and how."""
        exited = None if self.stop.wait(0.3) else self._exited()  # a signal reaches all
        self._terminate()
        if exited is None:
            self.out("cirelay up: stopped")
            return 0
        assert exited.process is not None
        print(
            f"cirelay up: the {exited.name} exited (status {exited.process.returncode});"
            " stopped the others. Its output above says why.",
            file=sys.stderr,
            flush=True,
        )
        return 1

    def _terminate(self) -> None:
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        if self.group_interrupted:
            # they had Ctrl-C too: a SIGTERM on its heels would only race their handlers
            deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
            while any(p.poll() is None for p in running) and time.monotonic() < deadline:
                time.sleep(0.05)
            running = [p for p in running if p.poll() is None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for child in self.children:
            if child.ready_pipe is not None:
                with contextlib.suppress(OSError):
                    os.close(child.ready_pipe)
                child.ready_pipe = None


def failure_message(exc: BaseException) -> str | None:
    """One line saying what failed and what to do, for the faults a command meets outside
    itself (the service, the database, a port); ``None`` for anything else (a bug: its
    traceback is wanted)."""
    import requests
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, requests.Timeout):
        where = exc.request.url if exc.request else "the service"
        return f"{where} did not answer in time; is the service overloaded or stuck?"
    if isinstance(exc, requests.RequestException):
        where = exc.request.url if exc.request else "the service"
        return (f"could not reach {where} ({_root_cause(exc)}); is the service running"
                " (make run)? Otherwise pass --url or set CIRELAY_URL.")  # fmt: skip
    if isinstance(exc, DBAPIError):
        from sqlalchemy.engine import make_url

        given = command_environ().get("CIRELAY_DATABASE_URL") or DEFAULT_DATABASE_URL
        url = make_url(given).render_as_string(hide_password=True)
        first = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc) else ""
        return (f"the database {url} failed: {first}; check CIRELAY_DATABASE_URL and that"
                " the database is up.")  # fmt: skip
    if isinstance(exc, ServiceError):
        return f"{exc.code}: {exc}"
    if isinstance(exc, OSError):
        return f"{_root_cause(exc)}" + (f": {exc.filename}" if exc.filename else "")
    return None


def _root_cause(exc: BaseException) -> str:
    """The innermost OS error's text (``connection refused``), else the exception's name."""
    seen: BaseException | None = exc
    found = type(exc).__name__
    for _ in range(20):  # a chain, never a cycle, but bounded all the same
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.strerror:
            found = seen.strerror.lower()
        for arg in getattr(seen, "args", ()):
            if isinstance(arg, OSError) and arg.strerror:
                found = arg.strerror.lower()
        seen = seen.__cause__ or seen.__context__ or _wrapped(seen)
    return found


def _wrapped(exc: BaseException) -> BaseException | None:
    """urllib3 keeps the reason of a failed connection in ``reason`` or the first arg."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return reason
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, BaseException) else None
