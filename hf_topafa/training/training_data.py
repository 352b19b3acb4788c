"""Where training batches come from: an in-memory tensor, an activation cache, live harvesting,
or a synthetic world sampled while training.

Each source yields this process's batches of exactly ``local_batch`` rows, one pass at a time,
from a given batch of the pass on (``epoch(index, start)``); ``endless_batches`` turns passes into
an endless stream that starts at a saved position (resume).
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..data import harvest, lm
from ..data.synthetic_cache import is_synthetic_cache, world_of_cache
from .train_config import TrainConfig


class TensorSource:
    """Rows of an in-memory tensor; every pass is a fresh seeded permutation.

    Each step's global batch is one slice of the permutation and process r takes the r-th part
    of it, so N processes see exactly the tokens one process would.
    """

    def __init__(self, x: torch.Tensor, global_batch: int, rank: int, world_size: int, seed: int):
        if len(x) < global_batch:
            raise ValueError(
                f"the training data has {len(x)} tokens, fewer than one batch ({global_batch})"
            )
        self.x, self.global_batch, self.seed = x, global_batch, seed
        self.local = global_batch // world_size
        self.offset = rank * self.local
        self.d_in = x.shape[1]

    def epoch(self, index: int, start: int = 0) -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + index)
        order = torch.randperm(len(self.x), generator=gen)
        first = start * self.global_batch  # skipped batches are never gathered
        for row in range(first, len(order) - self.global_batch + 1, self.global_batch):
            yield self.x[order[row + self.offset : row + self.offset + self.local]]


class CacheSource:
    """An on-disk activation cache; process r reads its own shards (harvest.ActivationCache)."""

    def __init__(self, cache, local_batch: int, rank: int, world_size: int, seed: int):
        self.cache, self.local, self.rank, self.world = cache, local_batch, rank, world_size
        self.seed, self.d_in = seed, cache.d_in

    def epoch(self, index: int, start: int = 0) -> Iterator[torch.Tensor]:
        batches = self.cache.iter_batches(
            self.local,
            shuffle=True,
            seed=self.seed * 100_003 + index,
            rank=self.rank,
            world_size=self.world,
            drop_last=True,
        )
        return itertools.islice(batches, start, None)


class LiveSource:
    """Harvest while training; a pass small enough for ``memory_tokens`` is kept and replayed."""

    def __init__(self, harvester, local_batch: int, memory_tokens: int, seed: int, progress: bool):
        self.harvester, self.local, self.memory_tokens = harvester, local_batch, memory_tokens
        self.progress = progress
        self.seed, self.d_in = seed, harvester.d_in
        self.memory: torch.Tensor | None = None
        self.too_big = False

    def epoch(self, index: int, start: int = 0) -> Iterator[torch.Tensor]:
        # the skipped batches are harvested all the same: a pass also fills the replay memory
        return itertools.islice(self._pass(index), start, None)

    def _pass(self, index: int) -> Iterator[torch.Tensor]:
        if index > 0 and self.memory is None and not self.too_big:
            for _ in self._pass(0):  # a resumed run rebuilds the replay memory first
                pass
        if self.memory is not None:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + index)
            order = torch.randperm(len(self.memory), generator=gen)
            for start in range(0, len(order) - self.local + 1, self.local):
                yield self.memory[order[start : start + self.local]]
            return
        self.harvester.cfg = dataclasses.replace(
            self.harvester.cfg, seed=self.seed * 100_003 + index
        )
        kept, total = [], 0
        batches = self.harvester.iter_batches(self.local, self.progress, drop_last=True)
        for batch in batches:
            total += len(batch)
            if total <= self.memory_tokens:
                kept.append(batch)
            yield batch
        if total <= self.memory_tokens and kept:
            self.memory = torch.cat(kept)
        self.too_big = total > self.memory_tokens


class SyntheticSource:
    """Samples drawn from a synthetic world while training: no cache to write or read, for
    budgets a disk cannot hold (200M samples of the 16k world are 600 GB) and devices that sample
    faster than a disk reads. A pass is ``PASS_BATCHES`` batches, drawn ``draw_batches`` at a
    time; each draw is made with torch's generator (the one SAELens samples from) seeded from the
    seed, the pass, its first batch and the rank, inside ``fork_rng`` so training's own
    randomness is untouched. So a resumed run draws the same batches, and can start mid-pass
    without drawing the draws before.

    ``draw_batches`` (default: 1 on a CPU, as many as :data:`DRAW_ELEMENTS` allow on a GPU):
    SAELens's sampler waits on the GPU several times per draw, so a GPU draws many batches at
    once; the samples then differ from a CPU's, as a GPU's generator does anyway."""

    PASS_BATCHES = 256
    DRAW_ELEMENTS = 2**28  # the dense [rows, num_features] code one draw may hold on a GPU

    def __init__(
        self, world, local_batch: int, rank: int, seed: int, draw_batches: int | None = None
    ):
        self.world, self.local, self.rank, self.seed = world, local_batch, rank, seed
        self.d_in = world.cfg.hidden_dim
        if draw_batches is None:
            draw_batches = 1
            if world.feature_dict.feature_vectors.device.type != "cpu":
                fit = self.DRAW_ELEMENTS // (local_batch * world.cfg.num_features)
                while draw_batches * 2 <= min(fit, self.PASS_BATCHES):
                    draw_batches *= 2  # a power of two divides the pass
        self.draw_batches = draw_batches

    def epoch(self, index: int, start: int = 0) -> Iterator[torch.Tensor]:
        per = self.draw_batches
        for first in range(start - start % per, self.PASS_BATCHES, per):
            seed = ((self.seed * 100_003 + index) * self.PASS_BATCHES + first) * 64 + self.rank
            last = min(first + per, self.PASS_BATCHES)
            rows = draw_samples(self.world, self.local * (last - first), seed)
            for batch in range(max(first, start), last):
                yield rows[(batch - first) * self.local : (batch - first + 1) * self.local]


def draw_samples(world, n: int, seed: int) -> torch.Tensor:
    """``n`` samples of a synthetic world, drawn on its device with torch's generator (which
    SAELens samples from) seeded at ``seed``, leaving torch's own random state as it was."""
    device = world.feature_dict.feature_vectors.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.no_grad():
            return world.sample(n).float()


