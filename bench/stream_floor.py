"""The floor of ``bench/stream.py``: the least any server streaming cirelay's events does.

One process, one asyncio loop, no cirelay: it answers every ``GET`` with an open chunked
``text/event-stream`` response (``/readyz`` with an empty 200), and every :data:`POLL` seconds
(cirelay's tail on SQLite polls as often) reads the events committed since its last look from
cirelay's SQLite outbox (``seq``, ``type``, the size of ``data``: no JSON, no CloudEvent) and
writes them to every stream as one chunk: ``id:``, ``event:`` and a ``data:`` line as long
as cirelay's, with the event's ``time`` (which the benchmark times). The chunk is built once
and the same bytes object written to every transport.
Nothing else: no key, no filter, no cursor, no catch-up, no keep-alive, no metrics.

``bench/stream.py`` connects the same 1,000 readers to it while wrk loads cirelay (without
streams of its own): the throughput left is what the readers and the writes alone leave on
the machine, whatever server writes the streams. The readers count its events as cirelay's.

Run by ``bench/stream.py``: ``python bench/stream_floor.py --port N --database PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3

#: seconds between two reads of the outbox (cirelay's ``STREAM_POLL_SECONDS``)
POLL = 0.05
#: what a cirelay message holds around its ``data`` (the CloudEvent's envelope)
ENVELOPE_BYTES = 300
HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
READY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class Stream(asyncio.Protocol):
    def __init__(self, streams: set[asyncio.Transport]) -> None:
        self.streams = streams
        self.transport: asyncio.Transport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.transport in self.streams:
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        if self.head.startswith(b"GET /readyz"):
            self.transport.write(READY)
            self.head = b""
            return
        self.transport.write(HEAD + chunk(b"retry: 2000\n\n"))
        self.streams.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.streams.discard(self.transport)  # type: ignore[arg-type]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def main(port: int, database: str) -> None:
    streams: set[asyncio.Transport] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Stream(streams), "127.0.0.1", port, backlog=2048)
    db = sqlite3.connect(database)
    last = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    async with server:
        while True:
            await asyncio.sleep(POLL)
            rows = db.execute(
                "SELECT seq, type, time, length(data) FROM events WHERE seq > ? ORDER BY seq"
                " LIMIT 500",
                (last,),
            ).fetchall()
            db.commit()  # end the read transaction: the next read sees new commits
            if not rows:
                continue
            last = rows[-1][0]
            data = b"".join(  # the commit's time, as the benchmark's readers time it
                b'id: %d\nevent: %s\ndata: {"time":"%sZ","x":"%s"}\n\n'
                % (
                    seq,
                    kind.encode(),
                    at.replace(" ", "T").encode(),
                    b"x" * (size + ENVELOPE_BYTES),
                )
                for seq, kind, at, size in rows
            )
            framed = chunk(data)
            for transport in list(streams):
                transport.write(framed)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.database))
