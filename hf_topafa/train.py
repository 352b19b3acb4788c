"""Train an SAE of the family on a language model's activations, with Accelerate.

One process on a CPU or GPU by default; bf16 autocast on GPU. The same code runs as DDP, each
process reading its own part of the data and ``--batch-size`` being the global batch:

    accelerate launch --multi_gpu --num_processes 4 -m hf_topafa.train --max-tokens 50000000 ...
    torchrun --nproc_per_node 2 -m hf_topafa.train ...        # CPU processes (gloo)

The step follows the paper's published code (SewoongLee/top-afa-sae, training/training.py):
Adam (lr 3e-4 constant, betas 0.9/0.99, eps 1e-8); the gradient norm clipped at 1e5; the
decoder-row gradient's radial part removed and the rows renormalized to unit norm; then the Adam
step. Features that have not fired for ``dead_tokens_threshold`` tokens (default five batches, the
paper's ``n_batches_to_dead``) count as dead and feed the aux-k loss. By default inputs are
standardized per token, the encoder has no trained bias, ``W_enc`` starts kaiming-uniform and
``b_dec`` at zero, and the loss is in the paper's units (``SAEOutput``); each of these is a flag.
A learning-rate warmup and decay are opt-in (``--warmup-fraction``, ``--decay-fraction``).

A run folder ends as a ``save_pretrained`` folder (``config.json``, ``model.safetensors``) plus
``training_config.json`` (the resolved configuration, written at the start), ``metrics.json``
(held-out figures) and ``zf_plot.png``. Checkpoints live in ``checkpoints/step_XXXXXXX/``.

Data, in order of precedence: a tensor passed to ``train(config, data=...)``, an activation cache
(``--activation-cache DIR`` from ``hf-topafa harvest``), or live harvesting. Held-out tokens come
from windows that training never reads (``HarvestConfig.holdout``), an ``--eval-cache``, or the
last rows of a tensor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from . import harvest, lm
from .checkpoint import (
    atomic_write_json,
    clean_temporaries,
    load_latest_intact,
    save_checkpoint,
)
from .configuration_sae import ACTIVATIONS, SAEConfig
from .modeling_sae import SparseAutoencoder

DEFAULT_OUTPUT = "runs/smollm2-topafa"
TRAINING_CONFIG = "training_config.json"
METRICS = "metrics.json"
ZF_PLOT = "zf_plot.png"
PLOT_HINT = 'pip install "hf-topafa[plot]"'


def _arg(default, help: str, **kwargs):
    """A dataclass field whose help text is also the command line's --help."""
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``training_config.json`` in the run folder.

    Parsed from the command line (``HfArgumentParser``; ``--max-tokens`` and ``--max_tokens`` both
    work) and from a YAML or JSON file given with ``--config``.
    """

    # -- activations -----------------------------------------------------------------------
    model: str = _arg(
        lm.DEFAULT_MODEL,
        "Hub id or folder of a causal LM, or a .gguf file; the default is the offline SmolLM2 copy.",
    )
    gguf_file: str | None = _arg(None, "GGUF file name inside --model (a folder or Hub repo).")
    layer: int = _arg(lm.DEFAULT_LAYER, "Decoder block to read, 0-based.")
    hook_point: Literal["resid_pre", "resid_post", "mlp_out", "attn_out"] = _arg(
        lm.DEFAULT_HOOK_POINT, "Where in the block the activations are read."
    )
    dataset: str | None = _arg(
        None,
        "Hub dataset id or local file (.txt/.jsonl/.json/.parquet/.csv) or folder; "
        "default: the bundled WikiText-2 sample.",
    )
    dataset_config: str | None = _arg(None, "Configuration name of a Hub dataset.")
    text_column: str = _arg("text", "Column holding the text.")
    split: str = _arg("train", "Dataset split.")
    context_length: int = _arg(256, "Tokens per harvested window.")
    activation_cache: str | None = _arg(
        None, "Train from this activation cache (hf-topafa harvest) instead of harvesting live."
    )
    eval_cache: str | None = _arg(
        None, "Held-out activation cache; default: harvest the held-out windows live."
    )
    holdout_every: int = _arg(
        10, "Every holdout_every-th window is held out for evaluation and never trained on."
    )
    eval_tokens: int = _arg(2048, "Held-out tokens for the final metrics and ZF plot.")
    lm_dtype: Literal["float32", "bfloat16", "float16"] = _arg(
        "float32", "Dtype of the language model when harvesting live."
    )
    harvest_batch_windows: int = _arg(8, "Windows per language-model forward when harvesting.")
    shuffle_buffer: int = _arg(32768, "Tokens in the live harvester's shuffling buffer.")
    harvest_tokens: int | None = _arg(
        20_480,
        "Live harvesting: tokens read from the dataset per pass, over all processes (None: the "
        "whole dataset). The default suits the quick CPU demo, whose passes are replayed from "
        "memory; raise it for real runs.",
    )
    memory_tokens: int = _arg(
        2_000_000,
        "Live harvesting: when a pass over the dataset yields at most this many tokens, keep them "
        "in memory and replay them (reshuffled) in later passes instead of re-running the LM.",
    )

    # -- the SAE -----------------------------------------------------------------------------
    activation: Literal["topafa", "topk", "batchtopk", "relu", "jumprelu"] = _arg(
        "topafa", "Sparse activation rule."
    )
    expansion_factor: float = _arg(
        8.0, "d_sae = d_in * expansion_factor when --d-sae is not given."
    )
    d_sae: int | None = _arg(None, "Number of features.")
    k: int | None = _arg(None, "Features kept per token (required for topk and batchtopk).")
    afa_coef: float = _arg(1 / 32, "lambda_AFA: weight of the norm-matching loss.")
    aux_k: int = _arg(512, "Dead features the aux-k loss may use.")
    aux_coef: float = _arg(1 / 32, "Weight of the aux-k loss.")
    dead_tokens_threshold: int | None = _arg(
        None,
        "A feature silent for this many training tokens is dead; default: 5 batches "
        "(the paper's n_batches_to_dead = 5).",
    )
    l1_coef: float = _arg(0.05, "L1 weight (relu).")
    l0_coef: float = _arg(1e-3, "L0 weight (jumprelu).")
    jumprelu_init_threshold: float = _arg(1e-3, "Initial JumpReLU threshold.")
    jumprelu_bandwidth: float = _arg(1e-3, "JumpReLU pseudo-gradient bandwidth.")
    input_normalization: Literal["none", "layer_norm", "layer_norm_biased"] = _arg(
        "layer_norm",
        "layer_norm: standardize each token as the paper does, (x - mean) / (std + 1e-5) with the "
        "unbiased std; none: raw activations; layer_norm_biased: hf-topafa 0.1's standardization.",
    )
    loss_convention: Literal["paper", "hf_topafa_v0.1"] = _arg(
        "paper",
        "paper: the published loss (means over elements and tokens, lambda_AFA in the paper's "
        "units); hf_topafa_v0.1: the 0.1 objective, normalized by the batch's sum of ||x||^2.",
    )
    encoder_bias: bool | None = _arg(
        None, "Train an encoder bias; default: no for topafa/topk/batchtopk (the paper), yes else."
    )
    init: Literal["kaiming", "unit_tied"] = _arg(
        "kaiming",
        "kaiming: the paper's kaiming-uniform W_enc with W_dec its transpose (unit rows); "
        "unit_tied: hf-topafa 0.1's unit-norm Gaussian decoder, encoder tied to it.",
    )
    decoder_bias_init: Literal["zeros", "mean"] = _arg(
        "zeros", "zeros: b_dec starts at zero (the paper); mean: the first batch's mean."
    )
    batchtopk_threshold_momentum: float = _arg(
        0.99, "EMA momentum of BatchTopK's inference threshold."
    )

    # -- optimization ------------------------------------------------------------------------
    max_tokens: int = _arg(
        81_920, "Training tokens (the number of steps is max_tokens // batch_size)."
    )
    batch_size: int = _arg(
        256,
        "Tokens per optimizer step, summed over all processes. Small batches give the short "
        "default run enough steps; use 4096 or so for long runs.",
    )
    lr: float = _arg(3e-4, "Adam learning rate.")
    adam_beta1: float = _arg(0.9, "Adam beta1.")
    adam_beta2: float = _arg(0.99, "Adam beta2.")
    adam_eps: float = _arg(1e-8, "Adam epsilon (torch's default, as the paper).")
    warmup_fraction: float = _arg(
        0.0, "Fraction of the steps with a linear learning-rate warmup (the paper: none)."
    )
    decay_fraction: float = _arg(
        0.0,
        "Fraction of the steps, at the end, over which the learning rate decays to zero "
        "(the paper: none, a constant learning rate).",
    )
    max_grad_norm: float = _arg(1e5, "Gradient-norm clipping (the paper's 1e5; 0 turns it off).")
    seed: int = _arg(0, "Seed of the SAE's initialization and of the data order.")
    mixed_precision: Literal["auto", "no", "bf16"] = _arg(
        "auto", "auto: bf16 autocast on GPU, full precision on CPU."
    )

    # -- the run -----------------------------------------------------------------------------
    output: str = _arg(DEFAULT_OUTPUT, "Run folder.")
    resume: bool = _arg(False, "Continue the run in --output from its latest checkpoint.")
    overwrite: bool = _arg(False, "Delete the run already in --output and start again.")
    checkpoint_every: int = _arg(100, "Steps between checkpoints (0: none).")
    keep_checkpoints: int = _arg(2, "Checkpoints kept (the newest).")
    log_every: int = _arg(10, "Steps between metric logs and progress-bar updates.")
    log_with: Literal["auto", "tensorboard", "trackio", "wandb", "none"] = _arg(
        "auto",
        "Metric tracker; auto: TensorBoard if installed (logs in RUN/logs), else none.",
    )
    progress: bool = _arg(True, "Show progress bars.")

    def __post_init__(self):
        for name in ("max_tokens", "batch_size", "context_length", "eval_tokens", "holdout_every"):
            _positive_int(name, getattr(self, name))
        for name in ("harvest_batch_windows", "aux_k", "keep_checkpoints", "log_every"):
            _positive_int(name, getattr(self, name))
        for name in ("memory_tokens", "shuffle_buffer", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0; got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}; got {self.activation!r}"
            )
        if self.activation in ("topk", "batchtopk") and self.k is None:
            raise ValueError(
                f"--activation {self.activation} needs --k (features kept per token), e.g. --k 32"
            )
        if self.hook_point not in lm.HOOK_POINTS:
            raise ValueError(
                f"hook_point must be one of {', '.join(lm.HOOK_POINTS)}; got {self.hook_point!r}"
            )
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer must be an integer >= 0; got {self.layer!r}")
        if self.max_tokens < self.batch_size:
            raise ValueError(
                f"max_tokens={self.max_tokens} is less than one batch (batch_size="
                f"{self.batch_size}); raise --max-tokens or lower --batch-size"
            )
        for name in ("dead_tokens_threshold", "harvest_tokens"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("lr", "adam_eps"):
            if not (_number(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive number; got {getattr(self, name)!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not (_number(getattr(self, name)) and 0 <= getattr(self, name) < 1):
                raise ValueError(f"{name} must be in [0, 1); got {getattr(self, name)!r}")
        for name in ("warmup_fraction", "decay_fraction"):
            if not (_number(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)!r}")
        if self.warmup_fraction + self.decay_fraction > 1:
            raise ValueError("warmup_fraction + decay_fraction must be at most 1")
        if not (_number(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ValueError(f"max_grad_norm must be >= 0; got {self.max_grad_norm!r}")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ValueError(
                f"mixed_precision must be auto, no or bf16; got {self.mixed_precision!r}"
            )
        if self.log_with not in ("auto", "tensorboard", "trackio", "wandb", "none"):
            raise ValueError(
                "log_with must be one of auto, tensorboard, trackio, wandb, none; "
                f"got {self.log_with!r}"
            )
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other; pass only one")
        if self.dataset is not None and _looks_local(self.dataset):
            path = Path(self.dataset).expanduser()
            if not path.exists():
                raise FileNotFoundError(
                    f"dataset not found: {path} (give an existing .txt/.jsonl/.json/.parquet/.csv "
                    "file or folder, a Hub dataset id, or leave --dataset out for the bundled sample)"
                )
        for name in ("activation_cache", "eval_cache"):
            value = getattr(self, name)
            if value is not None and not (Path(value).expanduser() / harvest.MANIFEST).is_file():
                raise FileNotFoundError(
                    f"--{name.replace('_', '-')} {value}: no activation cache there (missing "
                    f"{harvest.MANIFEST}); write one with `hf-topafa harvest --output DIR`"
                )

    @property
    def steps(self) -> int:
        return self.max_tokens // self.batch_size

    def resolved_dead_threshold(self) -> int:
        if self.dead_tokens_threshold is not None:
            return self.dead_tokens_threshold
        return 5 * self.batch_size


# Fields that may change between a run and its resumption: they steer the run, not its result.
RUN_CONTROL = (
    "output",
    "resume",
    "overwrite",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "log_with",
    "progress",
)


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _looks_local(dataset: str) -> bool:
    path = Path(dataset).expanduser()
    return (
        path.exists() or path.suffix in harvest.LOCAL_FORMATS or dataset.startswith((".", "/", "~"))
    )


# --------------------------------------------------------------------------------------------
# Command line and configuration files


def build_parser():
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        TrainConfig,
        prog="hf-topafa train",
        description="Train a sparse autoencoder on a language model's activations. Without "
        "arguments: a top-AFA SAE on SmolLM2-135M-Instruct, layer 15, the bundled corpus sample.",
    )
    parser.add_argument("--config", help="YAML or JSON file of TrainConfig fields; flags override")
    return parser


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON mapping of TrainConfig fields; unknown keys are an error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"configuration file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"configuration file {path} must end in .yaml, .yml or .json")
    if not isinstance(data, dict):
        raise ValueError(f"configuration file {path} must hold a mapping of field: value")
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(
            f"{path}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(names)}"
        )
    return {key: _coerce(names[key], value) for key, value in data.items()}


def _coerce(f: dataclasses.Field, value):
    """YAML reads 3e-4 as a string: turn strings into the field's number or bool type."""
    if not isinstance(value, str):
        return value
    hint = typing.get_type_hints(TrainConfig)[f.name]
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    try:
        if kinds[0] is int:
            return int(value)
        if kinds[0] is float:
            return float(value)
    except ValueError as err:
        raise ValueError(f"{f.name} must be a number; got {value!r}") from err
    if kinds[0] is bool:
        if value.lower() in ("true", "yes", "1"):
            return True
        if value.lower() in ("false", "no", "0"):
            return False
        raise ValueError(f"{f.name} must be true or false; got {value!r}")
    return value


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """TrainConfig from command-line flags, on top of ``--config FILE`` when given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config_file(known.config))
    config, _extra = parser.parse_args_into_dataclasses(args=argv)
    return config


# --------------------------------------------------------------------------------------------
# Data sources: each yields this process's batches of exactly ``local_batch`` rows, per pass


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

    def epoch(self, index: int) -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + index)
        order = torch.randperm(len(self.x), generator=gen)
        for start in range(0, len(order) - self.global_batch + 1, self.global_batch):
            yield self.x[order[start + self.offset : start + self.offset + self.local]]


class CacheSource:
    """An on-disk activation cache; process r reads its own shards (harvest.ActivationCache)."""

    def __init__(self, cache, local_batch: int, rank: int, world_size: int, seed: int):
        self.cache, self.local, self.rank, self.world = cache, local_batch, rank, world_size
        self.seed, self.d_in = seed, cache.d_in

    def epoch(self, index: int) -> Iterator[torch.Tensor]:
        return self.cache.iter_batches(
            self.local,
            shuffle=True,
            seed=self.seed * 100_003 + index,
            rank=self.rank,
            world_size=self.world,
            drop_last=True,
        )


class LiveSource:
    """Harvest while training; a pass small enough for ``memory_tokens`` is kept and replayed."""

    def __init__(self, harvester, local_batch: int, memory_tokens: int, seed: int, progress: bool):
        self.harvester, self.local, self.memory_tokens = harvester, local_batch, memory_tokens
        self.progress = progress
        self.seed, self.d_in = seed, harvester.d_in
        self.memory: torch.Tensor | None = None
        self.too_big = False

    def epoch(self, index: int) -> Iterator[torch.Tensor]:
        if index > 0 and self.memory is None and not self.too_big:
            for _ in self.epoch(0):  # a resumed run rebuilds the replay memory first
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


def _harvest_config(config: TrainConfig, **overrides) -> harvest.HarvestConfig:
    fields = dict(
        model=config.model,
        gguf_file=config.gguf_file,
        layer=config.layer,
        hook_point=config.hook_point,
        dataset=config.dataset,
        dataset_config=config.dataset_config,
        text_column=config.text_column,
        split=config.split,
        context_length=config.context_length,
        batch_windows=config.harvest_batch_windows,
        shuffle_buffer=config.shuffle_buffer,
        dtype=config.lm_dtype,
        holdout_every=config.holdout_every,
        seed=config.seed,
    )
    return harvest.HarvestConfig(**{**fields, **overrides})


def _cache_harvest_config(manifest: dict, config: TrainConfig) -> harvest.HarvestConfig:
    """The live harvest of the held-out windows matching an activation cache's manifest."""
    keys = ("model", "gguf_file", "layer", "hook_point", "dataset", "dataset_config")
    keys += ("text_column", "split", "context_length", "exclude_bos", "exclude_first", "dtype")
    fields = {k: manifest[k] for k in keys if k in manifest}
    if fields.get("dataset") == harvest.BUNDLED_NAME:
        fields["dataset"] = None
    every = manifest.get("holdout_every") or config.holdout_every
    return harvest.HarvestConfig(
        **fields, holdout="eval", holdout_every=every, max_tokens=config.eval_tokens,
        shuffle_buffer=0, batch_windows=config.harvest_batch_windows,
    )  # fmt: skip


