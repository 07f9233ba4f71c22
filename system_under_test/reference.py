"""``reference``: the reference answers a chaos run checks the served answers against.

    python -m system_under_test reference --preset P --users SPEC --out FILE [--k 10]
    python -m system_under_test reference --preset P --describe

For each user, offline and with the full model unsharded (``models.full_pipeline``: retrieve
the ``n_candidates`` best items by ``user . item``, drop the user's history, rank with the DLRM
ranker), the top k; the user's held-out next item, which the data generator knows (``data.py``
regenerates it from the preset's seed); and, for stating the quality of the fallback tiers, what
the distilled model (the degraded region, ``RegionModel.recommend``) and the static popular list
(the gateway's, without the user's history) answer. Written as one ``.npz`` (atomically), the
format ``docs/recommender.md`` describes; the harness reads it and never imports this package.

``--users``: ``all``, a range ``A-B`` (inclusive), a comma list ``1,5,9``, or ``@FILE`` (a
``.npy`` array or a text file of ids; repeats weight the summary). Users outside the population
are left out: the gateway answers them with the cold-start popular list, which needs no
reference. The command prints, over the given users, the mean agreement@k with the full model
and NDCG@k against the held-out item of each serving model.

``--describe`` prints the preset's population, catalogue, model version and largest k as JSON,
without torch and without artifacts: what a scenario's validation checks its mix against.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from system_under_test.config import PRESETS, get_preset, version_of

FORMAT = "recchaos-reference"
FORMAT_VERSION = 1
K_MAX = 100  # the gateway's largest k
_CHUNK = 256  # users per retrieval matmul


def describe(preset_name: str) -> dict[str, Any]:
    preset = get_preset(preset_name)
    return {
        "preset": preset.name,
        "model_version": version_of(preset),
        "population": preset.data.n_users,
        "catalogue": preset.data.n_items,
        "k_max": min(K_MAX, preset.data.n_items),
    }


def parse_users(spec: str, population: int) -> np.ndarray:
    """Every user id ``spec`` names, in order, repeats kept (see the module doc)."""
    spec = spec.strip()
    if spec == "all":
        return np.arange(population, dtype=np.int64)
    if spec.startswith("@"):
        return _read_users(Path(spec[1:]))
    if "-" in spec and "," not in spec:
        lo, _, hi = spec.partition("-")
        first, last = _int(lo, spec), _int(hi, spec)
        if last < first:
            raise ValueError(f"--users {spec!r}: the range ends before it starts")
        return np.arange(first, last + 1, dtype=np.int64)
    return np.array([_int(part, spec) for part in spec.split(",") if part.strip()], np.int64)


def _int(text: str, spec: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(
            f"--users {spec!r}: {text.strip()!r} is not a user id; allowed: all, A-B, "
            "a comma list of ids, or @FILE"
        ) from None
    if value < 0:
        raise ValueError(f"--users {spec!r}: user ids are >= 0, got {value}")
    return value


def _read_users(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            ids = np.load(path, allow_pickle=False)
        else:
            ids = np.array(path.read_text().replace(",", " ").split(), dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--users @{path}: cannot read user ids: {exc}") from None
    if ids.dtype.kind not in "iu" or ids.ndim != 1:
        raise ValueError(f"--users @{path}: expected a 1-d array of integer ids, got {ids.dtype}")
    if ids.size and int(ids.min()) < 0:
        raise ValueError(f"--users @{path}: user ids are >= 0, got {int(ids.min())}")
    return ids.astype(np.int64)


def compute(preset_name: str, users: np.ndarray, k: int, root: str | None) -> dict[str, Any]:
    """The reference arrays and their metadata for the distinct known ``users``."""
    import torch

    from system_under_test import artifacts
    from system_under_test.data import generate

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    directory = artifacts.ensure_artifacts(preset_name, root, log=_log)
    meta = artifacts.load_metadata(directory)
    features = artifacts.load_features(directory)
    full = artifacts.build_full_model(meta)
    distilled = artifacts.build_distilled_model(meta)
    data_cfg, model_cfg = artifacts.configs_of(meta)
    held_out = generate(data_cfg).test_items
    lists = _top_lists(full, distilled, features, model_cfg.n_candidates, users, k)
    return {
        "users": users,
        "held_out": held_out[users].astype(np.int64),
        **lists,
        "meta": {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "k": k,
            "model_version": meta["version"],
            "preset": preset_name,
            "population": data_cfg.n_users,
            "catalogue": data_cfg.n_items,
            "n_candidates": model_cfg.n_candidates,
        },
    }


def _top_lists(
    full: Any,
    distilled: Any,
    features: dict[str, np.ndarray],
    n_candidates: int,
    users: np.ndarray,
    k: int,
) -> dict[str, np.ndarray]:
    """``items`` (full model), ``distilled`` and ``popular`` top-k per user, -1 padded."""
    import torch

    from system_under_test.models import full_pipeline

    history, dense = features["history"], features["dense"]
    popular = np.asarray(features["popular"], dtype=np.int64)
    category = torch.from_numpy(np.asarray(features["item_category"], dtype=np.int64))
    out = {
        name: np.full((users.size, k), -1, np.int32) for name in ("items", "distilled", "popular")
    }
    with torch.inference_mode():
        for row, u in enumerate(users.tolist()):
            hist_t = torch.from_numpy(history[u])
            dense_t = torch.from_numpy(dense[u])
            ids, _ = full_pipeline(full, u, hist_t, dense_t, category, n_candidates, k)
            out["items"][row, : len(ids)] = ids.numpy()
            seen = history[u][history[u] >= 0]
            ids, _ = distilled.recommend(torch.from_numpy(seen), dense_t, k)
            out["distilled"][row, : len(ids)] = ids.numpy()
            fresh = popular[~np.isin(popular, seen)]
            static = (fresh if len(fresh) >= k else popular)[:k]
            out["popular"][row, : len(static)] = static
    return out


def summary(ref: dict[str, Any], weights: np.ndarray, k: int) -> dict[str, Any]:
    """Mean agreement@k with the full model and NDCG@k of each list, weighted per user."""
    items, held = ref["items"], ref["held_out"]
    gain = 1.0 / np.log2(np.arange(k) + 2.0)
    out: dict[str, Any] = {"users": int(items.shape[0]), "requests": int(weights.sum())}
    if not items.shape[0]:
        return out
    for name in ("items", "distilled", "popular"):
        answer = ref[name]
        overlap = (answer[:, :, None] == items[:, None, :]) & (answer[:, :, None] >= 0)
        agreement = overlap.any(axis=2).sum(axis=1) / np.maximum((items >= 0).sum(axis=1), 1)
        at = (answer == held[:, None]) & (held[:, None] >= 0)
        ndcg = (at * gain[None, :]).sum(axis=1)
        label = "full" if name == "items" else name
        out[label] = {
            "agreement_at_k": round(float(np.average(agreement, weights=weights)), 4),
            "ndcg_at_k": round(float(np.average(ndcg, weights=weights)), 4),
            "hit_rate": round(float(np.average(ndcg > 0, weights=weights)), 4),
        }
    return out


def write(path: Path, ref: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    arrays = {key: value for key, value in ref.items() if key != "meta"}
    np.savez(tmp, meta=np.array(json.dumps(ref["meta"], sort_keys=True)), **arrays)
    os.replace(tmp, path)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from system_under_test.__main__ import prog

    parser = argparse.ArgumentParser(
        prog=f"{prog()} reference",
        description="Write each user's top-k from the full, unsharded model (and the held-out "
        "ground truth) for checking served answers against.",
    )
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--users", default="all", help="all, A-B, 1,5,9 or @FILE (default all)")
    parser.add_argument("--k", type=int, default=10, help=f"items per user, 1..{K_MAX}")
    parser.add_argument("--out", type=Path, help="the .npz file to write")
    parser.add_argument("--artifacts", default=None, help="artifact root (as for train)")
    parser.add_argument(
        "--describe", action="store_true", help="print the preset's population and catalogue"
    )
    args = parser.parse_args(argv)
    info = describe(args.preset)
    if args.describe:
        print(json.dumps(info, sort_keys=True))
        return 0
    if args.out is None:
        parser.error("--out FILE is required (or --describe)")
    if not 1 <= args.k <= info["k_max"]:
        parser.error(f"--k {args.k} is out of range; allowed 1..{info['k_max']}")
    try:
        given = parse_users(args.users, info["population"])
    except ValueError as exc:
        parser.error(str(exc))
    known = given[given < info["population"]]
    users, counts = np.unique(known, return_counts=True)
    started = time.perf_counter()
    ref = compute(args.preset, users, args.k, args.artifacts)
    ref["meta"]["summary"] = summary(ref, counts.astype(np.float64), args.k)
    ref["meta"]["cold_start_requests"] = int(given.size - known.size)
    write(args.out, ref)
    _print_summary(ref["meta"], args.out, time.perf_counter() - started)
    return 0


def _print_summary(meta: dict[str, Any], out: Path, seconds: float) -> None:
    s = meta["summary"]
    print(
        f"reference for {s['users']} users of {meta['preset']} ({meta['model_version']}), "
        f"k={meta['k']}, in {seconds:.1f} s: {out}"
    )
    if meta["cold_start_requests"]:
        print(
            f"{meta['cold_start_requests']} of the given ids are outside the population of "
            f"{meta['population']}: cold starts, left out"
        )
    print(f"{'model':<12}{'agreement@k':>13}{'NDCG@k':>9}{'hit rate':>10}  (weighted by requests)")
    for name in ("full", "distilled", "popular") if s["users"] else ():
        row = s[name]
        print(
            f"{name:<12}{row['agreement_at_k']:>13.4f}{row['ndcg_at_k']:>9.4f}"
            f"{row['hit_rate']:>10.4f}"
        )
