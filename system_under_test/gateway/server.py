"""The gateway process: parse the command line, load, wire the parts, serve until SIGTERM.

``python -m system_under_test serve-gateway ...`` lands in :func:`main` (see ``settings.py`` for
the options). Start-up: ``configure_process("gateway")`` (one torch thread, logging), the ranker
and features (never the embedding tables), Redis features if configured (the password from
``RECCHAOS_REDIS_PASSWORD``, see ``auth.py``), one ranker pass to warm
up, ``freeze_heap()``, a ping to every shard copy and the region to open the connections, the
file limit raised to fit ``--max-connections`` (``listener.raise_file_limit``), then the HTTP
server and the ``ready port=P ...`` log line, which states the connection cap, the file limit
and the HTTP limits in force.
"""

from __future__ import annotations

import asyncio
import logging


def main(argv: list[str]) -> int:
    from system_under_test.gateway.settings import parse_settings

    settings = parse_settings(argv)  # exits 2 on a bad value
    from system_under_test.runtime import configure_process, freeze_heap, run_until_signalled

    log = configure_process("gateway")
    try:
        service = build_service(settings, log)
    except Exception as exc:  # noqa: BLE001 - a start-up failure is reported, not a traceback
        log.error("cannot start: %s: %s", type(exc).__name__, exc)
        return 1
    freeze_heap()
    return run_until_signalled(lambda stop: serve(service, settings, stop, log), log)


def build_service(settings, log: logging.Logger):
    """Load the model and features, connect nothing yet (clients connect lazily)."""
    from system_under_test import protocol
    from system_under_test.artifacts import artifact_dir, check_complete
    from system_under_test.auth import redis_password_from_env
    from system_under_test.gateway.cache import RedisL2
    from system_under_test.gateway.calls import ShardCaller, ShardCopies
    from system_under_test.gateway.metrics import GatewayMetrics
    from system_under_test.gateway.model import load_bundle
    from system_under_test.gateway.service import RecommendService

    # Servers never train: `up` (or `train`) does that first. check_complete names what is missing.
    path = artifact_dir(settings.preset, settings.artifacts)
    check_complete(path)
    bundle = load_bundle(path, settings.device)
    metrics = GatewayMetrics()
    copies = []
    for s, primary in enumerate(settings.primaries):
        replica = settings.replicas[s] if settings.replicas else None
        copies.append(
            ShardCopies(
                s,
                protocol.Client(primary.host, primary.port, f"shard-{s}-primary"),
                protocol.Client(replica.host, replica.port, f"shard-{s}-replica")
                if replica
                else None,
            )
        )
    caller = ShardCaller(copies, metrics)
    region = (
        protocol.Client(settings.region.host, settings.region.port, "region")
        if settings.region
        else None
    )
    l2 = None
    if settings.redis:
        l2 = RedisL2(
            settings.redis,
            on_error=lambda use: metrics.redis_errors.inc(use),
            password=redis_password_from_env(),
        )
    service = RecommendService(settings, bundle, caller, region, l2, metrics)
    if l2 is not None:
        written = service.features.load_into(l2)
        log.info(
            "redis %s: %s",
            settings.redis,
            f"wrote features of {written} users"
            if written
            else "features present or redis unavailable (serving from process)",
        )
    service.warm_up()
    n_items = bundle.n_items
    if n_items < settings.n_shards:
        raise ValueError(f"{settings.n_shards} shards for {n_items} items")
    log.info(
        "model %s loaded: %d users, %d items, dim %d, %d shards, L1 %d rows per table",
        bundle.version,
        bundle.n_users,
        n_items,
        bundle.dim,
        settings.n_shards,
        settings.l1_rows,
    )
    return service


async def serve(service, settings, stop: asyncio.Event, log: logging.Logger) -> int:
    from system_under_test.gateway.api import GatewayApp
    from system_under_test.gateway.listener import raise_file_limit, start_http_server

    await _connect_all(service)
    limits = settings.limits
    try:
        files = raise_file_limit(limits.max_connections)
    except (ValueError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    (log.warning if files.max_connections < limits.max_connections else log.info)(
        "%s", files.describe()
    )
    server = await start_http_server(
        GatewayApp(service),
        settings.host,
        settings.port,
        limits,
        on_reject=service.count_http_error,
        max_connections=files.max_connections,
    )
    port = int(server.sockets[0].getsockname()[1])
    log.info(
        "ready port=%d shards=%d replicas=%d region=%s redis=%s version=%s max_connections=%d "
        "nofile=%d request_timeout_s=%g idle_timeout_s=%g max_head=%d max_body=%d",
        port,
        settings.n_shards,
        len(settings.replicas),
        settings.region or "-",
        settings.redis or "-",
        service.bundle.version,
        files.max_connections,
        files.soft,
        limits.request_timeout_s,
        limits.idle_timeout_s,
        limits.max_head,
        limits.max_body,
    )
    await stop.wait()
    server.close()
    log.info(
        "connections at the cap: %d refused with 503, %d idle ones closed to make room",
        server.refused_total,
        server.evicted_total,
    )
    await service.close()
    return 0


async def _connect_all(service) -> None:
    """Open every shard connection before serving, so the first requests do not pay for it."""
    from system_under_test import protocol

    clients = [
        c
        for copies in service.caller.shards
        for c in (copies.primary, copies.replica)
        if c is not None
    ]
    if service.region is not None:
        clients.append(service.region)

    async def ping(client) -> None:
        try:
            await client.call("ping", 0.5)
        except (protocol.CallError, OSError):
            pass  # not up yet: it connects on first use

    await asyncio.gather(*(ping(c) for c in clients))
