"""Import SAEs saved by other libraries as `SparseAutoencoder` folders, exactly or not at all.

Our family computes ``pre = ReLU((x - b_dec) W_enc + b_enc)``, keeps features by a rule
(``topk``: the k largest; ``jumprelu``/``batchtopk`` at inference: ``pre > threshold``; ``relu``:
all), and decodes ``f W_dec + b_dec``. Each reader below maps a published format onto that
form with exact algebra, and refuses what the form cannot express. The arguments, once:

- No b_dec on the input. Libraries that compute ``x W_enc + b_enc'`` (SAELens with
  ``apply_b_dec_to_input=False``, Gemma Scope, dictionary_learning's JumpReLU) get
  ``b_enc = b_enc' + b_dec W_enc``, so ``(x - b_dec) W_enc + b_enc == x W_enc + b_enc'``.
  The fold is done in float64; only float rounding differs, which can flip a feature whose
  pre-activation sits within rounding of its threshold or of the k-th value.
- ReLU before the rule. ``ReLU(p) * [p > t]`` (SAELens JumpReLU, Gemma Scope's reference code)
  and ``ReLU(p * [p > t])`` (dictionary_learning) both equal ours, ``q * [q > t]`` with
  ``q = ReLU(p)``, for every t: for ``t >= 0``, ``q > t`` iff ``p > t``; for ``t < 0`` all three
  reduce to ``ReLU(p)``. The JumpReLU of the Gemma Scope paper, ``p * [p > t]`` without a ReLU,
  equals ours only for ``t >= 0``, so a Gemma Scope threshold below 0 is refused.
- TopK. SAELens ranks raw pre-activations and then applies ReLU to the kept values; sparsify and
  dictionary_learning apply ReLU then rank. All give the same dense activations as ours (when
  fewer than k are positive the extra kept values are 0 either way).
- Decoder norms. Our W_dec need not be unit-norm, so weights are copied as they are, except
  where the original library rescales at load or run time (SAELens
  ``rescale_acts_by_decoder_norm``, dictionary_learning ``AutoEncoder.from_pretrained``'s default
  ``normalize_decoder=True``); those rescalings are folded into W_enc, b_enc and W_dec.
- Input scaling. SAELens ``expected_average_only_in`` multiplies inputs by a dataset constant that
  SAELens reads from its release table, not from the files; it is folded only when given
  (``norm_scaling_factor``). Per-token schemes (``constant_norm_rescale``, SAELens ``layer_norm``,
  whose std is Bessel-corrected and offset by 1e-5, unlike ours) are refused.

The activations an SAE reads must match too: SAELens SAEs were often trained on TransformerLens
models with weight processing (``model_from_pretrained_kwargs`` is kept in the config as
``source_model_from_pretrained_kwargs``); the math here is exact, the hook is the user's concern.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .configuration_sae import SAEConfig
from .helpers import atomic_folder, require_positive_int, torch_dtype
from .modeling_sae import SparseAutoencoder
from .rules import get_rule

FORMATS = ("saelens", "sparsify", "gemma_scope", "dictionary_learning")
HOOK_POINTS = ("resid_pre", "resid_post", "mlp_out", "attn_out")
DTYPES = {name: torch_dtype(name) for name in ("float32", "float64", "bfloat16")}
PROVENANCE_OVERRIDES = ("base_model", "layer", "hook_point", "dataset", "context_length")
OPTIONS = {
    "dtype": "all formats: parameter dtype of the converted SAE (float32, float64, bfloat16)",
    "norm_scaling_factor": "saelens: the constant of normalize_activations=expected_average_only_in",
    "normalize_decoder": "dictionary_learning AutoEncoder: fold decoder norms like from_pretrained",
}

# TransformerLens model aliases used in SAELens configs -> Hugging Face ids.
_TRANSFORMER_LENS_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "pythia-70m-deduped": "EleutherAI/pythia-70m-deduped",
    "pythia-160m-deduped": "EleutherAI/pythia-160m-deduped",
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "gemma-2-9b": "google/gemma-2-9b",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "gemma-2-27b": "google/gemma-2-27b",
}


class UnsupportedSAEError(ValueError):
    """The source SAE uses something our family cannot express exactly."""


@dataclass
class Imported:
    """A foreign SAE rewritten in our parameterization, before b_dec folding (float64)."""

    activation: str
    """Our selection rule: relu, topk, jumprelu or batchtopk."""
    W_enc: torch.Tensor
    """[d_in, d_sae]."""
    W_dec: torch.Tensor
    """[d_sae, d_in]."""
    b_enc: torch.Tensor
    """[d_sae], as the source adds it (to x W_enc, or to (x - b_dec) W_enc)."""
    b_dec: torch.Tensor
    """[d_in]."""
    subtracts_b_dec: bool
    """Whether the source encodes x - b_dec (True) or x (False; b_dec is then folded)."""
    threshold: torch.Tensor | None = None
    """[d_sae] for the rules that keep a threshold (jumprelu and batchtopk)."""
    k: int | None = None
    """Features per token for topk; the nominal k of batchtopk."""
    provenance: dict = field(default_factory=dict)
    """SAEConfig keyword arguments: base_model, layer, hook_point, ... and source_* extras."""


# -- public API --------------------------------------------------------------------------------


def convert(
    format: str,
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    **overrides,
) -> SparseAutoencoder:
    """Read an SAE saved by another library and return it as a `SparseAutoencoder` (eval mode).

    Args:
        format: one of FORMATS.
        source: a local folder or file, or ``owner/repo[/path/inside]`` on the Hugging Face Hub.
        output: when given, the converted SAE is saved there (``save_pretrained`` layout).
        overwrite: replace a non-empty ``output`` folder.
        overrides: provenance (base_model, layer, hook_point, dataset, context_length) and the
            options in OPTIONS.
    """
    fmt = _check_format(format)
    provenance, options = _split_overrides(fmt, overrides)
    path = resolve_source(fmt, source)
    reader = _READERS[fmt]
    imported = reader(path, **options.get("reader", {}))
    imported.provenance.update(source_format=fmt, source=str(source))
    imported.provenance.update(provenance)
    sae = build_sae(imported, dtype=options.get("dtype", "float32"))
    if output is not None:
        save_atomically(sae, output, overwrite=overwrite)
    return sae


def build_sae(imported: Imported, dtype: str = "float32") -> SparseAutoencoder:
    """Fold b_dec if needed and load the weights into a new `SparseAutoencoder`."""
    W_enc, W_dec = imported.W_enc.double(), imported.W_dec.double()
    b_enc, b_dec = imported.b_enc.double(), imported.b_dec.double()
    d_in, d_sae = W_enc.shape
    for name, tensor, shape in (
        ("W_dec", W_dec, (d_sae, d_in)),
        ("b_enc", b_enc, (d_sae,)),
        ("b_dec", b_dec, (d_in,)),
    ):
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} has shape {list(tensor.shape)}; with W_enc {list(W_enc.shape)} "
                f"it must be {list(shape)}"
            )
    if not imported.subtracts_b_dec:
        b_enc = b_enc + b_dec @ W_enc
    state = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
    if get_rule(imported.activation).threshold is not None:
        state["threshold"] = imported.threshold.double()
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise UnsupportedSAEError(f"{name} contains NaN or inf; the source SAE is corrupt")
    provenance = {k: v for k, v in imported.provenance.items() if v is not None}
    config = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        expansion_factor=d_sae / d_in,
        activation=imported.activation,
        k=imported.k,
        **provenance,
    )
    target = DTYPES[dtype]
    with torch.device("meta"):  # no random init of weights that are overwritten at once
        sae = SparseAutoencoder(config)
    sae.load_state_dict({k: v.to(target) for k, v in state.items()}, strict=True, assign=True)
    leftover = [n for n, t in list(sae.named_parameters()) + list(sae.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"converted SAE left tensors uninitialized: {', '.join(leftover)}")
    return sae.eval()


def save_atomically(sae: SparseAutoencoder, output: str | os.PathLike, overwrite: bool) -> Path:
    """save_pretrained into a temporary sibling folder, then move it into place."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"output {output} is a file; give a folder path")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output folder {output} is not empty; choose another folder or pass "
                "overwrite=True (--overwrite)"
            )
        if not (output / "config.json").is_file():
            raise FileExistsError(
                f"refusing to replace {output}: it is not empty and holds no config.json, so it "
                "is not a saved SAE"
            )
    with atomic_folder(output) as tmp:
        sae.save_pretrained(tmp)
    return output