def _first_rows(batches: Iterator[torch.Tensor], n: int) -> torch.Tensor:
    rows, total = [], 0
    for batch in batches:
        rows.append(batch)
        total += len(batch)
        if total >= n:
            break
    if not rows:
        raise ValueError("the held-out data is empty")
    return torch.cat(rows)[:n]


@dataclass
class _Data:
    source: TensorSource | CacheSource | LiveSource
    eval_x: torch.Tensor | None  # only on the main process
    held_out: bool
    provenance: dict


def _build_data(config, data, eval_data, accelerator, local_batch) -> _Data:
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    if data is not None:
        return _tensor_data(config, data, eval_data, rank, world)
    if config.activation_cache is not None:
        cache = harvest.ActivationCache(config.activation_cache)
        man = cache.manifest
        provenance = {
            "base_model": man.get("model"),
            "layer": man.get("layer"),
            "hook_point": man.get("hook_point"),
            "dataset": man.get("dataset"),
            "context_length": man.get("context_length"),
        }
        source = CacheSource(cache, local_batch, rank, world, config.seed)
        held_out, eval_x = True, None
        if eval_data is not None:
            eval_x = torch.as_tensor(eval_data, dtype=torch.float32)[: config.eval_tokens]
        elif config.eval_cache is not None:
            eval_cache = harvest.ActivationCache(config.eval_cache)
            if main:
                eval_x = _first_rows(
                    eval_cache.iter_batches(4096, shuffle=False), config.eval_tokens
                )
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
                eval_x = _first_rows(ev.iter_batches(4096, config.progress), config.eval_tokens)
        return _Data(source, eval_x, held_out, provenance)

    per_rank = None if config.harvest_tokens is None else max(1, config.harvest_tokens // world)
    train_cfg = _harvest_config(
        config, holdout="train", rank=rank, world_size=world, max_tokens=per_rank
    )
    harvester = harvest.Harvester(train_cfg)  # loads the LM; bad layer/hook point raise here
    provenance = {
        "base_model": train_cfg.identity()["model"],
        "layer": config.layer,
        "hook_point": config.hook_point,
        "dataset": harvest.dataset_name(config.dataset),
        "context_length": config.context_length,
    }
    eval_x = None
    if eval_data is not None:
        eval_x = torch.as_tensor(eval_data, dtype=torch.float32)[: config.eval_tokens]
    elif config.eval_cache is not None:
        if main:
            eval_cache = harvest.ActivationCache(config.eval_cache)
            eval_x = _first_rows(eval_cache.iter_batches(4096, shuffle=False), config.eval_tokens)
    elif main:
        eval_cfg = _harvest_config(
            config, holdout="eval", max_tokens=config.eval_tokens, shuffle_buffer=0
        )
        ev = harvest.Harvester(eval_cfg)
        eval_x = _first_rows(ev.iter_batches(4096, config.progress), config.eval_tokens)
    progress = config.progress and accelerator.is_main_process
    source = LiveSource(harvester, local_batch, config.memory_tokens, config.seed, progress)
    return _Data(source, eval_x, True, provenance)


def _tensor_data(config, data, eval_data, rank, world) -> _Data:
    x = torch.as_tensor(data, dtype=torch.float32)
    if x.ndim != 2:
        raise ValueError(f"training data must be a [tokens, d_in] tensor; got {tuple(x.shape)}")
    if eval_data is None:
        if len(x) < config.eval_tokens + config.batch_size:
            raise ValueError(
                f"the training tensor has {len(x)} rows: too few to hold out eval_tokens="
                f"{config.eval_tokens} and still train on one batch ({config.batch_size}); "
                "pass eval_data or lower eval_tokens"
            )
        x, eval_x = x[: -config.eval_tokens], x[-config.eval_tokens :]
    else:
        eval_x = torch.as_tensor(eval_data, dtype=torch.float32)[: config.eval_tokens]
    provenance = {
        "base_model": config.model,
        "layer": config.layer,
        "hook_point": config.hook_point,
        "dataset": config.dataset,
        "context_length": config.context_length,
    }
    return _Data(
        TensorSource(x, config.batch_size, rank, world, config.seed), eval_x, True, provenance
    )


# --------------------------------------------------------------------------------------------
# The run folder


def _check_run_dir(config: TrainConfig) -> tuple[bool, bool]:
    """Check --output before any work; returns (continue from a checkpoint, delete it first).

    Read-only, so every process can run it; only the main process deletes.
    """
    run = Path(config.output)
    saved = run / TRAINING_CONFIG
    if run.exists() and not run.is_dir():
        raise ValueError(f"--output {run} is a file; give a folder")
    if not run.exists() or not any(run.iterdir()):
        return False, False
    if not saved.is_file():
        raise ValueError(
            f"--output {run} is not empty and holds no hf-topafa run ({TRAINING_CONFIG} missing); "
            "choose an empty or new folder"
        )
    if config.overwrite:
        return False, True
    differences = _config_differences(json.loads(saved.read_text(encoding="utf-8")), config)
    if differences:
        hint = "" if config.resume else " Pass --overwrite to replace it."
        raise ValueError(
            f"--output {run} holds a different run ({'; '.join(differences)}). "
            f"Choose another --output.{hint}"
        )
    return True, False


def _config_differences(saved: dict, config: TrainConfig) -> list[str]:
    current = dataclasses.asdict(config)
    current["dead_tokens_threshold"] = config.resolved_dead_threshold()
    out = []
    for key, value in current.items():
        if key in RUN_CONTROL:
            continue
        if key in ("model", "layer", "hook_point", "dataset", "context_length") and saved.get(
            "activation_cache"
        ):
            continue  # taken from the cache's manifest
        if key == "d_sae" and value is None:
            continue
        if saved.get(key) != value:
            out.append(f"{key}: saved {saved.get(key)!r}, now {value!r}")
    return out


# --------------------------------------------------------------------------------------------
# Training


def lr_factor(step: int, total: int, warmup_fraction: float, decay_fraction: float) -> float:
    """Linear warmup over the first steps, constant, linear decay to 0 over the last steps."""
    warmup = int(total * warmup_fraction)
    decay = int(total * decay_fraction)
    if warmup and step < warmup:
        return (step + 1) / warmup
    if decay and step >= total - decay:
        return max(0.0, (total - step) / decay)
    return 1.0


def train(
    config: TrainConfig,
    data: torch.Tensor | str | os.PathLike | None = None,
    eval_data: torch.Tensor | None = None,
) -> Path:
    """Train an SAE as ``config`` says and return the run folder.

    ``data``: an in-memory [tokens, d_in] tensor, or an activation-cache folder; None follows
    ``config`` (``activation_cache``, else live harvesting). ``eval_data``: held-out rows; by
    default the last ``eval_tokens`` rows of a tensor, the held-out windows otherwise.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    started = time.perf_counter()
    config = dataclasses.replace(config)  # __post_init__ validates a hand-made config too
    if isinstance(data, str | os.PathLike):
        config.activation_cache, data = os.fspath(data), None
    mixed = config.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() else "no"
    run = Path(config.output)
    tracker = _tracker_name(config.log_with)
    accelerator = Accelerator(
        mixed_precision=mixed,
        cpu=not torch.cuda.is_available(),
        log_with=tracker,
        project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs")),
    )
    is_main, world = accelerator.is_main_process, accelerator.num_processes
    if config.batch_size % world:
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by the number of processes ({world})"
        )
    resuming, delete = _check_run_dir(config)
    found = _intact_checkpoint(run, config, resuming, is_main)
    accelerator.wait_for_everyone()
    if is_main and delete:
        shutil.rmtree(run)
    if is_main and resuming and not config.resume:
        print(f"note: {run} holds this same run; continuing it (--overwrite starts again)")
    accelerator.wait_for_everyone()

    data_ = _build_data(config, data, eval_data, accelerator, config.batch_size // world)
    sae_config = SAEConfig(
        d_in=data_.source.d_in,
        d_sae=config.d_sae,
        expansion_factor=config.expansion_factor,
        activation=config.activation,
        k=config.k,
        afa_coef=config.afa_coef,
        aux_k=config.aux_k,
        aux_coef=config.aux_coef,
        dead_tokens_threshold=config.resolved_dead_threshold(),
        l1_coef=config.l1_coef,
        l0_coef=config.l0_coef,
        jumprelu_init_threshold=config.jumprelu_init_threshold,
        jumprelu_bandwidth=config.jumprelu_bandwidth,
        input_normalization=config.input_normalization,
        loss_convention=config.loss_convention,
        encoder_bias=config.encoder_bias,
        init=config.init,
        batchtopk_threshold_momentum=config.batchtopk_threshold_momentum,
        **data_.provenance,
    )
    config.d_sae = sae_config.d_sae
    for key in ("layer", "hook_point", "context_length"):
        if data_.provenance[key] is not None:
            setattr(config, key, data_.provenance[key])
    resolved = {
        **dataclasses.asdict(config),
        "dead_tokens_threshold": sae_config.dead_tokens_threshold,
    }
    if is_main:
        print(_plan(config, sae_config, data_, world), flush=True)
        run.mkdir(parents=True, exist_ok=True)
        clean_temporaries(run)
        if not resuming:
            atomic_write_json(run / TRAINING_CONFIG, resolved)

    set_seed(config.seed)
    sae = SparseAutoencoder(sae_config)
    sae.reset_parameters(seed=config.seed)
    sae.to(accelerator.device)
    optimizer = torch.optim.Adam(
        sae.parameters(),
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        fused=True,  # one kernel for the whole update: several times faster on CPU and GPU
    )
    total_steps = config.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, total_steps, config.warmup_fraction, config.decay_fraction),
    )
    state = {"step": 0, "tokens": 0, "positions": [[0, 0]] * world, "train_seconds": 0.0}
    since_fired = torch.zeros(sae_config.d_sae, dtype=torch.long, device=accelerator.device)
    checkpoint = found[0] if found else None
    if checkpoint is not None:
        model_state, optim_state, tensors, state = found[1]
        if len(state["positions"]) != world:
            raise ValueError(
                f"{checkpoint} was written by {len(state['positions'])} processes; resume it "
                f"with the same number (now {world})"
            )
        sae.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        scheduler.load_state_dict(state.pop("scheduler"))
        since_fired = tensors["since_fired"].to(accelerator.device)
        for name, value in state.pop("model_runtime", {}).items():
            setattr(sae, name, value)
        if is_main:
            print(f"resuming from {checkpoint} (step {state['step']} of {total_steps})")
    elif resuming and is_main:
        print(f"note: {run} has no checkpoint yet; starting from step 0")

    model, optimizer = accelerator.prepare(sae, optimizer)
    sae = accelerator.unwrap_model(model)
    if tracker is not None:
        flat = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in resolved.items()
        }
        accelerator.init_trackers("hf-topafa", config=flat, init_kwargs=_tracker_kwargs(run))

    batches = _batches(data_.source, state["positions"][accelerator.process_index])
    if state["step"] == 0 and config.decoder_bias_init == "mean":
        first, position = next(batches)
        _init_decoder_bias(sae, first.to(accelerator.device), accelerator)
        batches = _chain_first(first, position, batches)

    bar = _progress(config, accelerator, total_steps, state["step"])
    loop_started = time.perf_counter()
    step = state["step"]
    threshold = sae_config.dead_tokens_threshold
    logged: dict[str, float] = {}
    model.train()
    while step < total_steps:
        x, position = next(batches)
        x = x.to(accelerator.device, non_blocking=True)
        dead = since_fired >= threshold
        out = model(x, dead_mask=dead)
        loss = out.loss if world == 1 else _global_norm_loss(out, x, sae, accelerator)
        accelerator.backward(loss)
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        # the paper's order: project the radial gradient out, renormalize the rows, then step
        sae.remove_gradient_parallel_to_decoder_directions()
        sae.set_decoder_norm_to_unit_norm()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

        fired = (out.feature_acts.detach() != 0).any(0).to(torch.long)
        if world > 1:
            fired = accelerator.reduce(fired, "sum")
        since_fired += config.batch_size
        since_fired[fired > 0] = 0
        step += 1
        state["positions"][accelerator.process_index] = position

        if step % config.log_every == 0 or step == total_steps:
            logged = _log_step(accelerator, out, dead, step, scheduler, config)
            if bar is not None:
                bar.set_postfix(
                    loss=f"{logged['train/loss']:.4f}",
                    L0=f"{logged['train/l0']:.1f}",
                    nmse=f"{logged['train/normalized_mse']:.4f}",
                    dead=int(logged["train/dead_features"]),
                    refresh=False,
                )
        if bar is not None:
            bar.update(1)
        if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == total_steps):
            state.update(step=step, tokens=step * config.batch_size)
            state["train_seconds"] += time.perf_counter() - loop_started
            loop_started = time.perf_counter()
            _save(accelerator, run, sae, optimizer, scheduler, since_fired, state, config)
    if bar is not None:
        bar.close()
    state["train_seconds"] += time.perf_counter() - loop_started
    replica_gap = _replica_gap(sae, accelerator) if world > 1 else 0.0

    if is_main:
        eval_x = data_.eval_x.to(accelerator.device)
        top, diagnostics = held_out_metrics(sae, eval_x)
        metrics = {
            "tokens_trained": step * config.batch_size,
            "steps": step,
            "world_size": world,
            "wall_time_s": round(time.perf_counter() - started, 2),
            "train_time_s": round(state["train_seconds"], 2),
            "dead_features": int((since_fired >= threshold).sum()),
            "dead_tokens_threshold": threshold,
            "final_train_loss": logged.get("train/loss"),
            "held_out": data_.held_out,
            "replica_max_abs_diff": replica_gap,
            **top,
        }
        _save_final(run, sae, metrics, diagnostics, config)
        accelerator.log({f"final/{k}": v for k, v in metrics.items() if _number(v)}, step=step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run


def _plan(config: TrainConfig, sae_config: SAEConfig, data_: _Data, world: int) -> str:
    source = data_.source
    if isinstance(source, LiveSource):
        limit = "all" if config.harvest_tokens is None else f"up to {config.harvest_tokens:,}"
        reads = f"live harvest of {limit} tokens per pass from {sae_config.dataset}"
    elif isinstance(source, CacheSource):
        reads = f"activation cache {config.activation_cache}"
    else:
        reads = f"an in-memory tensor of {len(source.x):,} tokens"
    return (
        f"training a {sae_config.activation} SAE ({sae_config.d_in} -> {sae_config.d_sae}) on "
        f"{sae_config.base_model} layer {sae_config.layer} {sae_config.hook_point}: "
        f"{config.steps} steps x {config.batch_size} tokens on {world} process(es); data: {reads}; "
        f"held-out: {config.eval_tokens:,} tokens; run folder: {config.output}"
    )


def _batches(source, position: list[int]) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Endless batches with their position [pass, batches read in it]; skips to ``position``."""
    epoch, skip = position
    while True:
        count, produced = 0, False
        for batch in source.epoch(epoch):
            count += 1
            if count <= skip:
                continue
            produced = True
            yield batch, [epoch, count]
        if not produced and skip == 0:
            raise ValueError(
                "the training data gave no full batch in a pass; lower --batch-size or give more "
                "data"
            )
        epoch, skip = epoch + 1, 0


def _chain_first(first, position, rest):
    yield first, position
    yield from rest


@torch.no_grad()
def _init_decoder_bias(sae, x: torch.Tensor, accelerator) -> None:
    """b_dec = the mean (in the SAE's input space) of the first batch, over all processes."""
    x_n, _, _ = sae.normalize_input(x.to(sae.W_dec.dtype))
    mean = x_n.mean(0)
    if accelerator.num_processes > 1:
        mean = accelerator.reduce(mean, "mean")
    sae.b_dec.copy_(mean)


def _global_norm_loss(out, x, sae, accelerator) -> torch.Tensor:
    """Re-weight this process's loss terms so that DDP's gradient average equals the gradient of
    one process on the whole global batch.

    Each term is divided by a batch statistic (``SAEOutput.loss_scale`` and ``aux_scale``: a sum
    or mean of squares, or 1 on standardized inputs under the paper's convention); multiplying
    a term by local / mean-over-processes of its divisor turns the average of ratios into the
    global ratio. The sparsity terms are token means already.
    """
    with torch.no_grad():
        local = torch.stack([out.loss_scale.float(), out.aux_scale.float()]).clamp_min(1e-12)
        weight = local / accelerator.reduce(local.clone(), "mean")
    cfg = sae.config
    return (
        out.loss
        + (weight[0] - 1) * (out.mse_loss + cfg.afa_coef * out.afa_loss)
        + (weight[1] - 1) * cfg.aux_coef * out.aux_loss
    )


@torch.no_grad()
def _replica_gap(sae, accelerator) -> float:
    """Largest difference between processes of per-parameter sums and sums of squares (DDP check)."""
    stats = torch.stack(
        [s for p in sae.parameters() for s in (p.double().sum(), p.double().pow(2).sum())]
    )
    gathered = accelerator.gather(stats.unsqueeze(0))
    return (gathered - gathered[0]).abs().max().item()


def _log_step(accelerator, out, dead, step, scheduler, config) -> dict[str, float]:
    values = torch.stack(
        [
            out.loss.detach().float(),
            out.mse_loss.detach().float(),
            out.afa_loss.detach().float(),
            out.aux_loss.detach().float(),
            out.l0.detach().float().mean(),
            (
                out.k.detach().float().mean()
                if out.k is not None
                else out.l0.detach().float().mean()
            ),
        ]
    )
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, "mean")
    loss, mse, afa_loss, aux, l0, k = values.tolist()
    logged = {
        "train/loss": loss,
        "train/normalized_mse": mse,
        "train/afa_loss": afa_loss,
        "train/aux_loss": aux,
        "train/l0": l0,
        "train/k": k,
        "train/dead_features": float(dead.sum()),
        "train/lr": scheduler.get_last_lr()[0],
        "train/tokens": float(step * config.batch_size),
    }
    accelerator.log(logged, step=step)
    return logged


