"""The redundant entry point: HAProxy in front of several gateways, its config generated here.

``python -m system_under_test serve-lb --port P --gateway H:P --gateway H:P --config PATH``
writes the config (:func:`render_config`) to PATH and then becomes HAProxy (``exec``, in the
foreground with ``-db``): ``up`` starts it like every other component, so it gets the same
process identity (PID and start time), log file, stop and restart handling. No Python stays
behind: the process that was started is HAProxy.

Why each setting is what it is (docs/recommender.md has the table):

* Health: every gateway is checked with ``GET /healthz`` every 100 ms (``fall 2 rise 2``,
  ``fastinter`` while a state changes), in one backend. A gateway listens only after its
  warm-up (``gateway/server.py``: requests served end to end, then the HTTP server), so a
  gateway that answers serves within the SLA as far as it alone can tell. ``/readyz`` would add
  "every shard primary answers", which is the same for every gateway and which no gateway can
  change, and each of its checks costs the gateway a ping to every primary: with two backends
  (ready ones first, live ones when none was ready) a request already sent to the ``ready``
  backend could not be retried elsewhere when every primary died at once (HAProxy picks the
  backend once), and got HAProxy's ``503 <NOSRV>``.
* Retries: ``retry-on conn-failure empty-response response-timeout`` with ``retries`` and
  ``option redispatch 1`` (every retry to another gateway; ``option http-buffer-request``, since
  HAProxy retries only a request it holds in full): a killed gateway refuses at once
  (``conn-failure``) or drops a kept-alive connection (``empty-response``); a frozen one
  accepts but never answers (``response-timeout``). ``timeout connect`` is a few ms: on
  loopback a live gateway accepts in microseconds.
* ``timeout server`` (:data:`SERVER_TIMEOUT_MS`) is below the 20 ms SLA, so a request sent to
  a frozen gateway is retried on the other in time. The retry carries the original
  ``X-Request-Start``, so the second gateway's deadline counts the time already spent and it
  answers from a faster tier instead of starting a full budget afresh. With the limit on
  (below) it is the SLA (:data:`LIMITED_SERVER_TIMEOUT_MS`) unless given: a frozen gateway can
  then hold only its ``maxconn`` requests, and past capacity a 10 ms retry of a busy gateway's
  request only moved work to the other, just as busy.
* Overload, when asked for (``--gateway-maxconn``; off by default, see :data:`GATEWAY_MAXCONN`):
  each gateway gets at most ``maxconn`` requests at a time (:data:`GATEWAY_MAXCONN` measured best;
  one request per connection, so this is its work in flight), and a request that finds every
  gateway full is answered by HAProxy itself at once (``max_queue`` 0, :data:`MAX_QUEUE`):
  ``503`` with ``Retry-After`` and a JSON body like the gateway's own shed answer, without work
  at any gateway. Only a retry waits for room, at most ``timeout queue``
  (:data:`QUEUE_TIMEOUT_MS`); with ``max_queue`` N > 0 a request waits so unless N already do.
  HAProxy's session then runs at autogroup nice :data:`BALANCER_AUTOGROUP_NICE`, so that its
  answers do not wait behind the gateways for a core. Past capacity the gateways then serve what they can serve in time instead of
  queueing everything until all of it is late. ``Retry-After`` is added only to a 503 that
  HAProxy made itself while some gateway was up (a queue timeout): a 503 with no gateway up
  (``<NOSRV>``) is an outage, not a shed request, and a gateway's own 503 passes unchanged.
  The time queued here is in ``X-Request-Start``, so a gateway's deadline counts it.
* Client-side limits come from the gateway's own :class:`~system_under_test.gateway.settings.
  HttpLimits`: a balancer with looser limits would let through what a gateway refuses, and a
  stricter one would answer bad requests itself instead of the gateway's 4xx JSON errors.
  One exception: HAProxy times a connection's wait for its first request and that request's
  arrival with one timer (``timeout http-request``), so it is the idle timeout, not the
  request timeout: a pooled connection unused for 10 s must not be answered 408.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from system_under_test.gateway.settings import HttpLimits

HAPROXY = "haproxy"
# The gateway's deadline is 17 ms after arrival (20 ms SLA less a 3 ms margin). A healthy
# answer takes 2-5 ms; after SERVER_TIMEOUT_MS without an answer the gateway is taken as frozen
# and the request goes to another one, which still has the rest of the deadline.
SERVER_TIMEOUT_MS = 10
# With the limit on (--gateway-maxconn), the default server timeout is the SLA instead: a gateway
# answers every request by then (its last fallback, the static list, at 19.5 ms), so a request
# is retried only when its gateway is frozen or dead, and a frozen one holds at most its
# gateway-maxconn requests. Past capacity a gateway short of CPU answers in 10-20 ms, and the
# 10 ms retry sent that work to the other gateway, just as busy: in the overload scenario at
# twice capacity (pr, 8 s at 1,200 requests/s) the served p99 was 14.4-19.0 ms with a 504 in one
# run of two (three attempts timed out); with 20 ms, 10.4-10.7 ms in three runs, no 504.
LIMITED_SERVER_TIMEOUT_MS = 20
CONNECT_TIMEOUT_MS = 5
CHECK_INTER_MS = 100
# A check not answered in this long fails: a frozen gateway is out after two (about 200 ms)
CHECK_TIMEOUT_MS = 50
RETRIES = 3
# Requests in flight at one gateway, when the limit is asked for (``--gateway-maxconn``; off by
# default). A gateway is one thread: what it has in flight shares its core, so past capacity more
# in flight means each answer later, not more answers; 2 measured best there with
# benchmarks/serving.py (docs/recommender.md, "Overload control"). Off by default because a fixed
# limit also sheds when requests are slow for want of a dependency, not of CPU: with one gateway
# of two restarting and every shard dying (cold_start) each request waited its 17 ms deadline,
# 200 requests/s held 3-4 in flight, and 2 a gateway shed 5 of 2,000.
GATEWAY_MAXCONN = 2
# How long a request may wait at the balancer for a gateway with room before it is answered 503
# with Retry-After. Counted in the request's deadline (X-Request-Start), so it is kept short.
QUEUE_TIMEOUT_MS = 5
# A request that finds this many already waiting at the balancer is answered 503 at once: a
# queue that long would not drain within the queue timeout anyway, and a fast no is the point.
# 0 (the default): none waits; a request that finds every gateway full is answered at once. A
# queued request that was then refused waited out the queue timeout (5 ms), and with a queue of
# 1 or 2 those were more than 1% of the rejections at twice capacity, so the rejections' p99 was
# the queue timeout; a queue timeout of 1-2 ms fired after 0-4 ms (HAProxy's millisecond ticks,
# its turn on a busy core) and shed more near capacity. Only a retry (a gateway frozen past the
# server timeout) still waits, at most the queue timeout.
MAX_QUEUE = 0
# With the limit on, HAProxy's session gets this autogroup nice (weight 9548 against a nice-0
# session's 1024) before it starts. Every component leads a session of its own and so is its own
# scheduling group (system_under_test/runtime.py): HAProxy's own ``nice`` directive would only
# order it within that group, where it is alone. On two cores busy with the gateways and shards
# a rejection answered "at once" (HAProxy's Ta 0 ms) still took 3 ms at the p99 from the
# client's send, waiting for HAProxy to run; with the larger share 1.0-1.3 ms. HAProxy spends
# about 0.1 ms of CPU a request, so the share takes little from the others.
BALANCER_AUTOGROUP_NICE = -10
MAX_QUEUE_TIMEOUT_MS = 1000  # past this a queued request is late anyway: it never helps
RETRY_AFTER_S = 1
MAXREWRITE = 1024  # HAProxy's room for header rewrites (X-Request-Start) within tune.bufsize
# The header HAProxy adds: when it received the request, in microseconds since the epoch.
REQUEST_START_HEADER = "X-Request-Start"


@dataclass(frozen=True)
class BalancerSettings:
    """What the config is generated from."""

    host: str
    port: int
    gateways: tuple[str, ...]  # HOST:PORT of each gateway, in order (gateway-0, gateway-1 ...)
    limits: HttpLimits = HttpLimits()
    server_timeout_ms: int = SERVER_TIMEOUT_MS
    connect_timeout_ms: int = CONNECT_TIMEOUT_MS
    check_inter_ms: int = CHECK_INTER_MS
    retries: int = RETRIES
    gateway_maxconn: int | None = None  # None: no limit (GATEWAY_MAXCONN is the tuned value)
    queue_timeout_ms: int = QUEUE_TIMEOUT_MS
    max_queue: int = MAX_QUEUE
    retry_after_s: int = RETRY_AFTER_S


def shed_body(s: BalancerSettings) -> str:
    """The JSON body of the balancer's own 503 (the fields of the gateway's shed answer)."""
    if s.gateway_maxconn is None:  # no limit: the balancer's own 503 means no gateway was up
        error = f"no gateway was up at the balancer; retry after {s.retry_after_s} s"
        allowed = "in flight per gateway: no limit"
    else:
        if s.max_queue == 0:
            error = (
                f"no gateway had room for this request at the balancer (each takes at most "
                f"{s.gateway_maxconn} at a time; only a retry waits for one, at most "
                f"{s.queue_timeout_ms} ms), or none was up; retry after {s.retry_after_s} s"
            )
        else:
            error = (
                f"no gateway had room for this request within {s.queue_timeout_ms} ms at the "
                f"balancer (each takes at most {s.gateway_maxconn} at a time), {s.max_queue} "
                f"were already waiting there, or none was up; retry after {s.retry_after_s} s"
            )
        allowed = f"in flight per gateway: at most {s.gateway_maxconn}"
    return json.dumps({"error": error, "field": "load", "allowed": allowed}, separators=(",", ":"))


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _haproxy_string(text: str) -> str:
    """``text`` as one double-quoted HAProxy argument (backslash and quote escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(s: BalancerSettings) -> str:
    """The HAProxy config for ``s``: loopback (or ``s.host``) only, one frontend, one backend
    with every gateway, checked on ``/healthz``; with ``s.gateway_maxconn``, each gateway taking
    at most that many requests at a time."""
    lim = s.limits
    bufsize = lim.max_head + MAXREWRITE
    check = (
        f"check inter {s.check_inter_ms}ms fastinter {max(s.check_inter_ms // 2, 10)}ms "
        f"downinter {s.check_inter_ms}ms fall 2 rise 2"
    )
    lines = [
        "# Generated by system_under_test/balancer.py; every run writes it again.",
        "global",
        "    nbthread 1",
        f"    maxconn {lim.max_connections}",
        f"    tune.bufsize {bufsize}",
        f"    tune.maxrewrite {MAXREWRITE}",
        "    log stderr format short local0 info",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlog-normal",  # only errors, retries and redispatches
        "    option http-keep-alive",
        "    http-reuse always",
        f"    timeout connect {s.connect_timeout_ms}ms",
        f"    timeout server {s.server_timeout_ms}ms",
        f"    timeout client {_ms(lim.idle_timeout_s)}",
        # HAProxy 2.6 times the wait for a connection's first request with the same timer as
        # the request's arrival (a gateway times them apart: idle, then from the first byte).
        # A client that pools connections may leave a new one unused for a while: at the
        # gateway's 10 s request timeout HAProxy answered such a connection 408 and the
        # client read that 408 as the answer to its next request (cold_start, 10 s after the
        # pool opened). So the timer is the idle timeout, the longer of the two, and a
        # connection that never sent anything is closed silently (http-ignore-probes), as a
        # gateway closes an idle one.
        f"    timeout http-request {_ms(max(lim.idle_timeout_s, lim.request_timeout_s))}",
        "    option http-ignore-probes",
        # HAProxy retries a request only if it holds all of it: without this a client that
        # sends the head and the body in two writes (urllib does) got a 502 when its request
        # went to a just-killed gateway over a kept-alive connection.
        "    option http-buffer-request",
        f"    timeout http-keep-alive {_ms(lim.idle_timeout_s)}",
        f"    timeout check {CHECK_TIMEOUT_MS}ms",
        f"    timeout queue {s.queue_timeout_ms}ms",
        f"    retries {s.retries}",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout",
        "",
        "frontend entry",
        f"    bind {s.host}:{s.port}",
        f"    maxconn {lim.max_connections}",
        f"    http-request set-header {REQUEST_START_HEADER} t=%[date(0,us)]",
    ]
    if s.gateway_maxconn is not None:
        # Fail fast: with this many already waiting for a gateway, a new request would only
        # wait out the queue timeout; answer it now (Retry-After: below, http-after-response).
        # max_queue 0: nothing waits; a request that finds every gateway full is answered now.
        full = (
            "{ be_conn_free(gateways) le 0 } { nbsrv(gateways) gt 0 }"
            if s.max_queue == 0
            else f"{{ queue(gateways) ge {s.max_queue} }}"
        )
        lines.append(
            f"    http-request return status 503 content-type application/json string "
            f"{_haproxy_string(shed_body(s))} hdr Retry-After {s.retry_after_s} if {full}"
        )
    lines += [
        "    default_backend gateways",
        "",
        "backend gateways",
        "    balance roundrobin",
        "    option httpchk GET /healthz",
        "    http-check expect status 200",
        # The balancer's own 503s (a queue timeout; no gateway up) get the shed body; only a
        # queue timeout (no gateway chosen, some gateway up) gets Retry-After: that one is shed.
        f"    http-error status 503 content-type application/json string "
        f"{_haproxy_string(shed_body(s))}",
        f"    http-after-response set-header Retry-After {s.retry_after_s} "
        "if { status 503 } !{ srv_id -m found } { nbsrv(gateways) gt 0 }",
    ]
    # A refused connection takes the gateway out at once (``observe layer4``), not at its next
    # failed check: a retry goes to a gateway with room, and with the live one full (maxconn)
    # HAProxy's round robin sent the retries of a request back to the killed one, which
    # refused all of them (a 503 at the moment of a gateway_kill). Checks bring it back.
    observe = "observe layer4 error-limit 1 on-error mark-down"
    limit = "" if s.gateway_maxconn is None else f" maxconn {s.gateway_maxconn}"
    for i, address in enumerate(s.gateways):
        lines.append(f"    server gateway-{i} {address}{limit} {observe} {check}")
    lines.append("")
    return "\n".join(lines)


def parse_request_start(value: str | None) -> float | None:
    """``t=1733469553123456`` (microseconds since the epoch, as the balancer writes it) or
    ``t=1733469553.123456`` (seconds with a fraction, as nginx's ``t=${msec}`` writes it) ->
    seconds since the epoch; None for anything else."""
    if not value or not value.startswith("t="):
        return None
    whole, dot, fraction = value[2:].partition(".")
    if not (whole.isascii() and whole.isdigit()) or len(whole) > 19:
        return None
    if not dot:
        return int(whole) / 1e6
    if not (fraction.isascii() and fraction.isdigit()) or len(fraction) > 9:
        return None
    return int(whole) + int(fraction) / 10 ** len(fraction)


def server_timeout_for(given_ms: int | None, gateway_maxconn: int | None) -> int:
    """The ``timeout server``: the one given, else :data:`LIMITED_SERVER_TIMEOUT_MS` with the
    limit on and :data:`SERVER_TIMEOUT_MS` without."""
    if given_ms is not None:
        return given_ms
    return SERVER_TIMEOUT_MS if gateway_maxconn is None else LIMITED_SERVER_TIMEOUT_MS


def check_limits(
    server_timeout_ms: int | None,
    gateway_maxconn: int | None,
    queue_timeout_ms: int | None,
    max_queue: int | None = None,
    source: str = "",
) -> str | None:
    """What is wrong with these balancer options (None: given as None or fine), naming the
    option, its value and what is allowed; ``source`` names where they came from."""
    where = f" ({source})" if source else ""
    most = HttpLimits().max_connections
    if server_timeout_ms is not None and not 1 <= server_timeout_ms <= 60_000:
        return (
            f"--server-timeout-ms {server_timeout_ms}{where} is out of range; allowed: 1 to 60000"
        )
    if gateway_maxconn is not None and not 1 <= gateway_maxconn <= most:
        return (
            f"--gateway-maxconn {gateway_maxconn}{where} is out of range; allowed: 1 to {most} "
            "(a gateway's own connection limit)"
        )
    if queue_timeout_ms is not None and not 1 <= queue_timeout_ms <= MAX_QUEUE_TIMEOUT_MS:
        return (
            f"--queue-timeout-ms {queue_timeout_ms}{where} is out of range; allowed: 1 to "
            f"{MAX_QUEUE_TIMEOUT_MS} (a request's time queued counts in its 20 ms budget)"
        )
    if max_queue is not None and not 0 <= max_queue <= most:
        return f"--max-queue {max_queue}{where} is out of range; allowed: 0 (no queue) to {most}"
    return None


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (a port from 1 to 65535)")
    return value


def main(argv: list[str]) -> int:
    from system_under_test.__main__ import prog

    p = argparse.ArgumentParser(
        prog=f"{prog()} serve-lb",
        description="Write the HAProxy config for the gateways and run HAProxy in the foreground.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--gateway",
        dest="gateways",
        action="append",
        type=_address,
        required=True,
        metavar="HOST:PORT",
        help="a gateway (repeat for each)",
    )
    p.add_argument("--config", type=Path, required=True, help="where to write the config")
    p.add_argument(
        "--server-timeout-ms",
        type=int,
        default=None,
        help=f"time a gateway has to answer before the request goes to another (default "
        f"{SERVER_TIMEOUT_MS}; {LIMITED_SERVER_TIMEOUT_MS} with --gateway-maxconn)",
    )
    p.add_argument(
        "--gateway-maxconn",
        type=int,
        default=None,
        help=f"requests one gateway is given at a time; the rest wait at the balancer, "
        f"--queue-timeout-ms at most (default: no limit; {GATEWAY_MAXCONN} measured best past "
        "capacity)",
    )
    p.add_argument(
        "--queue-timeout-ms",
        type=int,
        default=QUEUE_TIMEOUT_MS,
        help=f"how long a request waits at the balancer for a gateway with room before it is "
        f"answered 503 with Retry-After (default {QUEUE_TIMEOUT_MS})",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=MAX_QUEUE,
        help=f"a request that finds this many waiting at the balancer is answered 503 with "
        f"Retry-After at once; 0: none waits, one that finds every gateway full is answered so "
        f"at once, only a retry waits (default {MAX_QUEUE})",
    )
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"error: --port {args.port} is out of range; allowed: 1 to 65535", file=sys.stderr)
        return 2
    problem = check_limits(
        args.server_timeout_ms, args.gateway_maxconn, args.queue_timeout_ms, args.max_queue
    )
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    haproxy = shutil.which(HAPROXY)
    if haproxy is None:
        print(
            f"error: {HAPROXY} is not installed (PATH={os.environ.get('PATH', '')}); "
            "scripts/setup.sh installs Debian's haproxy",
            file=sys.stderr,
        )
        return 2
    settings = BalancerSettings(
        args.host,
        args.port,
        tuple(args.gateways),
        server_timeout_ms=server_timeout_for(args.server_timeout_ms, args.gateway_maxconn),
        gateway_maxconn=args.gateway_maxconn,
        queue_timeout_ms=args.queue_timeout_ms,
        max_queue=args.max_queue,
    )
    args.config.parent.mkdir(parents=True, exist_ok=True)
    args.config.write_text(render_config(settings))
    if settings.gateway_maxconn is not None:
        from system_under_test.runtime import raise_session_share

        raised = raise_session_share(BALANCER_AUTOGROUP_NICE)
        print(
            f"balancer autogroup nice {BALANCER_AUTOGROUP_NICE}: "
            + ("set" if raised else "refused (not root, no CAP_SYS_NICE, or not a session leader)"),
            file=sys.stderr,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(haproxy, [haproxy, "-db", "-f", str(args.config)])
    return 0  # not reached


__all__ = [
    "BalancerSettings",
    "check_limits",
    "parse_request_start",
    "render_config",
    "shed_body",
]