def resolve_source(fmt: str, source: str | os.PathLike) -> Path:
    """A local path as it is; otherwise ``owner/repo[/path]`` fetched from the Hub."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = os.fspath(source)
    match = re.fullmatch(r"([\w.-]+/[\w.-]+)(?:/(.+?))?/?", text)
    if match is None or text.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"source {text!r} is neither an existing file or folder nor a Hub reference "
            "written owner/repo[/path/inside/repo]"
        )
    repo_id, inside = match.group(1), match.group(2) or ""
    patterns = _hub_patterns(fmt, inside)
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as err:  # noqa: BLE001 - every failure gets the same actionable message
        raise OSError(
            f"no local file or folder {text!r}, and fetching {patterns} from the Hub repo "
            f"{repo_id!r} failed "
            f"({type(err).__name__}: {err}). On a machine without Hub access, download the "
            "files yourself and pass the local folder as SOURCE."
        ) from err
    return Path(folder) / inside if inside else Path(folder)


# -- readers -----------------------------------------------------------------------------------


def read_saelens(path: Path, norm_scaling_factor: float | None = None) -> Imported:
    """SAELens folder: cfg.json + sae_weights.safetensors (v6 layout and the older flat one)."""
    folder = _folder_of(path, ("cfg.json", "sae_weights.safetensors"))
    cfg = _read_json(folder / "cfg.json")
    weights = _read_safetensors(folder / "sae_weights.safetensors")
    legacy = "metadata" not in cfg
    meta = cfg if legacy else (cfg.get("metadata") or {})
    where = f"{folder / 'cfg.json'}"

    architecture = cfg.get("architecture", "standard")
    activation_fn = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k")
    if legacy and activation_fn == "topk" and kwargs.get("k") is not None:
        architecture, k = "topk", kwargs["k"]
    training_checkpoint = architecture in _SAELENS_BATCHTOPK
    if training_checkpoint and "topk_threshold" not in weights:
        raise UnsupportedSAEError(
            f"{where}: architecture {architecture!r} is a SAELens training checkpoint, but "
            f"{folder / 'sae_weights.safetensors'} holds no topk_threshold; convert the file "
            "save_inference_model wrote (architecture 'jumprelu') instead"
        )
    if architecture not in ("standard", "topk", "jumprelu", *_SAELENS_BATCHTOPK):
        raise UnsupportedSAEError(
            f"{where}: architecture {architecture!r} has no exact counterpart here; "
            "convertible SAELens architectures: standard, topk, jumprelu, and the training "
            f"checkpoints {', '.join(_SAELENS_BATCHTOPK)}"
        )
    if architecture in ("standard", "jumprelu") and activation_fn not in (None, "relu"):
        raise UnsupportedSAEError(
            f"{where}: activation_fn {activation_fn!r} is not ReLU; only ReLU-based "
            "standard and jumprelu SAEs convert exactly"
        )

    hook_name = meta.get("hook_name") or meta.get("hook_point")
    reshape = cfg.get("reshape_activations")
    if reshape is None:
        reshape = "hook_z" if hook_name and "hook_z" in hook_name else "none"
    if reshape != "none":
        raise UnsupportedSAEError(
            f"{where}: reshape_activations={reshape!r} reads [..., n_heads, d_head] inputs; "
            "our SAEs read flat [..., d_in] activations at a residual, MLP or attention output"
        )
    normalize = cfg.get("normalize_activations", "none")
    if isinstance(normalize, bool):
        normalize = "expected_average_only_in" if normalize else "none"
    normalize = normalize or "none"

    d_in = _positive_int(cfg.get("d_in"), f"{where}: d_in")
    d_sae = _positive_int(cfg.get("d_sae"), f"{where}: d_sae")
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if architecture == "jumprelu":
        if "threshold" not in weights and "log_threshold" in weights:
            weights["threshold"] = weights.pop("log_threshold").double().exp()
        shapes["threshold"] = (d_sae,)
    if training_checkpoint:  # a 0-d float64 buffer; save_inference_model turns it into threshold
        topk_threshold = weights.pop("topk_threshold")
        if topk_threshold.numel() != 1:
            raise ValueError(f"{folder}: topk_threshold has shape {list(topk_threshold.shape)}")
    scaling = weights.pop("scaling_factor", None)
    if scaling is not None and not torch.all(scaling == 1):
        raise UnsupportedSAEError(
            f"{folder}: sae_weights.safetensors holds a scaling_factor that is not all ones "
            "(the finetuning scaling of SAELens < 6); such files are not converted here"
        )
    _check_tensors(folder / "sae_weights.safetensors", weights, shapes)
    t = {name: weights[name].double() for name in shapes}

    if normalize == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise UnsupportedSAEError(
                f"{where}: normalize_activations='expected_average_only_in' scales inputs by a "
                "dataset constant that SAELens takes from its release table, not from these "
                "files. Pass norm_scaling_factor=S (--norm-scaling-factor S) to fold it exactly, "
                "or 1.0 to read inputs unscaled as SAE.load_from_disk does"
            )
        s = float(norm_scaling_factor)
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"norm_scaling_factor must be a positive number; got {s!r}")
        # SAELens' fold_activation_norm_scaling_factor, which leaves b_enc and threshold alone.
        t["W_enc"], t["W_dec"], t["b_dec"] = t["W_enc"] * s, t["W_dec"] / s, t["b_dec"] / s
    elif normalize != "none":
        raise UnsupportedSAEError(
            f"{where}: normalize_activations={normalize!r} transforms inputs at run time in a "
            "way our SAEs cannot reproduce (SAELens layer_norm divides by the Bessel-corrected "
            "std plus 1e-5, ours by the plain std; constant_norm_rescale scales each token to "
            "norm sqrt(d_in); an unfolded covariance_whitening needs statistics not in these "
            "files); refused rather than approximated"
        )
    elif norm_scaling_factor is not None:
        raise ValueError(
            f"norm_scaling_factor applies only to normalize_activations="
            f"'expected_average_only_in'; {where} has {normalize!r}"
        )

    # TopKTrainingSAEConfig defaults rescale_acts_by_decoder_norm to True, TopKSAEConfig to False.
    rescaled = cfg.get("rescale_acts_by_decoder_norm", training_checkpoint)
    if (architecture == "topk" or training_checkpoint) and rescaled:
        # Ranks hidden_pre * ||W_dec,i|| and decodes acts / ||W_dec,i||: fold both (exact).
        # After the input-scale fold, as SAE.from_pretrained orders them.
        norms = torch.linalg.vector_norm(t["W_dec"], dim=-1)
        if not (norms > 0).all():
            raise UnsupportedSAEError(f"{where}: a decoder row has zero norm")
        t["W_enc"], t["b_enc"] = t["W_enc"] * norms, t["b_enc"] * norms
        t["W_dec"] = t["W_dec"] / norms[:, None]

    if training_checkpoint:
        # What save_inference_model writes: the folded weights and, under architecture
        # jumprelu, threshold = ones_like(b_enc) * topk_threshold (rounded to b_enc's dtype).
        value = float(topk_threshold.reshape(()).item())
        t["threshold"] = torch.full((d_sae,), value, dtype=weights["b_enc"].dtype).double()
        activation, source_k, k = "jumprelu", k, None
    else:
        activation = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}[architecture]
        source_k = None
    if activation == "topk":
        k = _positive_int(k, f"{where}: k")
    model_name = meta.get("model_name")
    layer, hook_point = _parse_transformer_lens_hook(hook_name)
    if layer is None and meta.get("hook_layer") is not None:
        layer = int(meta["hook_layer"])
    provenance = {
        "base_model": _TRANSFORMER_LENS_NAMES.get(model_name, model_name),
        "layer": layer,
        "hook_point": hook_point,
        "dataset": meta.get("dataset_path"),
        "context_length": meta.get("context_size"),
        "source_architecture": architecture,
        "source_k": source_k,
        "source_matryoshka_widths": cfg.get("matryoshka_widths"),
        "source_model_name": model_name,
        "source_hook_name": hook_name,
        "source_hook_head_index": meta.get("hook_head_index"),
        "source_model_from_pretrained_kwargs": meta.get("model_from_pretrained_kwargs"),
        "source_prepend_bos": meta.get("prepend_bos"),
        "source_sae_lens_version": meta.get("sae_lens_version"),
    }
    return Imported(
        activation=activation,
        W_enc=t["W_enc"],
        W_dec=t["W_dec"],
        b_enc=t["b_enc"],
        b_dec=t["b_dec"],
        subtracts_b_dec=bool(cfg.get("apply_b_dec_to_input", True)),
        threshold=t.get("threshold"),
        k=k,
        provenance=provenance,
    )


def read_sparsify(path: Path) -> Imported:
    """EleutherAI sparsify hookpoint folder: cfg.json + sae.safetensors.

    sparsify encodes ``topk(ReLU(encoder(x - b_dec)))`` and decodes
    ``sum_i acts_i W_dec[i] + b_dec`` with encoder.weight [M, d_in] and W_dec [M, d_in].
    """
    folder = _folder_of(path, ("cfg.json", "sae.safetensors"), subfolders_hint=True)
    cfg = _read_json(folder / "cfg.json")
    where = f"{folder / 'cfg.json'}"
    if cfg.get("activation", "topk") != "topk":
        raise UnsupportedSAEError(
            f"{where}: activation {cfg.get('activation')!r} is not TopK; only sparsify's topk "
            "sparse coders convert exactly"
        )
    for flag, why in (
        ("transcode", "a transcoder predicts another module's output from this one's input"),
        ("skip_connection", "a linear skip connection W_skip adds x W_skip to the output"),
        ("signed", "signed TopK ranks |pre| and keeps negative activations"),
    ):
        if cfg.get(flag):
            raise UnsupportedSAEError(f"{where}: {flag}=true ({why}); our SAEs cannot express it")
    d_in = _positive_int(cfg.get("d_in"), f"{where}: d_in")
    d_sae = cfg.get("num_latents") or d_in * cfg.get("expansion_factor", 32)
    d_sae = _positive_int(d_sae, f"{where}: num_latents")
    k = _positive_int(cfg.get("k"), f"{where}: k")
    weights = _read_safetensors(folder / "sae.safetensors")
    shapes = {
        "encoder.weight": (d_sae, d_in),
        "encoder.bias": (d_sae,),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
    }
    _check_tensors(folder / "sae.safetensors", weights, shapes)
    run_cfg = (
        _read_json(folder.parent / "config.json")
        if (folder.parent / "config.json").is_file()
        else {}
    )
    layer, hook_point = _parse_module_path(folder.name)
    model = run_cfg.get("model")
    provenance = {
        "base_model": model if isinstance(model, str) else None,
        "layer": layer,
        "hook_point": hook_point,
        "dataset": run_cfg.get("dataset") if isinstance(run_cfg.get("dataset"), str) else None,
        "context_length": run_cfg.get("ctx_len"),
        "source_hook_name": folder.name,
    }
    return Imported(
        activation="topk",
        W_enc=weights["encoder.weight"].double().T,
        W_dec=weights["W_dec"].double(),
        b_enc=weights["encoder.bias"].double(),
        b_dec=weights["b_dec"].double(),
        subtracts_b_dec=True,
        k=k,
        provenance=provenance,
    )


def read_gemma_scope(path: Path) -> Imported:
    """Gemma Scope params.npz: W_enc [d_model, d_sae], W_dec, b_enc, b_dec, threshold.

    Encoding is ``p = x W_enc + b_enc`` (no b_dec on the input), then JumpReLU.
    """
    file = path if path.is_file() else path / "params.npz"
    if not file.is_file():
        raise FileNotFoundError(f"{path} holds no params.npz (Gemma Scope's weights file)")
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {name: torch.from_numpy(np.array(npz[name])) for name in npz.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"{file} is not a readable .npz file ({err})") from err
    if "W_enc" not in arrays:
        raise ValueError(f"{file} lacks W_enc; Gemma Scope params.npz holds {_GEMMA_KEYS}")
    d_in, d_sae = arrays["W_enc"].shape
    shapes = {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_in),
        "b_enc": (d_sae,),
        "b_dec": (d_in,),
        "threshold": (d_sae,),
    }
    _check_tensors(file, arrays, shapes)
    threshold = arrays["threshold"].double()
    if (threshold < 0).any():
        raise UnsupportedSAEError(
            f"{file}: {int((threshold < 0).sum())} thresholds are negative (min "
            f"{threshold.min().item():.4g}); Gemma Scope's JumpReLU p * [p > t] then keeps "
            "negative activations, which our ReLU-first rule cannot express"
        )
    # the path as named, not resolved: in the Hub cache params.npz is a link to blobs/<hash>,
    # and the layer and site are only in the name of the link
    text = file.absolute().as_posix()
    layer_match = re.search(r"layer_(\d+)", text)
    layer = int(layer_match.group(1)) if layer_match else None
    site = re.search(r"gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att)", text)
    base_model = hook_point = hook_name = None
    if site:
        size, kind, where = site.groups()
        base_model = f"google/gemma-2-{size}" + ("-it" if kind == "it" else "")
        hook_point = {"res": "resid_post", "mlp": "mlp_out", "att": None}[where]
        if layer is not None:
            suffix = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}
            hook_name = f"blocks.{layer}.{suffix[where]}"
    provenance = {
        "base_model": base_model,
        "layer": layer,
        "hook_point": hook_point,
        "source_hook_name": hook_name,
    }
    return Imported(
        activation="jumprelu",
        W_enc=arrays["W_enc"].double(),
        W_dec=arrays["W_dec"].double(),
        b_enc=arrays["b_enc"].double(),
        b_dec=arrays["b_dec"].double(),
        subtracts_b_dec=False,
        threshold=threshold,
        provenance=provenance,
    )


_SAELENS_BATCHTOPK = ("batchtopk", "matryoshka_batchtopk")
_GEMMA_KEYS = "W_enc, W_dec, b_enc, b_dec, threshold"
_DL_CLASSES = (
    "AutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
    "JumpReluAutoEncoder",
)


def read_dictionary_learning(path: Path, normalize_decoder: bool = True) -> Imported:
    """dictionary_learning folder: ae.pt (a state dict) + config.json ({"trainer": {...}}).

    Loaded with ``torch.load(weights_only=True)``. ``normalize_decoder`` mirrors
    ``AutoEncoder.from_pretrained``'s default: decoder columns scaled to unit norm, encoder rows
    and bias scaled up to match (reconstructions unchanged, activations rescaled).
    """
    weights_file, config_file = _dictionary_learning_files(path)
    cfg = _read_json(config_file)
    trainer = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
    dict_class = trainer.get("dict_class")
    where = f"{config_file}"
    if dict_class not in _DL_CLASSES:
        raise UnsupportedSAEError(
            f"{where}: trainer.dict_class={dict_class!r} has no exact counterpart here; "
            f"convertible classes: {', '.join(_DL_CLASSES)}"
        )
    try:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle errors come in many types
        raise ValueError(
            f"{weights_file} could not be read as a tensor-only state dict ({err})"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"{weights_file} holds a {type(state).__name__}, not a state dict")
    d_in = trainer.get("activation_dim")
    d_sae = trainer.get("dict_size")
    if dict_class in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        if "W_enc" in state:
            d_in, d_sae = state["W_enc"].shape
        shapes = {
            "W_enc": (d_in, d_sae),
            "b_enc": (d_sae,),
            "W_dec": (d_sae, d_in),
            "b_dec": (d_in,),
            "threshold": (d_sae,),
        }
        optional = {}
        if dict_class == "MatryoshkaBatchTopKSAE":  # same names; scalar k and threshold buffers
            del shapes["threshold"]
            optional = {"k": (), "threshold": (), "group_sizes": None}
        _check_tensors(weights_file, state, shapes, optional)
        W_enc, b_enc = state["W_enc"].double(), state["b_enc"].double()
        W_dec, b_dec = state["W_dec"].double(), state["b_dec"].double()
        if dict_class == "JumpReluAutoEncoder":
            # apply_b_dec_to_input is an attribute, not saved; its default is False.
            subtracts_b_dec, threshold, k = False, state["threshold"].double(), None
            activation = "jumprelu"
        else:  # encode: ReLU((x - b_dec) W_enc + b_enc), then the threshold rule
            subtracts_b_dec = True
            activation, threshold, k = _batchtopk_rule(weights_file, state, trainer, d_sae)
    else:
        if "encoder.weight" in state:
            d_sae, d_in = state["encoder.weight"].shape
        shapes = {
            "encoder.weight": (d_sae, d_in),
            "encoder.bias": (d_sae,),
            "decoder.weight": (d_in, d_sae),
        }
        if dict_class == "AutoEncoder":
            shapes["bias"] = (d_in,)
            optional = {}
        else:
            shapes["b_dec"] = (d_in,)
            optional = {"k": (), "threshold": ()}  # 0-d buffers of the TopK classes
        _check_tensors(weights_file, state, shapes, optional)
        W_enc = state["encoder.weight"].double().T
        b_enc = state["encoder.bias"].double()
        W_dec = state["decoder.weight"].double().T
        b_dec = state["bias" if dict_class == "AutoEncoder" else "b_dec"].double()
        subtracts_b_dec, threshold, k = True, None, None
        if dict_class == "AutoEncoder":
            activation = "relu"
            if normalize_decoder:
                norms = torch.linalg.vector_norm(W_dec, dim=-1)
                if not (norms > 0).all():
                    raise UnsupportedSAEError(f"{weights_file}: a decoder column is zero")
                W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
        else:
            if dict_class == "BatchTopKSAE":
                activation, threshold, k = _batchtopk_rule(weights_file, state, trainer, d_sae)
            else:
                k = int(state["k"]) if "k" in state else trainer.get("k")
                k = _positive_int(k, f"{where}: k (neither the weights nor trainer.k give it)")
                activation = "topk"
    if dict_class != "AutoEncoder" and normalize_decoder is not True:
        raise ValueError("normalize_decoder applies only to dictionary_learning AutoEncoder")
    submodule = trainer.get("submodule_name")
    hook = re.search(r"(resid_pre|resid_post|mlp_out|attn_out)", submodule or "")
    layer = trainer.get("layer")
    buffer = cfg.get("buffer") if isinstance(cfg.get("buffer"), dict) else {}
    provenance = {
        "base_model": trainer.get("lm_name"),
        "layer": int(layer) if isinstance(layer, int) else None,
        "hook_point": hook.group(1) if hook else None,
        "context_length": buffer.get("ctx_len"),
        "source_hook_name": submodule,
        "source_architecture": dict_class,
        "source_trainer_class": trainer.get("trainer_class"),
        "source_weights_file": weights_file.name,
    }
    return Imported(
        activation=activation,
        W_enc=W_enc,
        W_dec=W_dec,
        b_enc=b_enc,
        b_dec=b_dec,
        subtracts_b_dec=subtracts_b_dec,
        threshold=threshold,
        k=k,
        provenance=provenance,
    )


def _dictionary_learning_files(path: Path) -> tuple[Path, Path]:
    """The weights file asked for (a folder means its ae.pt) and the run's config.json.

    trainSAE writes ``ae.pt`` and ``config.json`` side by side and its checkpoints as
    ``checkpoints/ae_<step>.pt``, so a file's config.json is looked for next to it, then one up.
    """
    if path.is_dir():
        folder = _folder_of(path, ("ae.pt", "config.json"))
        return folder / "ae.pt", folder / "config.json"
    if path.suffix != ".pt":
        raise ValueError(
            f"{path} is not a .pt file; give a dictionary_learning folder (ae.pt + config.json) "
            "or one of its .pt weight files (ae.pt, checkpoints/ae_<step>.pt)"
        )
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.json").is_file():
            return path, folder / "config.json"
    raise FileNotFoundError(
        f"no config.json next to {path} or in {path.parent.parent} (dictionary_learning keeps "
        "the run's config.json beside ae.pt, one folder above checkpoints/)"
    )


def _batchtopk_rule(file: Path, state: dict, trainer: dict, d_sae: int):
    """(activation, threshold, k) of dictionary_learning's BatchTopK encode at inference.

    ``encode(use_threshold=True)`` keeps ``ReLU(pre) * (ReLU(pre) > threshold)``. A threshold
    still at its initial -1 (never calibrated) keeps every ReLU(pre): that is a ReLU SAE.
    """
    k = int(state["k"]) if "k" in state else trainer.get("k")
    k = _positive_int(k, f"{file}: k (neither the weights nor trainer.k give it)")
    if "threshold" not in state:
        raise UnsupportedSAEError(
            f"{file}: this BatchTopK SAE has no inference threshold (older dictionary_learning); "
            "its encode is a batch-level top-k, which depends on the batch and is not converted"
        )
    value = float(state["threshold"])
    if value < 0:  # ReLU output is >= 0 > value: the mask keeps everything
        return "relu", None, None
    return "batchtopk", torch.full((d_sae,), value).double(), k


_READERS = {
    "saelens": read_saelens,
    "sparsify": read_sparsify,
    "gemma_scope": read_gemma_scope,
    "dictionary_learning": read_dictionary_learning,
}


# -- helpers -----------------------------------------------------------------------------------


def _check_format(format: str) -> str:
    fmt = str(format).strip().lower().replace("-", "_")
    fmt = {"gemmascope": "gemma_scope", "sae_lens": "saelens"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {format!r}; valid formats: {', '.join(FORMATS)}")
    return fmt


def _split_overrides(fmt: str, overrides: dict) -> tuple[dict, dict]:
    provenance, options = {}, {"reader": {}}
    for name, value in overrides.items():
        if value is None:
            continue
        if name in PROVENANCE_OVERRIDES:
            provenance[name] = value
        elif name == "dtype":
            if value not in DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {value!r}")
            options["dtype"] = value
        elif name == "norm_scaling_factor" and fmt == "saelens":
            options["reader"][name] = value
        elif name == "normalize_decoder" and fmt == "dictionary_learning":
            options["reader"][name] = bool(value)
        else:
            valid = list(PROVENANCE_OVERRIDES) + list(OPTIONS)
            raise ValueError(
                f"unknown or inapplicable option {name!r} for format {fmt!r}; options: "
                f"{', '.join(valid)} ({'; '.join(f'{k}: {v}' for k, v in OPTIONS.items())})"
            )
    hook = provenance.get("hook_point")
    if hook is not None and hook not in HOOK_POINTS:
        raise ValueError(f"hook_point must be one of {', '.join(HOOK_POINTS)}; got {hook!r}")
    return provenance, options


def _hub_patterns(fmt: str, inside: str) -> list[str]:
    def join(*parts: str) -> str:
        return "/".join(p for p in parts if p)

    if fmt == "saelens":
        return [join(inside, "cfg.json"), join(inside, "sae_weights.safetensors")]
    if fmt == "sparsify":
        parent = inside.rsplit("/", 1)[0] if "/" in inside else ""
        return [
            join(inside, "cfg.json"),
            join(inside, "sae.safetensors"),
            join(parent, "config.json"),
        ]
    if fmt == "gemma_scope":
        return [inside] if inside.endswith(".npz") else [join(inside, "params.npz")]
    if inside.endswith(".pt"):
        parent = inside.rsplit("/", 1)[0] if "/" in inside else ""
        grandparent = parent.rsplit("/", 1)[0] if "/" in parent else ""
        patterns = [inside, join(parent, "config.json"), join(grandparent, "config.json")]
        return list(dict.fromkeys(patterns))
    return [join(inside, "ae.pt"), join(inside, "config.json")]


def _folder_of(path: Path, needed: tuple[str, ...], subfolders_hint: bool = False) -> Path:
    """The folder holding ``needed``: the path itself, or the folder of one of those files."""
    if not path.is_dir() and path.name not in needed:
        # Converting the folder's default file instead would report another SAE as this one.
        raise ValueError(
            f"{path} is not one of this format's files ({', '.join(needed)}); give the folder "
            "or one of those files"
        )
    folder = path if path.is_dir() else path.parent
    missing = [name for name in needed if not (folder / name).is_file()]
    if not missing:
        return folder
    hint = ""
    if subfolders_hint and folder.is_dir():
        inner = sorted(p.name for p in folder.iterdir() if (p / needed[0]).is_file())
        if inner:
            hint = f"; it has one folder per hook point, pick one: {', '.join(inner)}"
    raise FileNotFoundError(
        f"{folder} lacks {', '.join(missing)} (this format needs {', '.join(needed)}){hint}"
    )


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object; got {type(data).__name__}")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is truncated or not a safetensors file ({err})") from err


def _check_tensors(file, tensors: dict, shapes: dict, optional: dict | None = None) -> None:
    """Every expected tensor present with its shape; anything else is an unknown variant."""
    optional = optional or {}
    for name, shape in shapes.items():
        if name not in tensors:
            raise ValueError(f"{file} lacks the tensor {name!r} (expected shape {list(shape)})")
        if tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(
                f"{file}: {name} has shape {list(tensors[name].shape)}, expected {list(shape)}"
            )
        if not tensors[name].is_floating_point():
            raise ValueError(f"{file}: {name} has dtype {tensors[name].dtype}, expected floats")
    extra = sorted(set(tensors) - set(shapes) - set(optional))
    if extra:
        raise UnsupportedSAEError(
            f"{file} holds tensors this converter does not know ({', '.join(extra)}); "
            f"expected {', '.join(shapes)} — a variant whose computation is not verified here"
        )
    for name, shape in optional.items():
        if name in tensors and shape is not None and tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(f"{file}: {name} has shape {list(tensors[name].shape)}")


def _positive_int(value, what: str) -> int:
    """Configs written by Python tools may hold 32.0 for 32."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return require_positive_int(what, value)


