"""Synthetic worlds: activations that are known sparse sums of known unit features.

A world is SAELens's ``SyntheticModel`` (SynthSAEBench, ``sae_lens.synthetic``). It is named by a
folder written by ``SyntheticModel.save``, by a JSON file holding a ``SyntheticModelConfig``, or by
a preset: ``synthsaebench-16k`` is the published SynthSAEBench-16k configuration, and
``synthsaebench-4k`` the same recipe scaled to 4,096 features in 192 dims with 32 roots. Presets and
JSON configs are built once and cached under ``cache_root()/synthetic/``: building orthogonalizes
the feature dictionary, O(N²D), which takes on the order of an hour on a CPU for the 16k world.

SAELens is an optional dependency (``pip install -e ".[synth]"``); without it, ``load_world``
answers with one line that says how to install it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..helpers import atomic_folder
from ..sources import cache_root

PRESETS: dict[str, dict] = {
    "synthsaebench-16k": {
        "num_features": 16384,
        "hidden_dim": 768,
        "firing_probability": {
            "generator_name": "zipfian",
            "exponent": 0.5,
            "max_prob": 0.4,
            "min_prob": 5e-4,
        },
        "hierarchy": {
            "total_root_nodes": 128,
            "branching_factor": 4,
            "max_depth": 3,
            "mutually_exclusive_portion": 1.0,
            "mutually_exclusive_min_depth": 0,
            "mutually_exclusive_max_depth": None,
            "compensate_probabilities": True,
            "scale_children_by_parent": True,
        },
        "orthogonalization": {"num_steps": 100, "lr": 3e-4, "chunk_size": 1024},
        "correlation": {"rank": 25, "correlation_scale": 0.1, "seed": None},
        "mean_firing_magnitudes": {"generator_name": "linear", "start": 5.0, "end": 4.0},
        "std_firing_magnitudes": {"generator_name": "folded_normal", "mean": 0.5, "std": 0.5},
        "bias": 0.5,
        "dtype": "float32",
        "seed": 42,
    },
}
PRESETS["synthsaebench-4k"] = {
    **PRESETS["synthsaebench-16k"],
    "num_features": 4096,
    "hidden_dim": 192,
    "hierarchy": {**PRESETS["synthsaebench-16k"]["hierarchy"], "total_root_nodes": 32},
}

INSTALL_HINT = 'synthetic worlds need SAELens: pip install -e ".[synth]" (sae-lens 6.54.x)'


class WorldError(ValueError):
    """A world that cannot be named, read or built; the message says what is valid."""


def import_synthetic():
    """``sae_lens.synthetic``, or a one-line ``WorldError`` that says how to install it."""
    try:
        import sae_lens.synthetic as synthetic
    except ImportError as exc:
        raise WorldError(f"{INSTALL_HINT} ({exc})") from None
    return synthetic


def config_digest(config: dict) -> str:
    """A short, stable name for a world configuration (its cache folder's suffix)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def world_cache_dir(name: str, config: dict) -> Path:
    """Where a built world of this configuration is cached."""
    return cache_root() / "synthetic" / f"{name}-{config_digest(config)}"


def resolve_world(spec: str) -> tuple[str, dict | None, Path | None]:
    """(name, config to build or None, saved folder or None) for a preset, folder or JSON file."""
    spec = str(spec)
    if spec in PRESETS:
        return spec, PRESETS[spec], None
    path = Path(spec).expanduser()
    if path.is_dir():
        synthetic = import_synthetic()
        if not (path / synthetic.SYNTHETIC_MODEL_CONFIG_FILENAME).is_file():
            raise WorldError(
                f"{spec}: no {synthetic.SYNTHETIC_MODEL_CONFIG_FILENAME} in this folder; a world "
                "folder is one written by SyntheticModel.save"
            )
        return path.name, None, path
    if path.is_file() and path.suffix == ".json":
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise WorldError(f"{spec}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(config, dict):
            raise WorldError(f"{spec}: a world config is a JSON object (SyntheticModelConfig)")
        return path.stem, config, None
    raise WorldError(
        f"unknown synthetic world {spec!r}: give a preset ({', '.join(sorted(PRESETS))}), a folder "
        "written by SyntheticModel.save, or a JSON SyntheticModelConfig"
    )


def build_world(
    config: dict, folder: Path, progress: bool = True, device: str | None = None
) -> float:
    """Build the world of ``config`` and save it to ``folder`` atomically; returns seconds taken.

    ``device`` (default: a GPU when there is one): where the dictionary is orthogonalized,
    minutes instead of an hour for the 16k world. Its random numbers come from that device's
    generator, so a GPU-built world is another draw of the same config; build.json says which.
    """
    import torch

    synthetic = import_synthetic()
    try:
        cfg = synthetic.SyntheticModelConfig.from_dict(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise WorldError(f"not a valid SyntheticModelConfig: {exc}") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if progress:
        print(
            f"building synthetic world {folder.name} ({cfg.num_features} features in "
            f"{cfg.hidden_dim} dims) on {device}; this runs once and is cached",
            flush=True,
        )
    start = time.perf_counter()
    model = synthetic.SyntheticModel(cfg, device=device)
    seconds = time.perf_counter() - start
    facts = {
        "build_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "device": device,
    }
    with atomic_folder(folder) as tmp:
        model.save(tmp)
        (tmp / "build.json").write_text(json.dumps(facts, indent=2) + "\n")
    return seconds


def world_folder(spec: str, progress: bool = True) -> tuple[str, Path]:
    """(name, folder) of a world, building and caching it first when needed."""
    name, config, folder = resolve_world(spec)
    if folder is not None:
        return name, folder
    folder = world_cache_dir(name, config)
    if not (folder / "build.json").is_file():
        build_world(config, folder, progress=progress)
    return name, folder


def load_world(spec: str, device: str = "cpu", progress: bool = True):
    """The ``SyntheticModel`` named by ``spec`` (preset, saved folder or JSON config)."""
    synthetic = import_synthetic()
    _, folder = world_folder(spec, progress=progress)
    return synthetic.SyntheticModel.load_from_disk(folder, device=device)


def world_config(spec: str) -> dict:
    """The configuration of a world as a plain dict (for manifests and reports)."""
    name, config, folder = resolve_world(spec)
    if config is not None:
        return config
    synthetic = import_synthetic()
    return json.loads((folder / synthetic.SYNTHETIC_MODEL_CONFIG_FILENAME).read_text())


if __name__ == "__main__":  # python -m hf_topafa.data.synthetic PRESET ...: build ahead of use
    import sys

    for spec in sys.argv[1:]:
        name, path = world_folder(spec)
        print(name, path, json.loads((path / "build.json").read_text()), flush=True)
