"""A TCP proxy on loopback that a test can cut, silence and restore: the database "goes down"
or the network to it fails silently.

    with TcpProxy("127.0.0.1", 5432) as proxy:      # listens on 127.0.0.1:<proxy.port>
        proxy.cut()       # every open connection is reset; new ones are refused
        proxy.restore()   # accepting again
        proxy.silence()   # a silent partition: connections stay open (new ones too) but
                          # nothing is forwarded either way, and nobody is told
        proxy.held.wait() # …until something was sent and is held back
        proxy.resume()    # forwarding again (what was held back goes through)
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._up = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        #: set when data sent while silenced is being held back
        self.held = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._sockets.clear()

    def silence(self) -> None:
        """Forward nothing, either way, until :meth:`resume`; keep every connection open and
        accept new ones (whose handshake then never gets an answer)."""
        self.held.clear()
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self._flowing.is_set():
                    self.held.set()
                self._flowing.wait()  # silenced: held here (the kernel still acknowledges)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_RDWR)  # the other direction's recv ends too
            with self._lock:
                self._sockets.discard(source)
            source.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self._flowing.set()
        self.cut()