def _parse_transformer_lens_hook(name: str | None) -> tuple[int | None, str | None]:
    """'blocks.8.hook_resid_pre' -> (8, 'resid_pre'); other hooks keep only their layer."""
    if not name:
        return None, None
    match = re.fullmatch(r"blocks\.(\d+)\.hook_(resid_pre|resid_post|mlp_out|attn_out)", name)
    if match:
        return int(match.group(1)), match.group(2)
    layer = re.match(r"blocks\.(\d+)\.", name)
    return (int(layer.group(1)) if layer else None), None


def _parse_module_path(name: str) -> tuple[int | None, str | None]:
    """sparsify hookpoints: 'layers.8' -> resid_post, 'layers.8.mlp' -> mlp_out, ..."""
    match = re.fullmatch(r"(?:.*\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn))?", name)
    if not match:
        layer = re.search(r"(?:layers|h)\.(\d+)", name)
        return (int(layer.group(1)) if layer else None), None
    part = match.group(2)
    hook = "resid_post" if part is None else ("mlp_out" if part == "mlp" else "attn_out")
    return int(match.group(1)), hook


# -- command line ------------------------------------------------------------------------------


def _cli_format(text: str) -> str:
    try:
        return _check_format(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-topafa convert",
        description="Import an SAE saved by another library as an hf-topafa SAE folder. "
        "Anything our family cannot express exactly is refused, never approximated.",
    )
    parser.add_argument(
        "--from",
        dest="format",
        required=True,
        type=_cli_format,
        metavar="{" + ",".join(FORMATS) + "}",
        help="the library that saved SOURCE (gemmascope, gemma-scope, sae_lens also accepted)",
    )
    parser.add_argument("source", help="local folder/file, or owner/repo[/path] on the Hub")
    parser.add_argument("output", help="folder to write (config.json + model.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--base-model", help="override the recorded language model id")
    parser.add_argument("--layer", type=int, help="override the recorded block index")
    parser.add_argument("--hook-point", choices=HOOK_POINTS, help="override the hook point")
    parser.add_argument("--dataset", help="override the recorded training dataset")
    parser.add_argument("--context-length", type=int, help="override the recorded context")
    parser.add_argument(
        "--norm-scaling-factor",
        type=float,
        help="saelens expected_average_only_in: the input scale to fold into the weights",
    )
    parser.add_argument(
        "--no-normalize-decoder",
        dest="normalize_decoder",
        action="store_false",
        default=None,
        help="dictionary_learning AutoEncoder: keep decoder norms as saved",
    )
    return parser


def cli_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        "base_model": args.base_model,
        "layer": args.layer,
        "hook_point": args.hook_point,
        "dataset": args.dataset,
        "context_length": args.context_length,
        "dtype": args.dtype,
        "norm_scaling_factor": args.norm_scaling_factor,
        "normalize_decoder": args.normalize_decoder,
    }
    try:
        sae = convert(args.format, args.source, args.output, overwrite=args.overwrite, **overrides)
    except (ValueError, OSError) as err:
        print(f"error: convert failed: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    cfg = sae.config
    where = ", ".join(
        f"{name}={getattr(cfg, name)}"
        for name in ("base_model", "layer", "hook_point")
        if getattr(cfg, name, None) is not None
    )
    print(
        f"converted {args.format} SAE {args.source} -> {args.output}: d_in={cfg.d_in}, "
        f"d_sae={cfg.d_sae}, activation={cfg.activation}"
        + (f", k={cfg.k}" if cfg.k else "")
        + (f" ({where})" if where else "")
    )
    return 0
