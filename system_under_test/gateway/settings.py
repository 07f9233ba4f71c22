"""The gateway's command line, parsed once into a frozen, validated settings object.

``python -m system_under_test serve-gateway --port P --preset NAME --shard-primary H:P ...``.
A bad value exits with code 2 and a message that names the option, the value and what is
allowed (argparse's own errors exit 2 too).

:class:`HttpLimits` holds what one gateway lets a client do (sizes, timeouts, connections). Its
defaults are the one statement of those values: the command-line defaults come from it, and a
load balancer in front of several gateways reads the same object (``HttpLimits()``) so that it
enforces the same limits.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from system_under_test.config import PRESETS
from system_under_test.gateway.overload import OverloadSettings


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


KIB = 1024


@dataclass(frozen=True)
class HttpLimits:
    """What one gateway accepts from its clients; beyond each limit, the answer in the comment.

    The HAProxy counterpart of each value is named so that a balancer config can be generated
    from this object: a balancer with looser limits would let through what the gateway refuses.
    """

    # 414 beyond. The request line is method, target and version. (HAProxy: within tune.bufsize)
    max_request_line: int = 8 * KIB
    # 431 beyond, for any one header line (name and value). (HAProxy: within tune.bufsize)
    max_header_line: int = 8 * KIB
    # 431 beyond: request line and every header line together. (HAProxy: tune.bufsize must be
    # at least this plus tune.maxrewrite)
    max_head: int = 64 * KIB
    # 413 beyond (Content-Length, or the chunks received so far).
    max_body: int = 64 * KIB
    # 408 and close when a request has not arrived in full (head and body) this long after its
    # first byte: slow-header and slow-body clients. (HAProxy: none; its timeout http-request
    # also times the wait for a first request, so it gets idle_timeout_s: balancer.py)
    request_timeout_s: float = 10.0
    # A connection with no request in progress is closed after this long: a fresh one that
    # never sends, or a keep-alive one between requests. Long, because clients keep pools of
    # connections that sit unused for a while; at the cap, idle connections make room for new
    # ones anyway. (HAProxy: timeout http-keep-alive and timeout http-request)
    idle_timeout_s: float = 60.0
    # Open client connections. Beyond it the longest-idle connection is closed to make room, or,
    # when every connection is in the middle of a request, the new one gets a fast 503 and is
    # closed. The process raises its file limit to fit this many; a lower hard limit lowers the
    # cap and the start-up log says so. (HAProxy: maxconn)
    max_connections: int = 4096


# (field, option, what it is) for every HttpLimits field, in --help order.
LIMIT_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("max_request_line", "--max-request-line", "bytes in the request line; 414 beyond"),
    ("max_header_line", "--max-header-line", "bytes in one header line; 431 beyond"),
    ("max_head", "--max-head", "bytes in the request line and headers together; 431 beyond"),
    ("max_body", "--max-body", "bytes in a request body; 413 beyond"),
    ("request_timeout_s", "--request-timeout-s", "seconds from a request's first byte to its last"),
    ("idle_timeout_s", "--idle-timeout-s", "seconds a connection may wait with no request"),
    ("max_connections", "--max-connections", "open client connections"),
)


# The default share of the budget a shard call may take (10.2 ms of the default 17 ms). A call
# that has not answered by then would leave too little for ranking and the answer inside the
# p95 budget (15 ms); a healthy call takes about 1 ms, a +5 ms slow copy about 6-7 ms.
SLOW_CALL_SHARE = 0.6


@dataclass(frozen=True)
class GatewaySettings:
    host: str
    port: int
    preset: str
    artifacts: Path | None
    primaries: tuple[Address, ...]
    replicas: tuple[Address, ...]
    region: Address | None
    redis: str | None
    sla_ms: float = 20.0
    deadline_margin_ms: float = 3.0
    l1_rows: int = 20_000
    device: str = "cpu"
    # Below this much time left before a shard phase, the request goes to the region at once.
    min_left_ms: float = 2.0
    limits: HttpLimits = HttpLimits()
    # The overload controller: queueing-delay target and interval (overload.py).
    overload: OverloadSettings = OverloadSettings()

    # A shard call out longer than this is slow (None: SLOW_CALL_SHARE of the budget).
    slow_call_ms: float | None = None

    @property
    def budget_s(self) -> float:
        """Time from arrival to the deadline every shard call works against."""
        return (self.sla_ms - self.deadline_margin_ms) / 1000

    @property
    def slow_call_s(self) -> float:
        """A shard call's share of the budget: the request stops waiting for a call out this
        long, and the copies' breakers count it as slow."""
        if self.slow_call_ms is not None:
            return self.slow_call_ms / 1000
        return SLOW_CALL_SHARE * self.budget_s

    @property
    def n_shards(self) -> int:
        return len(self.primaries)


