"""Training checkpoints that survive being killed at any moment.

A checkpoint is a folder ``RUN/checkpoints/step_XXXXXXX/`` holding ``model.safetensors`` (the SAE's
state dict), ``optimizer.safetensors`` (Adam's moments, flattened) and ``trainer_state.json``
(step, data position, scheduler, dead-feature counters' file name). It is written into a hidden
temporary folder and renamed into place, so a ``step_*`` folder is always complete; old ones are
renamed away before they are deleted, so a half-deleted folder never looks like a checkpoint.
``checksums.json`` (SHA-256 of every other file, written last) lets a resume tell a damaged
checkpoint (a disk error, a copy cut short) from a good one and fall back to an older one.
Everything loads from safetensors and JSON: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..helpers import fsync_dir, save_safetensors, umask, write_json
from ..helpers import write_json as atomic_write_json  # noqa: F401 (its old home; train imports it)

CHECKPOINTS = "checkpoints"
CHECKSUMS = "checksums.json"
_STEP_DIR = re.compile(r"^step_(\d{7,})$")


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    tensors: dict[str, torch.Tensor],
    state: dict,
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically, then drop all but the newest ``keep`` checkpoints.

    ``tensors`` are extra trainer tensors (saved in ``trainer_state.safetensors``); ``state`` is
    JSON-serialisable trainer state.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    os.chmod(tmp, 0o777 & ~umask())
    try:
        moments, groups = _flatten_optimizer(optimizer_state)
        save_safetensors(tmp / "model.safetensors", model_state)
        save_safetensors(tmp / "optimizer.safetensors", moments)
        save_safetensors(tmp / "trainer_state.safetensors", tensors)
        state = {**state, "step": step, "optimizer_param_groups": groups}
        write_json(tmp / "trainer_state.json", state)
        write_json(tmp / CHECKSUMS, {p.name: _sha256(p) for p in sorted(tmp.iterdir())})
        fsync_dir(tmp)
        if final.exists():  # a re-run of the same step: replace it without a gap
            _discard(final)
        os.rename(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(run_dir)[:-keep]:
        _discard(old)
    return final


class CorruptCheckpointError(ValueError):
    """A checkpoint file is missing, truncated or fails its checksum; the message names it."""


def load_checkpoint(path: str | os.PathLike):
    """Return ``(model_state, optimizer_state, tensors, state)`` saved by ``save_checkpoint``.

    Raises ``CorruptCheckpointError`` naming the first bad file.
    """
    path = Path(path)
    for name in ("model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        if not (path / name).is_file():
            raise CorruptCheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    _verify_checksums(path)
    state = _read(path / "trainer_state.json", lambda p: json.loads(p.read_text("utf-8")))
    if not isinstance(state, dict) or "optimizer_param_groups" not in state:
        raise CorruptCheckpointError(f"{path / 'trainer_state.json'} is not a trainer state")
    model_state = _read(path / "model.safetensors", load_file)
    moments = _read(path / "optimizer.safetensors", load_file)
    optimizer_state = _unflatten_optimizer(moments, state.pop("optimizer_param_groups"))
    extra = path / "trainer_state.safetensors"
    tensors = _read(extra, load_file) if extra.is_file() else {}
    return model_state, optimizer_state, tensors, state


def load_latest_intact(run_dir: str | os.PathLike, on_skip=None):
    """``(path, load_checkpoint(path))`` of the newest checkpoint that loads, or None.

    Each newer, damaged checkpoint is skipped with ``on_skip(message)`` (default: a warning)
    naming its bad file, and left on disk for inspection.
    """
    for path in reversed(checkpoint_dirs(run_dir)):
        try:
            return path, load_checkpoint(path)
        except CorruptCheckpointError as err:
            message = f"skipping damaged checkpoint: {err}"
            if on_skip is None:
                warnings.warn(message, stacklevel=2)
            else:
                on_skip(message)
    return None


def _verify_checksums(path: Path) -> None:
    sums_path = path / CHECKSUMS
    if not sums_path.is_file():
        return  # written before checksums existed: the loaders' own checks still apply
    sums = _read(sums_path, lambda p: json.loads(p.read_text("utf-8")))
    for name, expected in sums.items():
        file = path / name
        if not file.is_file():
            raise CorruptCheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        if _sha256(file) != expected:
            raise CorruptCheckpointError(f"{file} fails its checksum (damaged or changed)")


def _read(path: Path, loader):
    """``loader(path)``, with any failure to parse turned into an error naming the file."""
    try:
        return loader(path)
    except (OSError, ValueError, UnicodeDecodeError, SafetensorError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise CorruptCheckpointError(f"{path} is damaged ({reason})") from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clean_temporaries(run_dir: str | os.PathLike) -> None:
    """Remove leftovers of checkpoint writes that a killed process never finished."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def _flatten_optimizer(optimizer_state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """torch optimizer state_dict -> (tensors named "<param index>.<key>", JSON param groups)."""
    moments = {}
    for index, per_param in optimizer_state["state"].items():
        for key, value in per_param.items():
            moments[f"{index}.{key}"] = torch.as_tensor(value)
    return moments, optimizer_state["param_groups"]


def _unflatten_optimizer(moments: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict] = {}
    for name, value in moments.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": groups}


def _discard(path: Path) -> None:
    """Rename a folder out of the checkpoint namespace, then delete it."""
    trash = path.parent / f".old-{path.name}-{os.getpid()}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
