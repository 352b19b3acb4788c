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
  (``norm_scaling_factor``). SAELens ``layer_norm``, ``(x - mean) / (std + 1e-5)`` with the
  Bessel-corrected std, undone on the way out, is our ``input_normalization="layer_norm"`` (the
  paper's standardization); the other per-token scheme, ``constant_norm_rescale``, is refused.

The activations an SAE reads must match too: SAELens SAEs were often trained on TransformerLens
models with weight processing (``model_from_pretrained_kwargs`` is kept in the config as
``source_model_from_pretrained_kwargs``); the math here is exact, the hook is the user's concern.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch

from ..helpers import atomic_folder, torch_dtype
from ..sae.configuration_sae import SAEConfig
from ..sae.modeling_sae import SparseAutoencoder
from ..sae.rules import get_rule
from .convert_common import Imported, UnsupportedSAEError, check_output_folder
from .convert_config import (  # noqa: F401 - FORMATS, OPTIONS, build_parser: imported from here
    DTYPE_NAMES,
    FORMATS,
    HOOK_POINTS,
    OPTIONS,
    PROVENANCE_OVERRIDES,
    build_parser,
    overrides_of,
)
from .convert_config import check_format as _check_format
from .convert_config import split_overrides as _split_overrides
from .convert_dictionary_learning import read_dictionary_learning
from .convert_gemma_scope import read_gemma_scope
from .convert_saelens import read_saelens
from .convert_sparsify import read_sparsify

DTYPES = {name: torch_dtype(name) for name in DTYPE_NAMES}

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
        input_normalization=imported.input_normalization,
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
    check_output_folder(output, overwrite, "config.json")
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


_READERS = {
    "saelens": read_saelens,
    "sparsify": read_sparsify,
    "gemma_scope": read_gemma_scope,
    "dictionary_learning": read_dictionary_learning,
}


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


# -- command line ------------------------------------------------------------------------------


def cli_main(argv: list[str]) -> int:
    """``hf-topafa convert ...`` from Python: argparse errors raise SystemExit, conversion
    errors print one line and return 2."""
    return run_command(build_parser().parse_args(argv))


def run_command(args) -> int:
    """Convert what ``hf_topafa.convert_config.parse_command`` checked; print one line."""
    if getattr(args, "to", None) is not None:  # --to saelens
        from ..integrations.saelens_export import run_export

        return run_export(args)
    try:
        sae = convert(
            args.format, args.source, args.output, overwrite=args.overwrite, **overrides_of(args)
        )
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
