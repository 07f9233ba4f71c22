"""The gateway process: parse the command line, load, wire the parts, serve until SIGTERM.

``python -m system_under_test serve-gateway ...`` lands in :func:`main` (see ``settings.py`` for
the options). Start-up: ``configure_process("gateway")`` (one torch thread, logging), the ranker
and features (never the embedding tables), Redis features if configured (the password from
``RECCHAOS_REDIS_PASSWORD``, see ``auth.py``), one ranker pass, a ping
to every shard copy and the region to open the connections, the warm-up (requests served end to
end, :func:`warm_up`), ``freeze_heap()``, the file limit raised to fit ``--max-connections``
(``listener.raise_file_limit``), then the HTTP server and the ``ready port=P ...`` log line, which
states the connection cap, the file limit and the HTTP limits in force: listening means serving
in time.
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
    return run_until_signalled(lambda stop: serve(service, settings, stop, log, freeze_heap), log)


def build_service(settings, log: logging.Logger):
    """Load the model and features, connect nothing yet (clients connect lazily)."""
    from system_under_test import protocol
    from system_under_test.artifacts import artifact_dir, check_complete
    from system_under_test.auth import redis_password_from_env
    from system_under_test.gateway.cache import RedisL2
    from system_under_test.gateway.calls import shard_caller
    from system_under_test.gateway.metrics import GatewayMetrics
    from system_under_test.gateway.model import load_bundle
    from system_under_test.gateway.service import RecommendService

    # Servers never train: `up` (or `train`) does that first. check_complete names what is missing.
    path = artifact_dir(settings.preset, settings.artifacts)
    check_complete(path)
    bundle = load_bundle(path, settings.device)
    metrics = GatewayMetrics()
    clients = []
    for s, primary in enumerate(settings.primaries):
        replica = settings.replicas[s] if settings.replicas else None
        clients.append(
            (
                protocol.Client(primary.host, primary.port, f"shard-{s}-primary"),
                protocol.Client(replica.host, replica.port, f"shard-{s}-replica")
                if replica
                else None,
            )
        )
    caller = shard_caller(clients, metrics, settings.slow_call_s)
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
        patient = l2.patient()  # start-up work, not a request: seconds, not 2 ms
        try:
            written = service.features.load_into(patient)
        finally:
            patient.close()
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


async def serve(
    service, settings, stop: asyncio.Event, log: logging.Logger, freeze_heap=None
) -> int:
    from system_under_test.gateway.api import GatewayApp
    from system_under_test.gateway.listener import raise_file_limit, start_http_server
    from system_under_test.gateway.overload import OverloadGate
    from system_under_test.runtime import serving_priority

    if not serving_priority():
        log.warning(
            "could not return to the normal scheduling priority and CPU share after start-up"
        )
    await _connect_all(service)
    metrics = service.metrics
    gate = OverloadGate(settings.overload, observe=metrics.observe_queue)
    metrics.registry.collectors.append(
        lambda: metrics.overloaded.set(value=1.0 if gate.overloaded else 0.0)
    )
    app = GatewayApp(service, gate)
    await warm_up(app, service, log)
    if freeze_heap is not None:
        freeze_heap()  # after the warm-up: what it allocated for good is frozen too
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
        app,
        settings.host,
        settings.port,
        limits,
        on_reject=service.count_http_error,
        max_connections=files.max_connections,
    )
    port = int(server.sockets[0].getsockname()[1])
    log.info(
        "ready port=%d shards=%d replicas=%d region=%s redis=%s version=%s max_connections=%d "
        "nofile=%d request_timeout_s=%g idle_timeout_s=%g max_head=%d max_body=%d "
        "overload_target_ms=%g overload_interval_ms=%g shed=%s",
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
        settings.overload.target_s * 1000,
        settings.overload.interval_s * 1000,
        "on" if settings.overload.enabled else "off",
    )
    await stop.wait()
    server.close()
    log.info(
        "connections at the cap: %d refused with 503, %d idle ones closed to make room; "
        "%d requests shed for queueing delay",
        server.refused_total,
        server.evicted_total,
        gate.controller.shed_total,
    )
    await service.close()
    return 0


# The warm-up: WARM_UP_USERS requests a round, at least WARM_UP_MIN_ROUNDS rounds, then more
# until a whole round is answered at tier primary or WARM_UP_TIMEOUT_S has passed.
WARM_UP_USERS = 16
WARM_UP_MIN_ROUNDS = 3
WARM_UP_TIMEOUT_S = 5.0


async def warm_up(app, service, log: logging.Logger) -> None:
    """Serve requests end to end before listening, so that listening means serving in time.

    A fresh gateway's first requests pay for first calls everywhere on their path: the Redis
    connection (redis-py connects on first use), numpy and torch first calls in features,
    merging and ranking (measured: ``np.unique``'s first call imports ``numpy.ma``, 13 ms), the
    JSON encoder, the first frames on each shard connection; a fresh gateway's first request
    took 17-35 ms, the next ones 2-5 ms. Each round asks for users not seen before (the lowest
    ids: their rows come from Redis or the shards, as a cold cache's would), through the HTTP
    app (routing, parsing, the JSON answer), and the region's path is called once. A shard that is down does not keep the gateway from listening: after
    WARM_UP_TIMEOUT_S it serves anyway (its first calls to that shard are then cold) and says so.
    """
    import json
    import time
    from collections import Counter

    from system_under_test.gateway.http import Request, encode_response

    n_users = service.bundle.n_users
    started = time.monotonic()
    tiers: Counter[str] = Counter()
    took_ms: list[float] = []
    rounds = 0
    while True:
        round_tiers: Counter[str] = Counter()
        for j in range(WARM_UP_USERS):
            user = (rounds * WARM_UP_USERS + j) % n_users  # the lowest ids: every shard's
            body = json.dumps({"user_id": user, "k": 10}).encode()
            headers = {"x-request-id": f"warm-up-{rounds}-{j}"}
            req = Request("POST", "/v1/recommend", "", headers, body, time.monotonic())
            sent = time.monotonic()
            resp = await app(req)
            encode_response(resp, keep_alive=True)
            took_ms.append((time.monotonic() - sent) * 1000)
            round_tiers[dict(resp.headers).get("X-Recchaos-Tier", str(resp.status))] += 1
        tiers += round_tiers
        rounds += 1
        took = time.monotonic() - started
        clean = set(round_tiers) == {"primary"}
        if rounds >= WARM_UP_MIN_ROUNDS and (clean or took > WARM_UP_TIMEOUT_S):
            break
        if not clean:
            await asyncio.sleep(0.05)  # a shard is not up yet: give it a moment
    await service.warm_up_fallbacks()
    log_fn = log.info if clean else log.warning
    log_fn(
        "warm-up: %d requests in %.0f ms (%s); the first took %.1f ms, the last round at most "
        "%.1f ms%s",
        sum(tiers.values()),
        took * 1000,
        ", ".join(f"{t} {n}" for t, n in sorted(tiers.items())),
        took_ms[0],
        max(took_ms[-WARM_UP_USERS:]),
        "" if clean else "; some shard did not answer at tier primary: serving cold",
    )


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
