"""SAEs saved by other libraries, named ``FORMAT:SOURCE``, converted once and cached.

``saelens:PATH_OR_REPO/SAE_ID``, ``sparsify:...``, ``gemmascope:REPO/PATH`` or
``dictionary_learning:...`` wherever an SAE is asked for (evaluate, features, the Space). The
source is read by ``hf_topafa.convert`` (exact or refused) and saved under
``$HF_TOPAFA_CACHE/converted/``; the next use of the same files loads that copy. The base model,
layer and hook point come from the source's own metadata, as the converter records them.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

PREFIXES = {
    "saelens": "saelens",
    "sae_lens": "saelens",
    "sparsify": "sparsify",
    "gemmascope": "gemma_scope",
    "gemma_scope": "gemma_scope",
    "gemma-scope": "gemma_scope",
    "dictionary_learning": "dictionary_learning",
    "dictionary-learning": "dictionary_learning",
}
_FORM = re.compile(r"([A-Za-z_-]+):(.+)")


def split_source(text: str) -> tuple[str, str] | None:
    """(converter format, source) for ``FORMAT:SOURCE``; None for a plain folder or Hub id."""
    match = _FORM.fullmatch(os.fspath(text).strip())
    if match is None or Path(text).expanduser().exists():
        return None
    prefix = match.group(1).lower()
    if prefix not in PREFIXES:
        raise ValueError(
            f"unknown SAE format {match.group(1)!r} in {text!r}; write FORMAT:SOURCE with FORMAT "
            f"one of {', '.join(sorted(set(PREFIXES)))}"
        )
    return PREFIXES[prefix], match.group(2).strip()


def _fingerprint(path: Path) -> str:
    """Identity of the source files: names, sizes and modification times."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}".encode())
        digest.update(f":{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def converted_folder(fmt: str, source: str) -> Path:
    """The cached conversion of ``source`` (made now when missing or when the files changed)."""
    from ..sources import cache_root
    from .convert import convert, resolve_source

    try:
        local = resolve_source(fmt, source).resolve()
    except OSError as err:
        raise FileNotFoundError(str(err)) from err
    name = re.sub(r"[^\w.-]+", "_", source).strip("_")[-60:] or "sae"
    key = hashlib.sha256(f"{fmt}\n{local}\n{_fingerprint(local)}".encode()).hexdigest()[:16]
    target = cache_root() / "converted" / f"{fmt}-{name}-{key}"
    if not ((target / "config.json").is_file() and (target / "model.safetensors").is_file()):
        convert(fmt, source, output=target, overwrite=True)
    return target


def resolve_sae(text: str | os.PathLike) -> str:
    """What ``SparseAutoencoder.from_pretrained`` can read: ``text`` itself, or for
    ``FORMAT:SOURCE`` the folder of its cached conversion."""
    text = os.fspath(text)
    parsed = split_source(text)
    if parsed is None:
        return text
    return str(converted_folder(*parsed))
