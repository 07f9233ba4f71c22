"""Does one component answer? A ping on the shard protocol, or a GET that must answer 200.

``python -m system_under_test probe ADDRESS [--http PATH] [--timeout S]`` is the health check of
every component's container (``deploy/compose.yaml``): shard copies and the region answer a
``ping`` on the shard protocol (docs/protocol.md), the gateway ``GET /healthz``. Exit 0 when it
answered, 1 when not (one line on stderr says what came back instead), 2 for bad arguments.
The launcher's readiness wait uses the same two checks. No torch: a probe costs an interpreter
start and the protocol's imports (msgpack, numpy), about 0.15 s of CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import sys
import urllib.error
import urllib.request


async def ping(address: str, timeout_s: float) -> str | None:
    """None when ``address`` (HOST:PORT) answered a ping within ``timeout_s``; else why not."""
    from system_under_test import protocol

    host, _, port = address.rpartition(":")
    client = protocol.Client(host.strip("[]"), int(port))
    try:
        await client.call("ping", timeout_s)
        return None
    except protocol.CallError as exc:
        return f"ping {address}: {exc}"
    finally:
        await client.close()


def http_get(url: str, timeout_s: float) -> str | None:
    """None when GET ``url`` answered 200 within ``timeout_s``; else what came back."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return None if resp.status == 200 else f"GET {url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"GET {url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"GET {url}: {getattr(exc, 'reason', exc)}"
    except http.client.HTTPException as exc:  # e.g. a self-connect reads back its own request
        return f"GET {url}: {type(exc).__name__}: {exc}"


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (a port from 1 to 65535)")
    return value


def main(argv: list[str] | None = None) -> int:
    from system_under_test.__main__ import prog

    parser = argparse.ArgumentParser(
        prog=f"{prog()} probe",
        description="Check that one component answers (exit 0) or not (exit 1): a ping on the "
        "shard protocol, or with --http a GET that must answer 200. For container health checks.",
    )
    parser.add_argument("address", type=_address, help="HOST:PORT of the component")
    parser.add_argument(
        "--http",
        metavar="PATH",
        help="GET http://ADDRESS/PATH instead of a ping (the gateway: /healthz or /readyz)",
    )
    parser.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to wait for the answer (default 2)"
    )
    args = parser.parse_args(argv)
    if args.http is not None:
        path = args.http if args.http.startswith("/") else "/" + args.http
        problem = http_get(f"http://{args.address}{path}", args.timeout)
    else:
        problem = asyncio.run(ping(args.address, args.timeout))
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
