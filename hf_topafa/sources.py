"""Where things are: local path or Hub id (told apart, failing fast when a Hub id cannot be
read), and the user cache (``cache_root``).

Torch-free, so that argument checks can use it before the heavy imports. The Hub client retries
for half a minute when offline; ``check_hub_reachable`` answers in seconds instead, and
``not_found`` turns the client's many exception types into one line naming the id and the mode.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def cache_root() -> Path:
    """The user cache for converted models and SAEs and built synthetic worlds
    (``$HF_TOPAFA_CACHE`` or ``~/.cache/hf_topafa``)."""
    env = os.environ.get("HF_TOPAFA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hf_topafa"


def looks_local(name: str) -> bool:
    """A path rather than a Hub id: it exists, starts like a path, or is not ``owner/name``."""
    return (
        Path(name).expanduser().exists()
        or name.startswith((".", "/", "~"))
        or (not HUB_ID.fullmatch(name))
    )


def dataset_looks_local(name: str) -> bool:
    """A dataset name that is a local file or folder: it exists, starts like a path, or ends in a
    readable file suffix (``names.LOCAL_FORMATS``); anything else is a Hub dataset id."""
    from .names import LOCAL_FORMATS

    path = Path(name).expanduser()
    return path.exists() or path.suffix in LOCAL_FORMATS or name.startswith((".", "/", "~"))


def hub_mode() -> str:
    """How the Hub is reached right now, in words for error messages."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline (HF_HUB_OFFLINE=1: only the local Hub cache is read)"
    return f"online ({constants.ENDPOINT})"


def check_hub_reachable(timeout: float = 3.0) -> None:
    """ConnectionError in seconds when the Hub endpoint cannot be reached; no-op offline."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"cannot reach {constants.ENDPOINT} ({err})") from err


def prepare_hub_read(repo_id: str, what: str) -> dict:
    """Before loading ``repo_id`` from the Hub: extra ``from_pretrained`` kwargs, or a one-line
    FileNotFoundError when it is unreachable and not cached."""
    try:
        check_hub_reachable()
    except ConnectionError as err:
        if _cached(repo_id):
            return {"local_files_only": True}
        raise FileNotFoundError(
            f"{what} {repo_id!r}: not a local path, not in the Hub cache, and the Hub is "
            f"unreachable ({err}); give a local folder or check the id and the network"
        ) from err
    return {}


def not_found(
    repo_id: str, what: str, err: BaseException, local_only: bool = False
) -> FileNotFoundError:
    """The Hub client's error for ``repo_id`` as one line naming the id and the mode
    (``local_only``: it was read with ``local_files_only``, not from the Hub itself)."""
    reason = " ".join(str(err).split()) or type(err).__name__
    if len(reason) > 200:
        reason = reason[:200] + "..."
    mode = "read from the local Hub cache only" if local_only else hub_mode()
    return FileNotFoundError(
        f"{what} {repo_id!r} could not be loaded: no such local path, and the Hub, "
        f"{mode}, gave {type(err).__name__}: {reason}"
    )


def _cached(repo_id: str) -> bool:
    from huggingface_hub import constants

    folder = f"models--{repo_id.replace('/', '--')}"
    return os.path.isdir(os.path.join(constants.HF_HUB_CACHE, folder))