def _harvest_config(config: TrainConfig, **overrides) -> harvest.HarvestConfig:
    d = config.data
    fields = dict(
        model=d.model,
        gguf_file=d.gguf_file,
        layer=d.layer,
        hook_point=d.hook_point,
        dataset=d.dataset,
        dataset_config=d.dataset_config,
        text_column=d.text_column,
        split=d.split,
        context_length=d.context_length,
        batch_windows=d.harvest_batch_windows,
        shuffle_buffer=d.shuffle_buffer,
        dtype=d.lm_dtype,
        holdout_every=d.holdout_every,
        seed=config.optim.seed,
    )
    return harvest.HarvestConfig(**{**fields, **overrides})


def _cache_harvest_config(manifest: dict, config: TrainConfig) -> harvest.HarvestConfig:
    """The live harvest of the held-out windows matching an activation cache's manifest."""
    d = config.data
    keys = ("model", "gguf_file", "layer", "hook_point", "dataset", "dataset_config")
    keys += ("text_column", "split", "context_length", "exclude_bos", "exclude_first", "dtype")
    fields = {k: manifest[k] for k in keys if k in manifest}
    if fields.get("dataset") == harvest.BUNDLED_NAME:
        fields["dataset"] = None
    every = manifest.get("holdout_every") or d.holdout_every
    return harvest.HarvestConfig(
        **fields, holdout="eval", holdout_every=every, max_tokens=d.eval_tokens,
        shuffle_buffer=0, batch_windows=d.harvest_batch_windows,
    )  # fmt: skip


