"""Our SAEs as SAELens folders (cfg.json + sae_weights.safetensors): the inverse of ``hf-topafa
convert --from saelens``, for ``hf-topafa convert --to saelens`` and ``push --format saelens``.

TopK, ReLU (SAELens ``standard``), JumpReLU and BatchTopK (a ``jumprelu`` holding its inference
threshold, as SAELens saves its own) are SAELens's architectures; top-AFA and the k-free rules are
the architectures ``hf_topafa.integrations.saelens`` registers, so reading those folders needs
that import first. The paper's standardization is SAELens's ``layer_norm``. The base model, hook
and layer go into SAELens's metadata (``blocks.15.hook_resid_post``); what SAELens has no field
for (batchtopk's rule and k, the training hyperparameters) goes under ``metadata.hf_topafa``, so
that ``--from saelens`` gives back the same SAE. Nothing is written approximately: an SAE that
SAELens cannot compute exactly is refused with the reason.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import safetensors.torch
import torch

from .. import __version__
from ..helpers import atomic_folder, torch_dtype
from ..interop.convert_common import UnsupportedSAEError, check_output_folder
from ..interop.convert_config import overrides_of, split_overrides
from ..interop.convert_saelens import (
    CARRIED_FIELDS,
    METADATA_KEY,
    SAELENS_NATIVE,
    transformer_lens_hook,
    transformer_lens_name,
)
from ..sae.configuration_sae import SAEConfig
from ..sae.modeling_sae import SparseAutoencoder

SAELENS_FORMAT_VERSION = "6.54.12"
"""The SAELens release whose folder format this writer follows (and was checked against)."""
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
PROVENANCE = ("base_model", "layer", "hook_point", "dataset", "context_length")
# HF activations are TransformerLens's unprocessed ones: SAELens then advises
# HookedSAETransformer.from_pretrained_no_processing(..., **these).
UNPROCESSED_MODEL = {"center_writing_weights": False}


def saelens_architecture(config: SAEConfig) -> str:
    """The SAELens architecture that computes ``config.activation`` exactly."""
    return SAELENS_NATIVE.get(config.activation, config.activation)


def check_exportable(sae: SparseAutoencoder) -> None:
    """Refuse, with the reason, an SAE that SAELens cannot compute exactly."""
    config = sae.config
    if config.input_normalization not in ("none", "layer_norm"):
        raise UnsupportedSAEError(
            f"input_normalization={config.input_normalization!r} (hf-topafa 0.1's, (x - mean) / "
            "max(biased std, 1e-6)) has no SAELens counterpart: SAELens's layer_norm divides by "
            "the unbiased std plus 1e-5; refused rather than approximated"
        )
    if config.activation == "batchtopk" and bool(sae.threshold.min() < 0):
        raise UnsupportedSAEError(
            "this BatchTopK SAE has no inference threshold yet (it was never trained), and "
            "SAELens reads BatchTopK SAEs as a jumprelu with that threshold"
        )


def saelens_config(sae: SparseAutoencoder, dtype: torch.dtype | None = None, **provenance) -> dict:
    """cfg.json of ``sae`` as SAELens 6 writes it (``provenance`` overrides the config's)."""
    config = sae.config
    where = {name: getattr(config, name, None) for name in PROVENANCE}
    where.update({k: v for k, v in provenance.items() if v is not None})
    ours = {"activation": config.activation, "hf_topafa_version": __version__}
    if config.k is not None:
        ours["k"] = config.k
    ours.update({name: getattr(config, name) for name in CARRIED_FIELDS})
    metadata = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "model_name": transformer_lens_name(where["base_model"]),
        "hook_name": transformer_lens_hook(where["layer"], where["hook_point"]),
        "hook_head_index": None,
        "context_size": where["context_length"],
        "dataset_path": where["dataset"],
        "model_from_pretrained_kwargs": dict(UNPROCESSED_MODEL),
        METADATA_KEY: ours,
    }
    cfg = {
        "d_in": config.d_in,
        "d_sae": config.d_sae,
        "dtype": str(dtype or sae.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,  # ours encodes x - b_dec, as SAELens does with True
        "normalize_activations": config.input_normalization,  # "none" or "layer_norm"
        "reshape_activations": "none",
        "architecture": saelens_architecture(config),
        "metadata": metadata,
    }
    if config.activation == "topk":
        cfg.update(k=config.k, rescale_acts_by_decoder_norm=False)
    return cfg


def saelens_tensors(sae: SparseAutoencoder, dtype: torch.dtype | None = None) -> dict:
    """sae_weights.safetensors of ``sae``: SAELens's names are ours."""
    names = ["W_enc", "W_dec", "b_enc", "b_dec"]
    if sae.rule.threshold is not None:
        names.append("threshold")
    dtype = dtype or sae.W_enc.dtype
    return {name: getattr(sae, name).detach().to("cpu", dtype).contiguous() for name in names}


def load_sae(sae_or_run) -> SparseAutoencoder:
    """A SparseAutoencoder as it is, or one loaded from a run folder or Hub id."""
    if isinstance(sae_or_run, SparseAutoencoder):
        return sae_or_run
    if not isinstance(sae_or_run, str | os.PathLike):
        raise TypeError(
            "to_saelens expects a SparseAutoencoder, or a run folder or Hub id holding one; "
            f"got {type(sae_or_run).__name__}"
        )
    return SparseAutoencoder.from_pretrained(sae_or_run)


def to_saelens(
    sae_or_run,
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    dtype: str | None = None,
    **provenance,
) -> Path:
    """Write ``sae_or_run`` (a SparseAutoencoder, a run folder or a Hub id) as a SAELens folder
    that ``sae_lens.SAE.load_from_disk(output)`` reads with the same encode and reconstruction.

    ``dtype`` ("float32", "float64", "bfloat16") casts the weights (default: as they are);
    ``provenance`` (base_model, layer, hook_point, dataset, context_length) overrides what the
    SAE's config records. Top-AFA and the k-free rules load after
    ``import hf_topafa.integrations.saelens``. Returns ``output``.
    """
    files = saelens_files(load_sae(sae_or_run), dtype, **provenance)
    output = Path(output)
    check_output_folder(output, overwrite, CFG_FILE)
    with atomic_folder(output) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return output


def saelens_files(sae: SparseAutoencoder, dtype: str | None = None, **provenance) -> dict:
    """file name -> bytes of the SAELens folder of ``sae`` (what ``to_saelens`` writes and
    ``hf-topafa push --format saelens`` uploads); refuses what SAELens cannot compute."""
    unknown = sorted(set(provenance) - set(PROVENANCE))
    if unknown:
        raise TypeError(
            f"unknown arguments {', '.join(unknown)}; provenance: {', '.join(PROVENANCE)}"
        )
    check_exportable(sae)
    cast = torch_dtype(dtype) if dtype is not None else None
    cfg = saelens_config(sae, cast, **provenance)
    return {
        CFG_FILE: (json.dumps(cfg, indent=2, allow_nan=False) + "\n").encode(),
        WEIGHTS_FILE: safetensors.torch.save(saelens_tensors(sae, cast)),
    }


def run_export(args) -> int:
    """``hf-topafa convert --to saelens SOURCE OUTPUT``: one line, or one error line and 2."""
    try:
        provenance, options = split_overrides(args.to, overrides_of(args), export=True)
        sae = load_sae(args.source)
        output = to_saelens(
            sae, args.output, overwrite=args.overwrite, dtype=options.get("dtype"), **provenance
        )
    except (ValueError, OSError) as err:
        print(f"error: convert failed: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    cfg = saelens_config(sae)
    needs = cfg["architecture"] not in SAELENS_NATIVE.values()
    print(
        f"converted hf-topafa SAE {args.source} -> {output} as SAELens architecture "
        f"{cfg['architecture']} (d_in={cfg['d_in']}, d_sae={cfg['d_sae']}, normalize_activations="
        f"{cfg['normalize_activations']}); load it with sae_lens.SAE.load_from_disk"
        + (" after `import hf_topafa.integrations.saelens`" if needs else "")
    )
    return 0
