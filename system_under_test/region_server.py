"""The degraded "region": fallback tier 3, a distilled model that needs no shard.

``python -m system_under_test serve-region --host H --port P --preset NAME`` loads only the
distilled model (and the popular-items list from ``features.npz`` as its own sanity fallback) and
serves it over the same framed protocol as the shards (``docs/protocol.md``):

* ``ping``       ``{"role": "region", "version", ...}``;
* ``recommend``  ``k`` distinct item ids for a history and dense features, best first;
* ``control``    the same per-request fault points as a shard (``shard_server.FaultPoints``),
                 with the same token.

``RegionModel`` is the computation, testable without sockets; ``RegionService`` maps ops to it;
``main`` is the process (the plumbing is shared with ``shard_server``).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable
from typing import Any

import numpy as np
import torch

from system_under_test import protocol
from system_under_test.models import DistilledModel
from system_under_test.protocol import Message, RemoteError, Tensors
from system_under_test.shard_server import (
    WARM_UP_ROUNDS,
    FaultPoints,
    Reply,
    StartupError,
    add_common_arguments,
    find_artifacts,
    id_tensor,
    int_field,
    parse_or_exit,
    serve_until_signalled,
    vector_tensor,
)

K_MAX = 100


class RegionModel:
    """The distilled model behind the region, with a guard that always yields ``k`` distinct ids.

    A model reply that is short, repeats an id, leaves the catalogue or scores NaN is completed
    from the popular list (scored below every model score) and counted in ``filled``.
    """

    def __init__(self, model: DistilledModel, popular: np.ndarray, n_items: int, n_dense: int):
        self.model = model.eval()
        self.popular = np.asarray(popular, dtype=np.int64)
        self.n_items, self.n_dense = n_items, n_dense
        self.device = next(iter(model.parameters()), torch.empty(0)).device

    def recommend(self, history: np.ndarray, dense: np.ndarray, k: int) -> tuple[int, Tensors]:
        """``(filled, {"ids": i64 [k], "scores": f32 [k]})``; negative history ids are padding."""
        if not 1 <= k <= min(K_MAX, self.n_items):
            raise RemoteError(
                "bad_request", f"k = {k} is out of range; allowed 1..{min(K_MAX, self.n_items)}"
            )
        if (history >= self.n_items).any():
            bad = int(history[history >= self.n_items][0])
            raise RemoteError(
                "bad_request", f"history item id {bad} is outside the catalogue [0, {self.n_items})"
            )
        hist = torch.from_numpy(np.ascontiguousarray(history[history >= 0])).to(self.device)
        with torch.inference_mode():
            ids, scores = self.model.recommend(hist, torch.from_numpy(dense).to(self.device), k)
        return self.complete(to_array(ids, np.int64), to_array(scores, np.float32), k)

    def complete(self, ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[int, Tensors]:
        """Keep the model's valid, distinct, finite answers in order; fill up to ``k``."""
        n = min(len(ids), len(scores))
        ids, scores = ids[:n], scores[:n]
        keep = (ids >= 0) & (ids < self.n_items) & np.isfinite(scores)
        _, first = np.unique(ids, return_index=True)
        distinct = np.zeros(n, bool)
        distinct[first] = True
        keep &= distinct
        ids, scores = ids[keep][:k], scores[keep][:k]
        missing = k - len(ids)
        if missing:
            pool = np.concatenate([self.popular, np.arange(self.n_items, dtype=np.int64)])
            pool = pool[(pool >= 0) & (pool < self.n_items)]
            _, first = np.unique(pool, return_index=True)
            pool = pool[np.sort(first)]
            extra = pool[~np.isin(pool, ids)][:missing]
            floor = float(scores.min()) if len(scores) else 0.0
            ids = np.concatenate([ids, extra])
            scores = np.concatenate([scores, floor - 1.0 - np.arange(missing, dtype=np.float32)])
        return missing, {"ids": ids.astype(np.int64), "scores": scores.astype(np.float32)}


