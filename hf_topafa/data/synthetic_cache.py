"""Activation caches drawn from a synthetic world, in the format an LM harvest writes.

``hf-topafa harvest --synthetic WORLD --max-tokens N --output CACHE`` samples the world once into
safetensors shards + ``manifest.json``, so that every SAE of a comparison trains on the same rows
and none waits on SAELens's sampler (600-4,700 samples/s per thread on the 4k world here,
slower than a training step). Rows are samples, not tokens: ``token_ids`` hold -1 and
``window_ids`` the sample's index. Each shard also stores the true number of active features per
sample (``true_l0``); with ``with_truth`` it stores the true sparse code too (``truth_indices``,
``truth_values``), which the ground-truth evaluation replays. The manifest records the world.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..helpers import atomic_folder, save_safetensors
from ..names import CACHE_FORMAT, MANIFEST
from .synthetic import load_world, world_config, world_folder

SYNTHETIC_PREFIX = "synthetic:"


def synthetic_manifest_fields(name: str, spec: str, folder: Path, seed: int, truth: bool) -> dict:
    """The identity of a synthetic cache: what a harvest manifest says, for a world."""
    return {
        "model": SYNTHETIC_PREFIX + name,
        "gguf_file": None,
        "layer": None,
        "hook_point": None,
        "dataset": SYNTHETIC_PREFIX + name,
        "holdout": "none",
        "synthetic": {
            "world": name,
            "spec": str(spec),
            "folder": str(folder),
            "config": world_config(str(folder)),
            "seed": seed,
            "with_truth": truth,
        },
    }


def write_synthetic_cache(
    world: str,
    out_dir: str | os.PathLike,
    num_samples: int,
    *,
    seed: int = 0,
    shard_tokens: int = 65536,
    sample_batch: int = 1024,
    with_truth: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Sample ``num_samples`` rows of ``world`` into an activation cache at ``out_dir``.

    A cache that already holds this world, seed and at least ``num_samples`` rows is kept as is;
    another cache there is refused unless ``overwrite``. Written atomically.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir).expanduser()
    name, folder = world_folder(world, progress=progress)
    identity = synthetic_manifest_fields(name, world, folder, seed, with_truth)
    if (out / MANIFEST).is_file() and not overwrite:
        held = json.loads((out / MANIFEST).read_text())
        same = held.get("synthetic", {}).get("config") == identity["synthetic"]["config"]
        same = same and held["synthetic"].get("seed") == seed
        if (
            same
            and held["num_tokens"] >= num_samples
            and (held["synthetic"]["with_truth"] or not with_truth)
        ):
            return out
        raise ValueError(
            f"{out} already holds another activation cache; choose another --output or overwrite"
        )
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ValueError(f"{out} exists and is not an activation cache; refusing to overwrite it")
    model = load_world(str(folder), progress=progress)
    torch.manual_seed(seed)  # SAELens samples from torch's global generator
    started, shards, done = time.perf_counter(), [], 0
    bar = tqdm(total=num_samples, unit="sample", disable=not progress, desc=f"sampling {name}")
    with atomic_folder(out) as tmp:
        while done < num_samples:
            rows = min(shard_tokens, num_samples - done)
            tensors = sample_shard(model, rows, done, sample_batch, with_truth, bar)
            file = f"shard-{len(shards):05d}.safetensors"
            save_safetensors(tmp / file, tensors)
            shards.append({"file": file, "num_tokens": rows})
            done += rows
        bar.close()
        manifest = {
            "format": CACHE_FORMAT,
            "version": 1,
            **identity,
            "num_tokens": done,
            "d_in": model.cfg.hidden_dim,
            "activation_dtype": "float32",
            "shards": shards,
            "harvest_seconds": round(time.perf_counter() - started, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


def sparse_code(codes: torch.Tensor, first_row: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of true codes [n, features] (dense or sparse) as (indices [nnz, 2]: row counted
    from ``first_row``, feature; values [nnz]), the form caches and truth sets store."""
    codes = codes.to_dense() if codes.is_sparse else codes
    where = codes.nonzero()
    indices = torch.stack([where[:, 0] + first_row, where[:, 1]], 1)
    return indices, codes[where[:, 0], where[:, 1]].float()


def world_of_cache(manifest: dict):
    """The ``SyntheticModel`` a synthetic cache was sampled from (its manifest's world folder)."""
    return load_world(manifest["synthetic"]["folder"], progress=False)


def sample_shard(model, rows: int, first_index: int, batch: int, with_truth: bool, bar) -> dict:
    """One shard's tensors: ``rows`` samples of ``model`` (and their true codes if asked)."""
    acts, l0s, idx, vals = [], [], [], []
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        hidden, features = model.sample_with_features(n)
        indices, values = sparse_code(features, start)
        acts.append(hidden.float())
        l0s.append(torch.bincount(indices[:, 0] - start, minlength=n).to(torch.int16))
        if with_truth:
            idx.append(indices.to(torch.int32))
            vals.append(values)
        bar.update(n)
    n_rows = sum(len(a) for a in acts)
    tensors = {
        "activations": torch.cat(acts).contiguous(),
        "token_ids": torch.full((n_rows,), -1, dtype=torch.int32),
        "window_ids": torch.arange(first_index, first_index + n_rows, dtype=torch.int64),
        "positions": torch.zeros(n_rows, dtype=torch.int32),
        "true_l0": torch.cat(l0s),
    }
    if with_truth:
        tensors["truth_indices"] = torch.cat(idx).contiguous()
        tensors["truth_values"] = torch.cat(vals).contiguous()
    return tensors


def synthetic_world_hint(base_model: str | None) -> str:
    """For an SAE trained on a synthetic world (``base_model`` "synthetic:NAME"), the sentence
    that says how to evaluate it; empty otherwise."""
    if not (base_model or "").startswith(SYNTHETIC_PREFIX):
        return ""
    world = base_model[len(SYNTHETIC_PREFIX) :]
    return (
        f"; it was trained on the synthetic world {world}, which has no text: score it with "
        f"hf-topafa evaluate SAE --synthetic {world}"
    )


def is_synthetic_cache(manifest: dict) -> bool:
    """Whether a cache manifest was written from a synthetic world."""
    return isinstance(manifest.get("synthetic"), dict)