def _save(accelerator, run, sae, optimizer, scheduler, since_fired, state, config) -> None:
    """Gather every process's data position, then the main process writes the checkpoint."""
    if accelerator.num_processes > 1:
        mine = torch.tensor(
            state["positions"][accelerator.process_index], device=since_fired.device
        )
        state["positions"] = accelerator.gather(mine.unsqueeze(0)).tolist()
    if accelerator.is_main_process:
        save_checkpoint(
            run,
            state["step"],
            sae.state_dict(),
            optimizer.state_dict(),
            {"since_fired": since_fired},
            {**state, "scheduler": scheduler.state_dict(), "model_runtime": _runtime_state(sae)},
            keep=config.keep_checkpoints,
        )
    accelerator.wait_for_everyone()


# Plain attributes of the SAE, outside its state dict, that its forward pass reads and updates.
# Top-AFA's candidate count picks the code path and so the float rounding, which top-AFA's
# nearest-norm choice can amplify; a checkpoint keeps it so a resumed run matches a straight one.
_RUNTIME_ATTRIBUTES = ("_topafa_candidates",)


def _runtime_state(sae) -> dict:
    return {name: getattr(sae, name) for name in _RUNTIME_ATTRIBUTES if hasattr(sae, name)}


def _progress(config, accelerator, total, done):
    if not (config.progress and accelerator.is_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", dynamic_ncols=True)


def _tracker_name(choice: str) -> str | None:
    """auto: TensorBoard when it is installed (local files, no account), else no tracker."""
    if choice == "auto":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return None
        return "tensorboard"
    return None if choice == "none" else choice


def _tracker_kwargs(run: Path) -> dict:
    name = run.resolve().name
    return {"trackio": {"name": name}, "wandb": {"name": name}}


# --------------------------------------------------------------------------------------------
# Held-out evaluation and the final folder


def held_out_metrics(sae, eval_x: torch.Tensor) -> tuple[dict, dict]:
    """Top-level figures for metrics.json, the full evaluation block, and the ZF diagnostics.

    ``normalized_mse`` is the paper's per-token mean of ||x - x_hat||^2 / ||x||^2, as in
    ``hf-topafa evaluate``; ``total_normalized_mse`` is sum ||x - x_hat||^2 / sum ||x||^2.
    """
    from .evaluate import evaluate_activations

    ev, details = evaluate_activations(sae, eval_x, device=str(eval_x.device))
    rec, sparsity, afa_block = ev["reconstruction"], ev["sparsity"], ev["afa"]
    top = {
        "eval_tokens": ev["num_tokens"],
        "l0_mean": sparsity["l0_mean"],
        "normalized_mse": rec["normalized_mse"],
        "total_normalized_mse": rec["total_normalized_mse"],
        "fvu": rec["fvu"],
        "eps_lbo_quartiles": [afa_block["eps_lbo_quartiles"][q] for q in ("q25", "q50", "q75")],
        "dead_features_held_out": sparsity["dead_features"],
    }
    if "k_quantiles" in sparsity:
        top["k_mean"] = sparsity["k_mean"]
        top["k_quantiles"] = sparsity["k_quantiles"]
    top["evaluation"] = ev
    return top, details.diagnostics()


def _save_final(run: Path, sae, metrics: dict, diagnostics: dict, config: TrainConfig) -> None:
    """save_pretrained into a temporary folder and move the files in; then metrics and the plot."""
    tmp = run / f".final-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save_pretrained(tmp)
    for item in tmp.iterdir():
        item.chmod(0o644)
        os.replace(item, run / item.name)
    tmp.rmdir()
    from .evaluate import to_json

    atomic_write_json(run / METRICS, to_json(metrics))
    try:
        from . import plots

        cfg = sae.config
        title = f"{cfg.activation} SAE, {cfg.base_model} layer {cfg.layer} {cfg.hook_point}"
        plots.save_zf_plot(diagnostics, run / ZF_PLOT, title)
    except ImportError as err:
        print(f"note: the ZF plot was skipped ({err}). Install matplotlib with: {PLOT_HINT}")


def summary(run: str | os.PathLike) -> str:
    """The final figures and where each file of the run folder is."""
    run = Path(run).resolve()
    m = json.loads((run / METRICS).read_text(encoding="utf-8"))
    q = ", ".join("inf" if v is None else f"{v:.4g}" for v in m["eps_lbo_quartiles"])
    lines = [
        f"trained {m['tokens_trained']:,} tokens in {m['steps']} steps "
        f"({m['wall_time_s']:.0f} s wall)",
        f"held-out ({m['eval_tokens']} tokens): L0 {m['l0_mean']:.2f}, normalized MSE "
        f"{m['normalized_mse']:.4f}, FVU {m['fvu']:.4f}, eps_LBO quartiles [{q}], "
        f"dead features {m['dead_features']}",
    ]
    if "k_quantiles" in m:
        kq = m["k_quantiles"]
        lines.append(f"top-AFA k: median {kq['q50']:.0f} (5%-95%: {kq['q05']:.0f}-{kq['q95']:.0f})")
    lines.append("files:")
    for name, what in (
        ("config.json", "SAE configuration"),
        ("model.safetensors", "SAE weights"),
        (METRICS, "final metrics"),
        (ZF_PLOT, "ZF plot of held-out tokens"),
        (TRAINING_CONFIG, "resolved training configuration"),
    ):
        path = run / name
        lines.append(f"  {what:32s} {path}" + ("" if path.exists() else "  (missing)"))
    return "\n".join(lines)


def _intact_checkpoint(run: Path, config: TrainConfig, resuming: bool, is_main: bool):
    """The newest loadable checkpoint of the run, or None; refuses a resume with nothing to
    resume and a restart that would overwrite a finished run."""
    if not resuming:
        if config.resume:
            raise ValueError(
                f"--resume: {run} holds no run to resume (missing or empty); drop --resume to "
                "start a new run there"
            )
        return None
    found = load_latest_intact(run, on_skip=lambda m: is_main and print(f"warning: {m}"))
    if found is None and config.resume:
        raise ValueError(
            f"--resume: {run} has no intact checkpoint to resume; drop --resume to start this "
            "run again from step 0, or pass --overwrite"
        )
    if found is None and (run / METRICS).is_file():
        raise ValueError(
            f"{run} holds a finished run and no intact checkpoint; it was left as it is. Pass "
            "--overwrite to train it again, or choose another --output"
        )
    return found


def cli_main(argv: list[str]) -> int:
    """``hf-topafa train``: parse, train, print the figures and the files' locations."""
    from .cli import debug_requested, run_guarded  # one line per known problem, exit status 2

    return run_guarded(_train_command, argv, debug_requested(argv))


def _train_command(argv: list[str]) -> int:
    try:
        config = parse_config(argv)
    except ValueError as err:  # FileNotFoundError (--config) already names its file
        raise ValueError(f"train: {err} (see `hf-topafa train --help`)") from err
    run = train(config)  # errors: one line each from hf_topafa.cli
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary(run))
    return 0


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
