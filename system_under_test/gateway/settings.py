"""The gateway's command line, parsed once into a frozen, validated settings object.

``python -m system_under_test serve-gateway --port P --preset NAME --shard-primary H:P ...``.
A bad value exits with code 2 and a message that names the option, the value and what is
allowed (argparse's own errors exit 2 too).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from system_under_test.config import PRESETS


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


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

    @property
    def budget_s(self) -> float:
        """Time from arrival to the deadline every shard call works against."""
        return (self.sla_ms - self.deadline_margin_ms) / 1000

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
    p = argparse.ArgumentParser(
        prog="python -m system_under_test serve-gateway",
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
    return p


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
    if args.l1_rows < 0:
        raise UsageError(f"--l1-rows {args.l1_rows} must be >= 0 (0 disables the L1 cache)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                "--device cuda was given but torch.cuda.is_available() is False; use --device cpu"
            )
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