class UsageError(ValueError):
    """A command-line value the gateway cannot run with."""


def parse_address(option: str, value: str) -> Address:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(
            f"{option} {value!r} is not HOST:PORT with a port in 1..65535 (e.g. 127.0.0.1:7001)"
        )
    return Address(host, int(port))


def build_parser() -> argparse.ArgumentParser:
    from system_under_test.__main__ import prog

    p = argparse.ArgumentParser(
        prog=f"{prog()} serve-gateway",
        description="Serve the HTTP gateway (internal; started by `up`).",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, required=True, help="HTTP port (0: any free port)")
    p.add_argument("--preset", required=True, help=f"model preset: {', '.join(sorted(PRESETS))}")
    p.add_argument("--artifacts", type=Path, default=None, help="artifact cache directory")
    p.add_argument(
        "--shard-primary",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a shard primary; repeat in shard order (required)",
    )
    p.add_argument(
        "--shard-replica",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a shard replica; repeat in shard order (none, or one per primary)",
    )
    p.add_argument(
        "--region",
        default=None,
        metavar="HOST:PORT",
        help="the degraded region (without it, fallbacks go to the static list)",
    )
    p.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="redis://HOST:PORT/DB for the L2 cache and feature store (default: none)",
    )
    p.add_argument("--sla-ms", type=float, default=20.0, help="the SLA (default 20)")
    p.add_argument(
        "--deadline-margin-ms",
        type=float,
        default=3.0,
        help="deadline = arrival + SLA - margin (default 3)",
    )
    p.add_argument(
        "--slow-call-ms",
        type=float,
        default=None,
        help=f"a shard call out this long is slow: given up, and counted by the copies' "
        f"breakers (default: {SLOW_CALL_SHARE * 100:.0f}%% of SLA minus margin)",
    )
    p.add_argument(
        "--l1-rows",
        type=int,
        default=20_000,
        help="rows in the in-process L1 cache per table (default 20000; 0 disables)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the ranker runs (default cpu)",
    )
    shed = p.add_argument_group(
        "overload control (shed with a fast 503 when requests queue: overload.py)"
    )
    od = OverloadSettings()
    shed.add_argument(
        "--overload-target-ms",
        type=float,
        default=od.target_s * 1000,
        help=f"queueing delay the controller holds requests to while a queue stands "
        f"(default {od.target_s * 1000:g})",
    )
    shed.add_argument(
        "--overload-interval-ms",
        type=float,
        default=od.interval_s * 1000,
        help=f"a queue whose minimum delay over this long stays above the target is standing; "
        f"at any load a request queued longer is shed (default {od.interval_s * 1000:g})",
    )
    shed.add_argument(
        "--overload-retry-after-s",
        type=int,
        default=od.retry_after_s,
        help=f"Retry-After of a shed request's 503, whole seconds (default {od.retry_after_s})",
    )
    on_off = shed.add_mutually_exclusive_group()
    on_off.add_argument(
        "--shed",
        action="store_true",
        help="shed by the rule above (default off: the queueing delay is measured, nothing "
        "is shed; a request a balancer retried carries its wait at the first gateway in "
        "X-Request-Start, which the rule would take for a queue)",
    )
    on_off.add_argument(
        "--no-shed",
        action="store_true",
        help="measure queueing delay but never shed (the default; the deadline still starts "
        "at arrival)",
    )
    limits = p.add_argument_group("HTTP limits (the same values belong in a balancer in front)")
    defaults = HttpLimits()
    for name, option, what in LIMIT_OPTIONS:
        default = getattr(defaults, name)
        limits.add_argument(
            option, type=type(default), default=default, help=f"{what} (default {default})"
        )
    return p


