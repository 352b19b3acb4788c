"""Loading an SAE by name, the one loader behind evaluate, features, text_analysis and the Space:
a local folder, a Hub id or ``FORMAT:SOURCE`` (a foreign SAE, converted once and cached), each
loaded once per process and shared between threads; every failure is one line that says what was
wrong and what is valid.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

from ..sae.modeling_sae import SparseAutoencoder
from ..sources import HUB_ID, check_hub_reachable

_locks_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}


def lock_for(key: str) -> threading.Lock:
    """One lock per thing loaded, so a slow load never blocks loading something else."""
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def load_sae(source: str | os.PathLike) -> SparseAutoencoder:
    """An SAE from a local folder (config.json + model.safetensors) or a Hub id, in eval mode.

    Loaded once per process (a local folder again when its weights file changes). Errors are
    FileNotFoundError / ValueError whose message says what was wrong and what is valid.
    """
    source = os.fspath(source).strip()
    if not source:
        raise ValueError(
            "No SAE given: enter a local run folder (holding config.json and model.safetensors) "
            "or a Hub id such as user/repo"
        )
    from .foreign import resolve_sae

    with lock_for(f"convert:{source}"):
        source = resolve_sae(source)  # FORMAT:SOURCE (saelens:..., ...) -> its cached conversion
    path = Path(source).expanduser()
    if path.is_dir():
        weights = path / "model.safetensors"
        stamp = weights.stat().st_mtime_ns if weights.is_file() else 0
        folder = str(path.resolve())
        with lock_for(folder):
            return _load_local(folder, stamp)
    if path.exists():
        raise ValueError(
            f"{source} is a file, not an SAE folder: give the folder that holds config.json and "
            "model.safetensors, or a Hub id such as user/repo"
        )
    if not HUB_ID.fullmatch(source):
        raise FileNotFoundError(
            f"SAE not found: {source!r} is neither an existing folder nor a Hub id: give a local "
            "run folder (holding config.json and model.safetensors) or a Hub id of the form user/repo"
        )
    with lock_for(source):
        return _load_hub(source)


@functools.lru_cache(maxsize=8)
def _load_local(folder: str, stamp: int) -> SparseAutoencoder:
    try:
        sae = SparseAutoencoder.from_pretrained(folder)
    except (FileNotFoundError, ValueError) as err:
        kind = FileNotFoundError if isinstance(err, FileNotFoundError) else ValueError
        raise kind(f"{folder} is not a usable SAE folder: {err}") from err
    except OSError as err:
        raise ValueError(f"{folder} is not a usable SAE folder: {first_line(err)}") from err
    return sae.eval()


@functools.lru_cache(maxsize=8)
def _load_hub(repo_id: str) -> SparseAutoencoder:
    try:
        check_hub_reachable()
    except ConnectionError as unreachable:  # a copy downloaded earlier still does
        try:
            return SparseAutoencoder.from_pretrained(repo_id, local_files_only=True).eval()
        except Exception as err:
            raise FileNotFoundError(
                f"Could not load the SAE {repo_id!r}: there is no such local folder "
                f"({Path(repo_id).expanduser().absolute()}), and the Hub could not be reached "
                f"({unreachable}) nor does its local cache hold the id. Check the path, or the "
                "network and the id."
            ) from err
    try:
        sae = SparseAutoencoder.from_pretrained(repo_id)
    except Exception as err:  # the Hub client raises many types: report them all the same way
        raise FileNotFoundError(
            f"Could not load the SAE {repo_id!r}: there is no such local folder, and the Hub "
            f"repo could not be read ({type(err).__name__}: {first_line(err)}). Check the id, "
            "or give a local run folder holding config.json and model.safetensors."
        ) from err
    return sae.eval()


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
