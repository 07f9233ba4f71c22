"""A deliberately broken gateway for tests: an HTTP front for the real gateway that corrupts
every answer it passes on (a test fixture, never a product flag).

    python tests/integration/broken_gateway.py --upstream 127.0.0.1:PORT --mode constant|nan \
        [--port P]

Each client connection gets its own keep-alive connection to the real gateway; requests are
forwarded unchanged, answers come back with their status and ``X-Recchaos-Tier`` header and a
rewritten body: ``constant`` answers the same k items (0 .. k-1, well formed: only agreement
with the reference shows it), ``nan`` keeps the items and makes every score NaN (malformed).
Prints ``{"event": "ready", "port": P}`` once listening; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys

import httptools


def corrupt(body: bytes, mode: str) -> bytes:
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        return body
    k = len(doc["items"])
    if mode == "constant":
        doc["items"] = list(range(k))
    else:
        doc["scores"] = [float("nan")] * k
    return json.dumps(doc, separators=(",", ":")).encode()


class _Message:
    """One HTTP message read by an httptools parser."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


async def _read(reader: asyncio.StreamReader, parser_cls: type) -> tuple[_Message, object] | None:
    msg = _Message()
    parser = parser_cls(msg)
    while not msg.done:
        data = await reader.read(65536)
        if not data:
            return None
        parser.feed_data(data)
    return msg, parser


async def handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: str, mode: str
) -> None:
    host, port = upstream.rsplit(":", 1)
    up_reader, up_writer = await asyncio.open_connection(host, int(port))
    for w in (writer, up_writer):
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            got = await _read(reader, httptools.HttpRequestParser)
            if got is None:
                return
            req, parser = got
            method = parser.get_method().decode()  # type: ignore[attr-defined]
            lines = [f"{method} {req.url.decode()} HTTP/1.1"]
            lines += [f"{k.decode()}: {v.decode()}" for k, v in req.headers]
            up_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + req.body)
            answer = await _read(up_reader, httptools.HttpResponseParser)
            if answer is None:
                return
            resp, rparser = answer
            body = corrupt(resp.body, mode)
            status = rparser.get_status_code()  # type: ignore[attr-defined]
            keep = [(k, v) for k, v in resp.headers if k.lower() != b"content-length"]
            out = [f"HTTP/1.1 {status} X"] + [f"{k.decode()}: {v.decode()}" for k, v in keep]
            out.append(f"Content-Length: {len(body)}")
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + body)
    except (ConnectionError, httptools.HttpParserError):
        return
    finally:
        for w in (writer, up_writer):
            w.close()


async def main_async(args: argparse.Namespace) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args.upstream, args.mode), "127.0.0.1", args.port, backlog=1024
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"event": "ready", "port": port}), flush=True)
    async with server:
        await stop.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--upstream", required=True, help="HOST:PORT of the real gateway")
    p.add_argument("--mode", choices=("constant", "nan"), required=True, help="the corruption")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    asyncio.run(main_async(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