def to_array(x: Any, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


class RegionService:
    def __init__(self, model: RegionModel, version: str, control_token: str | None = None) -> None:
        self.model, self.version = model, version
        self.faults = FaultPoints(control_token)
        self._warm_frame: bytes | None = None

    async def handle(self, msg: Message) -> Reply:
        reply = self.respond(msg)
        return reply if isinstance(reply, tuple) else await reply

    def respond(self, msg: Message) -> Reply | Awaitable[Reply]:
        """The server's handler: the reply at once, or an awaitable of it for a delay fault."""
        op = msg.header.get("op")
        if op == "ping":
            return self.ping(), {}
        if op == "control":
            return self.faults.control(msg.header), {}
        if op != "recommend":
            allowed = ["ping", "control", "recommend"]
            raise RemoteError(
                "bad_op", f"op {op!r} is not served by the region; allowed: {allowed}"
            )
        # Fault points: consulted before handling, per request (see shard_server.FaultPoints).
        return self.faults.respond(op, msg.header, lambda: self._recommend(msg))

    def warm_up(self, rounds: int = WARM_UP_ROUNDS) -> None:
        """Run the recommend path (decode, model, encode) before listening, as a shard does
        (``ShardService.warm_up``): a fresh process's first calls are the slow ones."""
        m = self.model
        rng = np.random.default_rng(0)
        for i in range(rounds):
            history = rng.integers(-1, m.n_items, 1 + i % 20)
            dense = rng.standard_normal(m.n_dense).astype(np.float32)
            header = {"id": i, "op": "recommend", "deadline": 0, "k": 1 + i % min(K_MAX, m.n_items)}
            frame = protocol.encode(
                {**header, "rid": "warm-up"}, {"history": history, "dense": dense}
            )
            reply = self.respond(protocol.decode_body(memoryview(frame)[4:]))
            assert isinstance(reply, tuple)  # no fault point is on before serving
            protocol.encode({"id": i, "ok": True, **reply[0]}, reply[1])

    def keep_warm(self) -> None:
        """One recommend's whole path (decode, model, encode) without sockets and without the
        fault points, as a shard keeps warm (``runtime.KEEP_WARM_S``): the region is
        called only when a shard cannot answer, so it is idle most of the time."""
        m = self.model
        if self._warm_frame is None:
            rng = np.random.default_rng(1)
            tensors: Tensors = {
                "history": rng.integers(0, m.n_items, 8),
                "dense": rng.standard_normal(m.n_dense).astype(np.float32),
            }
            header = {"id": 0, "op": "recommend", "k": min(10, K_MAX, m.n_items)}
            self._warm_frame = protocol.encode(header, tensors)
        fields, tensors = self._recommend(protocol.decode_body(memoryview(self._warm_frame)[4:]))
        protocol.encode({"id": 0, "ok": True, **fields}, tensors)

    def ping(self) -> dict[str, Any]:
        return {
            "role": "region",
            "version": self.version,
            "k_max": min(K_MAX, self.model.n_items),
            "n_items": self.model.n_items,
            "n_dense": self.model.n_dense,
            "faults": self.faults.spec is not None,
        }

    def _recommend(self, msg: Message) -> Reply:
        k = int_field(msg.header, "k", 1, K_MAX)
        history = id_tensor(msg.tensors, "history")
        dense = vector_tensor(msg.tensors, "dense", self.model.n_dense)
        assert history is not None
        filled, tensors = self.model.recommend(history, dense, k)
        return {"filled": filled}, tensors


def load_region(args: argparse.Namespace) -> tuple[RegionModel, str]:
    from system_under_test.artifacts import build_distilled_model, load_features, load_metadata

    path = find_artifacts(args.preset, args.artifacts)
    metadata = load_metadata(path)
    model = build_distilled_model(metadata).to(args.device)
    features = load_features(path)
    popular = np.asarray(features["popular"], dtype=np.int64)
    data = metadata["data"]
    n_items, n_dense = int(data["n_items"]), int(data["n_dense"])
    del features  # only the popular list is needed here
    return RegionModel(model, popular, n_items, n_dense), str(metadata["version"])


def main(argv: list[str]) -> int:
    from system_under_test.__main__ import prog

    parser = argparse.ArgumentParser(
        prog=f"{prog()} serve-region",
        description="Serve the degraded region: the distilled model (internal; started by `up`).",
    )
    add_common_arguments(parser)
    args = parse_or_exit(parser, argv)
    from system_under_test.artifacts import ArtifactError
    from system_under_test.auth import token_from_env
    from system_under_test.runtime import (
        configure_process,
        freeze_heap,
        serving_priority,
    )

    log = configure_process("region")
    try:
        model, version = load_region(args)
    except (StartupError, ArtifactError) as exc:
        log.error("%s", exc)
        return 1
    service = RegionService(model, version, token_from_env())
    if not serving_priority():
        log.warning(
            "could not return to the normal scheduling priority and CPU share after start-up"
        )
    service.warm_up()
    freeze_heap()

    def ready(port: int) -> str:
        return (
            f"role=region port={port} items={model.n_items} dense={model.n_dense} "
            f"device={args.device} version={version}"
        )

    return serve_until_signalled(service, args, log, ready)
