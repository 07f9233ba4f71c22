"""Where trained models live on disk, and how servers find, validate and load them.

Sits between ``train.py`` (which writes a version) and every serving process (which loads one).
A version is a directory ``<root>/<version_of(preset)>/`` holding ``metadata.json``,
``full.pt``, ``distilled.pt`` and ``features.npz``. It is built in a temporary directory under
the same root and renamed into place, so a crash never leaves a half-written version behind.

The root comes from, in order: the ``--artifacts`` value, ``$RECCHAOS_ARTIFACTS``,
``~/.cache/recchaos/artifacts``. torch is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from system_under_test.config import DataConfig, ModelConfig, get_preset, version_of

if TYPE_CHECKING:
    import numpy as np

    from system_under_test.models import DistilledModel, FullModel

ENV_VAR = "RECCHAOS_ARTIFACTS"
DEFAULT_ROOT = Path("~/.cache/recchaos/artifacts")
FILES = ("metadata.json", "full.pt", "distilled.pt", "features.npz")
FEATURE_KEYS = ("history", "dense", "item_category", "popular")
METADATA_KEYS = ("version", "preset", "data", "model", "data_seed", "metrics")


class ArtifactError(RuntimeError):
    """An artifact directory is missing, incomplete or unreadable."""


def artifact_root(cli_value: str | os.PathLike[str] | None = None) -> Path:
    """The artifact root: ``cli_value``, else ``$RECCHAOS_ARTIFACTS``, else the user cache."""
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_ROOT.expanduser()


def artifact_dir(preset_name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/<version>/`` for the named preset (the directory may not exist yet)."""
    return artifact_root(root) / version_of(get_preset(preset_name))


def ensure_artifacts(
    preset_name: str,
    root: str | os.PathLike[str] | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Return the preset's artifact directory, training it first if it is missing (or ``force``)."""
    target = artifact_dir(preset_name, root)
    if target.exists() and not force:
        check_complete(target)
        log(f"[artifacts] reusing {target} (pass --force to retrain)")
        return target

    from system_under_test import train  # torch is paid for only when training

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the installed version is read by every server
    try:
        log(f"[artifacts] training {preset_name} into {target}")
        train.train_into(preset_name, tmp, log=log)
        check_complete(tmp)
        _install(tmp, target, force, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _install(tmp: Path, target: Path, force: bool, log: Callable[[str], None]) -> None:
    """Rename ``tmp`` to ``target``; an existing target is moved aside first when ``force``."""
    old = None
    if force and target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        target.rename(old)
    try:
        tmp.rename(target)
    except OSError:
        # Another process finished the same version first: theirs is as good as ours.
        if not target.exists():
            if old is not None:
                old.rename(target)  # put the previous version back rather than lose it
            raise
        log(f"[artifacts] {target} appeared while training; keeping it")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_complete(directory: str | os.PathLike[str]) -> None:
    """Raise ``ArtifactError`` naming the directory and what is missing, if it is incomplete."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(
            f"artifact directory {directory} does not exist; run "
            "`python -m system_under_test train` to create it"
        )
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise ArtifactError(
            f"artifact directory {directory} is incomplete: missing {', '.join(missing)}; "
            f"delete it or run `python -m system_under_test train --force`"
        )


def load_metadata(directory: str | os.PathLike[str]) -> dict[str, Any]:
    directory = Path(directory)
    check_complete(directory)
    path = directory / "metadata.json"
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    absent = [key for key in METADATA_KEYS if key not in metadata]
    if absent:
        raise ArtifactError(f"{path} lacks the keys {', '.join(absent)}")
    metadata["_dir"] = str(directory)
    return metadata


def load_features(directory: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """``history``, ``dense``, ``item_category`` and ``popular`` arrays of a version."""
    import numpy as np

    path = Path(directory) / "features.npz"
    check_complete(Path(directory))
    try:
        with np.load(path) as archive:
            features = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    absent = [key for key in FEATURE_KEYS if key not in features]
    if absent:
        raise ArtifactError(f"{path} lacks the arrays {', '.join(absent)}")
    return features


def configs_of(metadata: dict[str, Any]) -> tuple[DataConfig, ModelConfig]:
    model = dict(metadata["model"])
    # JSON turns tuples into lists; the configs are hashable and compared by value.
    for key, value in model.items():
        if isinstance(value, list):
            model[key] = tuple(value)
    return DataConfig(**metadata["data"]), ModelConfig(**model)


def build_full_model(metadata: dict[str, Any]) -> FullModel:
    from system_under_test.models import FullModel

    data, model = configs_of(metadata)
    module = FullModel(data, model)
    _load_state(module, _dir_of(metadata) / "full.pt")
    return module


def build_distilled_model(metadata: dict[str, Any]) -> DistilledModel:
    from system_under_test.models import DistilledModel

    data, model = configs_of(metadata)
    module = DistilledModel(data, model)
    _load_state(module, _dir_of(metadata) / "distilled.pt")
    return module


def _dir_of(metadata: dict[str, Any]) -> Path:
    if "_dir" not in metadata:
        raise ArtifactError(
            "metadata was not read by load_metadata(); it does not know its directory"
        )
    return Path(metadata["_dir"])


def _load_state(module: Any, path: Path) -> None:
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ArtifactError(f"cannot load {path} into {type(module).__name__}: {exc}") from exc
    module.eval()
