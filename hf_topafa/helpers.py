"""Helpers shared by the package: atomic writes, JSON, number checks, dtype names, lazy exports.

Atomic writes. A file or folder is built under a hidden temporary name next to its target,
flushed to disk, and renamed over the target in one step (``replace``), so a reader sees the old
content or the new one, never half a file, even when the process is killed. ``atomic_path``
and ``atomic_folder`` give the temporary path to any writer (safetensors, parquet, matplotlib);
``write_text``, ``write_json``, ``write_bytes`` and ``save_safetensors`` cover the usual cases.

Imports no torch, so that configurations can validate their numbers before torch loads.
Whether a name is a local path or a Hub id is decided in ``sources``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# -- atomic writes -------------------------------------------------------------------------------


def replace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename ``source`` over ``target`` in one step, then flush the folder entry to disk."""
    os.replace(source, target)
    fsync_dir(Path(target).parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` (same suffix) to write; renamed over ``path`` on success,
    removed on error. The file gets the usual mode (``0o666`` minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes files private
        replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling folder to fill; on success it replaces ``path`` (an existing folder is
    moved aside first and then deleted), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes folders private
    try:
        yield tmp
        replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Flush the finished folder ``source`` to disk and rename it to ``target``; an existing
    ``target`` is first renamed aside (so no moment shows half of either) and then deleted."""
    source, target = Path(source), Path(target)
    for item in source.rglob("*"):
        if item.is_file():
            _fsync_file(item)
    fsync_dir(source)
    if not target.exists():
        replace(source, target)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    replace(target, trash / target.name)
    replace(source, target)
    shutil.rmtree(trash, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str, newline: str | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8); returns the path."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline=newline) as fh:
        fh.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, data, **dumps) -> Path:
    """Write ``data`` as indented JSON (no NaN or inf: they are not JSON) atomically."""
    options = {"indent": 2, "allow_nan": False, **dumps}
    return write_text(path, json.dumps(data, **options) + "\n")


def script_command() -> str:
    """How the running script was called, as a result file records it: ``python
    scripts/NAME.py ARGS`` (result scripts live in the repository's scripts/ and run from its
    root), so the record reads the same whatever path started it."""
    return " ".join(["python", f"scripts/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from a file; a one-line ValueError when the file is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> Path:
    """Save torch tensors as a safetensors file atomically (contiguous CPU copies)."""
    from safetensors.torch import save_file

    plain = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata)
    return Path(path)


def umask() -> int:
    """The process's umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- number checks -------------------------------------------------------------------------------


def is_number(value) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """A finite int or float, not a bool."""
    return is_number(value) and math.isfinite(value)


def is_positive_number(value) -> bool:
    """A finite number > 0 (not a bool)."""
    return is_finite_number(value) and value > 0


def require_positive_int(name: str, value) -> int:
    """``value`` if it is an int > 0 (not a bool); else a ValueError naming ``name``."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def require_nonnegative_int(name: str, value) -> int:
    """``value`` if it is an int >= 0 (not a bool); else a ValueError naming ``name``."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise ValueError(f"{name} must be an integer >= 0; got {value!r}")
    return value


def require_positive_number(name: str, value) -> float:
    """``value`` if it is a finite number > 0; else a ValueError naming ``name``."""
    if not is_positive_number(value):
        raise ValueError(f"{name} must be a positive number; got {value!r}")
    return value


def require_nonnegative_number(name: str, value) -> float:
    """``value`` if it is a finite number >= 0; else a ValueError naming ``name``."""
    if not (is_finite_number(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return value


# -- dtypes --------------------------------------------------------------------------------------

DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")
"""The parameter and activation dtypes the package reads and writes, by name."""


def torch_dtype(name: str):
    """The torch dtype called ``name`` (one of DTYPE_NAMES); a ValueError naming the valid ones."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}; got {name!r}")
    import torch

    return getattr(torch, name)


# -- packages ------------------------------------------------------------------------------------


def lazy_exports(package: str, fallback: str | None = None, **modules: list[str]):
    """A subpackage's module ``__getattr__``: each public name imports its module on first use.

    ``modules`` maps a submodule to the names it defines; any other name is
    looked up in the ``fallback`` submodule when one is given (``hf_topafa.bench`` was that module
    before it became a package). Importing a torch-free module of a subpackage (a command's
    config, checked before torch loads) runs the subpackage's ``__init__``, which must therefore
    import none of its torch-heavy siblings itself.
    """
    import importlib
    import importlib.util

    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str):
        if name in home:
            return getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        if fallback is not None and not name.startswith("__"):
            if importlib.util.find_spec(f"{package}.{name}") is not None:  # a submodule
                return importlib.import_module(f"{package}.{name}")
            module = importlib.import_module(f"{package}.{fallback}")
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