def limits_from_args(args: argparse.Namespace) -> HttpLimits:
    """HttpLimits from the parsed options; UsageError naming the option for a bad value."""
    values = {name: getattr(args, name) for name, _, _ in LIMIT_OPTIONS}
    for name, option, _ in LIMIT_OPTIONS:
        value = values[name]
        if not value > 0:  # also rejects NaN
            raise UsageError(f"{option} {value} must be positive")
    if values["max_request_line"] > values["max_head"]:
        raise UsageError(
            f"--max-request-line {values['max_request_line']} must be at most "
            f"--max-head {values['max_head']} (the head includes the request line)"
        )
    if values["max_header_line"] > values["max_head"]:
        raise UsageError(
            f"--max-header-line {values['max_header_line']} must be at most "
            f"--max-head {values['max_head']} (the head includes every header line)"
        )
    return HttpLimits(**values)


def overload_from_args(args: argparse.Namespace) -> OverloadSettings:
    """OverloadSettings from the parsed options; UsageError naming the option for a bad value."""
    target, interval = args.overload_target_ms, args.overload_interval_ms
    if not 0 < target < args.sla_ms:
        raise UsageError(
            f"--overload-target-ms {target} must be in (0, --sla-ms {args.sla_ms:g}): a request "
            f"that may queue for the whole SLA cannot be answered in it"
        )
    if not target < interval <= 10_000:
        raise UsageError(
            f"--overload-interval-ms {interval} must be above --overload-target-ms {target:g} "
            f"and at most 10000 (Fail at Scale: about 100, 20x the target)"
        )
    if not 1 <= args.overload_retry_after_s <= 3600:
        raise UsageError(
            f"--overload-retry-after-s {args.overload_retry_after_s} must be in 1..3600 "
            f"(Retry-After is whole seconds)"
        )
    return OverloadSettings(
        target_s=target / 1000,
        interval_s=interval / 1000,
        retry_after_s=args.overload_retry_after_s,
        enabled=args.shed,
    )


def settings_from_args(args: argparse.Namespace) -> GatewaySettings:
    """Validate parsed options; raises UsageError with a message naming the option."""
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is out of range; allowed: 0 (any free) to 65535")
    if args.preset not in PRESETS:
        raise UsageError(
            f"--preset {args.preset!r} is unknown; allowed: {', '.join(sorted(PRESETS))}"
        )
    if not args.shard_primary:
        raise UsageError("no --shard-primary given; pass one HOST:PORT per shard, in shard order")
    primaries = tuple(parse_address("--shard-primary", v) for v in args.shard_primary)
    replicas = tuple(parse_address("--shard-replica", v) for v in args.shard_replica)
    if replicas and len(replicas) != len(primaries):
        raise UsageError(
            f"{len(replicas)} --shard-replica for {len(primaries)} --shard-primary; "
            f"give one replica per primary (in shard order) or none"
        )
    region = parse_address("--region", args.region) if args.region else None
    if args.redis is not None and not args.redis.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(f"--redis {args.redis!r} must be a URL like redis://127.0.0.1:6379/0")
    if not args.sla_ms > 0:
        raise UsageError(f"--sla-ms {args.sla_ms} must be positive")
    if not 0 <= args.deadline_margin_ms < args.sla_ms:
        raise UsageError(
            f"--deadline-margin-ms {args.deadline_margin_ms} must be in [0, --sla-ms {args.sla_ms})"
        )
    budget_ms = args.sla_ms - args.deadline_margin_ms
    if args.slow_call_ms is not None and not 0 < args.slow_call_ms <= budget_ms:
        raise UsageError(
            f"--slow-call-ms {args.slow_call_ms} must be in (0, {budget_ms:g}] "
            f"(--sla-ms minus --deadline-margin-ms)"
        )
    if args.l1_rows < 0:
        raise UsageError(f"--l1-rows {args.l1_rows} must be >= 0 (0 disables the L1 cache)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                "--device cuda was given but torch.cuda.is_available() is False; use --device cpu"
            )
    limits = limits_from_args(args)
    overload = overload_from_args(args)
    return GatewaySettings(
        host=args.host,
        port=args.port,
        preset=args.preset,
        artifacts=args.artifacts,
        primaries=primaries,
        replicas=replicas,
        region=region,
        redis=args.redis,
        sla_ms=args.sla_ms,
        deadline_margin_ms=args.deadline_margin_ms,
        l1_rows=args.l1_rows,
        device=args.device,
        limits=limits,
        overload=overload,
        slow_call_ms=args.slow_call_ms,
    )


def parse_settings(argv: list[str]) -> GatewaySettings:
    """Parse and validate, or print the problem and exit with code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return settings_from_args(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
