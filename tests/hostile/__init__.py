"""Helpers shared by the hostile-input and fuzz tests: hostile bodies are generated here, in
code, rather than stored as sample files (most are megabytes of repetition).

* :func:`xml_to_wire_json` - the JSON wire form (§5.4) of an XML notification;
* :class:`VirtualBody` - a seekable stream of tens of MB that is never held in memory;
* :class:`LoopbackServer` - a tiny HTTP server that records every request it gets, so a test
  can prove that nothing was fetched;
* :class:`FileSentinel` - a named pipe that records whether anyone opened it, so a test can
  prove that no file was read.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lxml import etree

#: what the loopback server and the file sentinel answer; must never reach a response
MARKER = "cirelay-hostile-marker-7d3f0a"


# --- the JSON wire form of an XML notification ------------------------------------------


def xml_to_wire_json(root: etree._Element) -> dict[str, Any]:
    """The JSON CI would send for the XML notification ``root``: no ``Response`` wrapper,
    every value a string, an array where an element repeats, empty elements left out."""
    value = _wire(root)
    return value if isinstance(value, dict) else {}


def _wire(element: etree._Element) -> Any:
    children = [c for c in element if isinstance(c.tag, str)]
    if not children:
        return element.text or None
    result: dict[str, Any] = {}
    for child in children:
        value = _wire(child)
        if value is None:
            continue
        tag = str(child.tag)
        if tag in result:
            existing = result[tag]
            result[tag] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            result[tag] = value
    return result or None


# --- a big body that is never in memory ---------------------------------------------------


class VirtualBody(io.RawIOBase):
    """``prefix`` followed by ``filler`` up to ``size`` bytes, produced as it is read.

    Seekable, so werkzeug's test client can measure it (it then sends a Content-Length,
    unless the request says ``Transfer-Encoding: chunked``).
    """

    def __init__(self, prefix: bytes, size: int, filler: bytes = b" ") -> None:
        super().__init__()
        assert len(filler) == 1 and size >= len(prefix)
        self._prefix = prefix
        self._size = size
        self._filler = filler
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size - self._pos))
        written = 0
        if self._pos < len(self._prefix):
            head = self._prefix[self._pos : self._pos + count]
            view[: len(head)] = head
            written = len(head)
        view[written:count] = self._filler * (count - written)
        self._pos += count
        return count

    def chunks(self, size: int = 1 << 16) -> Iterator[bytes]:
        """The whole body as chunks (for ``requests``, which then sends it chunked)."""
        self.seek(0)
        while chunk := self.read(size):
            yield chunk


# --- observers: was anything fetched, was any file read? ----------------------------------


class LoopbackServer:
    """An HTTP server on a free loopback port that answers every request with ``MARKER``
    (a DTD, an entity, a schema: whatever was asked for) and records it."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                owner.requests.append(f"{self.command} {self.path}")
                body = f'<!ENTITY leaked "{MARKER}">{MARKER}'.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/xml-dtd")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class FileSentinel:
    """A named pipe at ``path``: opening it for reading is recorded in :attr:`opened`.

    A writer thread blocks in ``open()`` until someone opens the pipe for reading; if that
    happens before :meth:`close`, the pipe was read by someone else (libxml2, say), and the
    reader gets ``MARKER``. :meth:`close` opens the read end itself to release the thread.
    """

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.url = path.resolve().as_uri()
        self.opened = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._wait_for_reader, daemon=True)
        self._thread.start()

    def _wait_for_reader(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # blocks until the read end is opened
        try:
            if not self._closing:
                self.opened.set()
                with contextlib.suppress(OSError):
                    os.write(fd, MARKER.encode())
        finally:
            os.close(fd)

    def close(self) -> None:
        self._closing = True
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            self._thread.join(5)
        finally:
            os.close(fd)