def first_rows(batches: Iterator[torch.Tensor], n: int) -> torch.Tensor:
    """The first ``n`` rows of ``batches`` (the held-out set); warns when there are fewer."""
    rows, total = [], 0
    for batch in batches:
        rows.append(batch)
        total += len(batch)
        if total >= n:
            break
    if not rows:
        raise ValueError(
            f"the held-out data is empty: found 0 tokens, eval_tokens={n} needed; give more "
            "text or a larger --eval-cache"
        )
    if total < n:
        warnings.warn(
            f"the held-out data has {total} tokens, fewer than eval_tokens={n}; the final "
            f"metrics use those {total}",
            stacklevel=2,
        )
    return torch.cat(rows)[:n]


@dataclass
class TrainingData:
    """What ``build_data`` gives the training loop: the batches' source and the held-out rows."""

    source: TensorSource | CacheSource | LiveSource | SyntheticSource
    eval_x: torch.Tensor | None  # only on the main process
    held_out: bool
    provenance: dict


PROVENANCE_FIELDS = (
    "base_model", "layer", "hook_point", "dataset", "context_length", "base_model_weights"
)  # fmt: skip
"""What an SAE records of its training data (SAEConfig fields)."""


def synthetic_eval_rows(world, seed: int, n: int) -> torch.Tensor:
    """``n`` fresh samples of a synthetic world, seeded apart from the training samples."""
    return draw_samples(world, n, seed + 1_000_003).cpu()


def _synthetic_data(config, eval_data, accelerator, local_batch) -> TrainingData:
    """Samples of ``config.data.synthetic`` drawn on the training device as training goes."""
    from ..data.synthetic import load_world, world_folder
    from ..data.synthetic_cache import synthetic_manifest_fields

    d = config.data
    name, folder = world_folder(d.synthetic, progress=accelerator.is_main_process)
    world = load_world(str(folder), device=str(accelerator.device), progress=False)
    seed = config.optim.seed
    fields = synthetic_manifest_fields(name, d.synthetic, folder, seed, truth=False)
    provenance = {key: None for key in PROVENANCE_FIELDS}
    provenance.update(base_model=fields["model"], dataset=fields["dataset"])
    eval_x = None
    if eval_data is not None:
        eval_x = torch.as_tensor(eval_data, dtype=torch.float32)[: d.eval_tokens]
    elif accelerator.is_main_process:  # fresh samples of the world: held out by construction
        eval_x = synthetic_eval_rows(world, seed, d.eval_tokens)
    source = SyntheticSource(world, local_batch, accelerator.process_index, seed)
    return TrainingData(source, eval_x, True, provenance)


