"""The training configuration (``training_config.json``) and its command line and file parsing.

``TrainConfig`` validates itself; ``hf-topafa train``'s flags are generated from its fields by
``HfArgumentParser``, and ``--config FILE`` (YAML or JSON) sets the same fields. The module
imports no torch, so that a bad flag answers before the training code loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import rules
from .helpers import is_finite_number as _number
from .helpers import require_nonnegative_int, require_positive_int, require_positive_number
from .names import (
    DEFAULT_HOOK_POINT,
    DEFAULT_LAYER,
    DEFAULT_MODEL,
    HOOK_POINTS,
    MANIFEST,
)
from .rules import ACTIVATIONS, get_rule
from .sources import dataset_looks_local

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
        DEFAULT_MODEL,
        "Hub id or folder of a causal LM, or a .gguf file; the default is the offline SmolLM2 copy.",
    )
    gguf_file: str | None = _arg(None, "GGUF file name inside --model (a folder or Hub repo).")
    layer: int = _arg(DEFAULT_LAYER, "Decoder block to read, 0-based.")
    hook_point: Literal["resid_pre", "resid_post", "mlp_out", "attn_out"] = _arg(
        DEFAULT_HOOK_POINT, "Where in the block the activations are read."
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
    activation: str = _arg("topafa", "Sparse activation rule.", choices=ACTIVATIONS)
    expansion_factor: float = _arg(
        8.0, "d_sae = d_in * expansion_factor when --d-sae is not given."
    )
    d_sae: int | None = _arg(None, "Number of features.")
    k: int | None = _arg(
        None, f"Features kept per token (required for {' and '.join(rules.NEEDS_K)})."
    )
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
        None,
        f"Train an encoder bias; default: yes for {'/'.join(rules.ENCODER_BIAS)}, no else "
        "(the paper's k-selecting encoders have none).",
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
    progress: bool = _arg(True, "Progress bars (--no_progress hides them).")

    def __post_init__(self):
        for name in ("max_tokens", "batch_size", "context_length", "eval_tokens", "holdout_every"):
            require_positive_int(name, getattr(self, name))
        for name in ("harvest_batch_windows", "aux_k", "keep_checkpoints", "log_every"):
            require_positive_int(name, getattr(self, name))
        for name in ("memory_tokens", "shuffle_buffer", "checkpoint_every", "seed"):
            require_nonnegative_int(name, getattr(self, name))
        if get_rule(self.activation).needs_k and self.k is None:
            raise ValueError(
                f"--activation {self.activation} needs --k (features kept per token), e.g. --k 32"
            )
        if self.hook_point not in HOOK_POINTS:
            raise ValueError(
                f"hook_point must be one of {', '.join(HOOK_POINTS)}; got {self.hook_point!r}"
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
                require_positive_int(name, getattr(self, name))
        for name in ("lr", "adam_eps"):
            require_positive_number(name, getattr(self, name))
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
        if self.dataset is not None and dataset_looks_local(self.dataset):
            path = Path(self.dataset).expanduser()
            if not path.exists():
                raise FileNotFoundError(
                    f"dataset not found: {path} (give an existing .txt/.jsonl/.json/.parquet/.csv "
                    "file or folder, a Hub dataset id, or leave --dataset out for the bundled sample)"
                )
        for name in ("activation_cache", "eval_cache"):
            value = getattr(self, name)
            if value is not None and not (Path(value).expanduser() / MANIFEST).is_file():
                raise FileNotFoundError(
                    f"--{name.replace('_', '-')} {value}: no activation cache there (missing "
                    f"{MANIFEST}); write one with `hf-topafa harvest --output DIR`"
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
    # the parsed TrainConfig, a namespace holding --config, and any unknown arguments
    config, _extra, unknown = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
    return config


def parse_command(argv: list[str]) -> tuple[TrainConfig]:
    """``hf-topafa train``'s arguments, checked before torch loads (for
    ``hf_topafa.train.run_command``)."""
    try:
        return (parse_config(argv),)
    except ValueError as err:  # FileNotFoundError (--config) already names its file
        raise ValueError(f"train: {err} (see `hf-topafa train --help`)") from err