def build_data(
    config, data, eval_data, accelerator, local_batch, provenance: dict | None = None
) -> TrainingData:
    """This process's training source and held-out rows, from tensors, a cache or live text."""
    d = config.data
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    if data is not None:
        return _tensor_data(config, data, eval_data, rank, world, provenance)
    if d.synthetic is not None:
        return _synthetic_data(config, eval_data, accelerator, local_batch)
    if d.activation_cache is not None:
        cache = harvest.ActivationCache(d.activation_cache)
        man = cache.manifest
        provenance = {
            "base_model": man.get("model"),
            "layer": man.get("layer"),
            "hook_point": man.get("hook_point"),
            "dataset": man.get("dataset"),
            "context_length": man.get("context_length"),
            "base_model_weights": man.get("model_weights"),
        }
        source = CacheSource(cache, local_batch, rank, world, config.optim.seed)
        held_out, eval_x = True, None
        if eval_data is not None:
            eval_x = torch.as_tensor(eval_data, dtype=torch.float32)[: d.eval_tokens]
        elif d.eval_cache is not None:
            eval_cache = harvest.ActivationCache(d.eval_cache)
            if main:
                eval_x = first_rows(eval_cache.iter_batches(4096, shuffle=False), d.eval_tokens)
        elif is_synthetic_cache(man):
            if main:  # fresh samples of the world: held out by construction
                eval_x = synthetic_eval_rows(world_of_cache(man), man["synthetic"]["seed"],
                                             d.eval_tokens)  # fmt: skip
        else:
            held_out = man.get("holdout") == "train"
            if main:
                if not held_out:
                    print(
                        f"note: the activation cache {cache.path} has no held-out split "
                        f"(holdout={man.get('holdout')!r}); the final metrics use its "
                        "eval windows, which training also read. Harvest with --holdout train "
                        "or pass --eval-cache for honest held-out figures."
                    )
                ev = harvest.Harvester(_cache_harvest_config(man, config))
                eval_x = first_rows(ev.iter_batches(4096, config.run.progress), d.eval_tokens)
        return TrainingData(source, eval_x, held_out, provenance)

    per_rank = None if d.harvest_tokens is None else max(1, d.harvest_tokens // world)
    train_cfg = _harvest_config(
        config, holdout="train", rank=rank, world_size=world, max_tokens=per_rank
    )
    harvester = harvest.Harvester(train_cfg)  # loads the LM; bad layer/hook point raise here
    provenance = {
        "base_model": train_cfg.identity()["model"],
        "layer": d.layer,
        "hook_point": d.hook_point,
        "dataset": harvest.dataset_name(d.dataset),
        "context_length": d.context_length,
        "base_model_weights": lm.weights_description(train_cfg.identity()["model"], d.gguf_file),
    }
    eval_x = None
    if eval_data is not None:
        eval_x = torch.as_tensor(eval_data, dtype=torch.float32)[: d.eval_tokens]
    elif d.eval_cache is not None:
        if main:
            eval_cache = harvest.ActivationCache(d.eval_cache)
            eval_x = first_rows(eval_cache.iter_batches(4096, shuffle=False), d.eval_tokens)
    elif main:
        eval_cfg = _harvest_config(
            config, holdout="eval", max_tokens=d.eval_tokens, shuffle_buffer=0
        )
        ev = harvest.Harvester(eval_cfg)
        eval_x = first_rows(ev.iter_batches(4096, config.run.progress), d.eval_tokens)
    progress = config.run.progress and accelerator.is_main_process
    source = LiveSource(harvester, local_batch, d.memory_tokens, config.optim.seed, progress)
    return TrainingData(source, eval_x, True, provenance)


def _tensor_data(config, data, eval_data, rank, world, provenance) -> TrainingData:
    d = config.data
    x = torch.as_tensor(data, dtype=torch.float32)
    if x.ndim != 2:
        raise ValueError(f"training data must be a [tokens, d_in] tensor; got {tuple(x.shape)}")
    if eval_data is None:
        if len(x) < d.eval_tokens + config.optim.batch_size:
            raise ValueError(
                f"the training tensor has {len(x)} rows: too few to hold out eval_tokens="
                f"{d.eval_tokens} and still train on one batch ({config.optim.batch_size}); "
                "pass eval_data or lower eval_tokens"
            )
        x, eval_x = x[: -d.eval_tokens], x[-d.eval_tokens :]
    else:
        eval_x = torch.as_tensor(eval_data, dtype=torch.float32)[: d.eval_tokens]
    # a tensor says nothing of where it came from: the caller's provenance, or unknown
    known = dict(provenance or {})
    unknown = set(known) - set(PROVENANCE_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown provenance fields {sorted(unknown)}; valid: {', '.join(PROVENANCE_FIELDS)}"
        )
    provenance = {key: known.get(key) for key in PROVENANCE_FIELDS}
    return TrainingData(
        TensorSource(x, config.optim.batch_size, rank, world, config.optim.seed),
        eval_x,
        True,
        provenance,
    )


def endless_batches(source, position: list[int]) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Endless batches with their position [pass, batches read in it], from ``position`` on."""
    epoch, skip = position
    while True:
        count, produced = skip, False
        for batch in source.epoch(epoch, skip):
            count += 1
            produced = True
            yield batch, [epoch, count]
        if not produced and skip == 0:
            raise ValueError(
                "the training data gave no full batch in a pass; lower --batch-size or give more "
                "data"
            )
        epoch, skip = epoch + 1, 0


def chain_first(first, position, rest):
    """Put back a batch already read (``first`` at ``position``) in front of ``rest``."""
    yield first, position
    yield from rest
