"""The training configuration (``training_config.json``) and its command line and file parsing.

``TrainConfig`` composes four sections, each a dataclass that validates itself: ``data``
(``DataArgs``), ``sae`` (``SAESettings``, the SAE's own hyperparameters), ``optim``
(``OptimArgs``) and ``run`` (``RunArgs``). ``hf-topafa train``'s flags are generated from the
sections' fields by ``cli_args.DataclassParser``, like every other command's (field names are
unique over the sections, so each flag keeps its flat name), and ``--config FILE`` (YAML or
JSON, flat or by section) sets the same fields. The module imports no torch, so that a bad flag
answers before the training code loads.
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

from ..cli.cli_args import DataclassParser
from ..cli.cli_args import arg as _arg
from ..helpers import is_finite_number as _number
from ..helpers import require_nonnegative_int, require_positive_int, require_positive_number
from ..names import (
    DEFAULT_HOOK_POINT,
    DEFAULT_LAYER,
    DEFAULT_MODEL,
    HOOK_POINTS,
    MANIFEST,
)
from ..sae.sae_settings import SAESettings
from ..sources import dataset_looks_local

DEFAULT_OUTPUT = "runs/smollm2-topafa"

TRAINING_CONFIG = "training_config.json"

METRICS = "metrics.json"

ZF_PLOT = "zf_plot.png"

PLOT_HINT = 'pip install "hf-topafa[plot]"'


@dataclass
class DataArgs:
    """Where the activations come from: the language model, its layer and hook point, the text,
    and the held-out split."""

    _argument_group_name = "data"  # a heading of `hf-topafa train --help`

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
    synthetic: str | None = _arg(
        None,
        "Train on samples drawn while training from this synthetic world (a preset such as "
        "synthsaebench-16k, a saved folder or a JSON config; needs the synth extra), on the "
        "training device: no cache, for budgets a disk cannot hold.",
    )
    holdout_every: int = _arg(
        10, "Every holdout_every-th window is held out for evaluation and never trained on."
    )
    eval_tokens: int = _arg(2048, "Held-out tokens for the final metrics and ZF plot.")
    lm_dtype: Literal["float32", "bfloat16", "float16"] = _arg(
        "float32",
        "Dtype of the language model when harvesting live (lm_dtype in a config file).",
        flag="--dtype",
        aliases=("--lm-dtype",),
    )
    harvest_batch_windows: int = _arg(8, "Windows per language-model forward when harvesting.")
    shuffle_buffer: int = _arg(32768, "Tokens in the live harvester's shuffling buffer.")
    harvest_tokens: int | None = _arg(
        20_480,
        "Live harvesting: tokens read from the dataset per pass, over all processes (null in a "
        "config file: the whole dataset). The default suits the quick CPU demo, whose passes "
        "are replayed from memory; raise it for real runs.",
    )
    memory_tokens: int = _arg(
        2_000_000,
        "Live harvesting: when a pass over the dataset yields at most this many tokens, keep them "
        "in memory and replay them (reshuffled) in later passes instead of re-running the LM.",
    )

    def __post_init__(self):
        for name in ("context_length", "eval_tokens", "holdout_every", "harvest_batch_windows"):
            require_positive_int(name, getattr(self, name))
        for name in ("memory_tokens", "shuffle_buffer"):
            require_nonnegative_int(name, getattr(self, name))
        if self.harvest_tokens is not None:
            require_positive_int("harvest_tokens", self.harvest_tokens)
        if self.hook_point not in HOOK_POINTS:
            raise ValueError(
                f"hook_point must be one of {', '.join(HOOK_POINTS)}; got {self.hook_point!r}"
            )
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer must be an integer >= 0; got {self.layer!r}")
        if self.dataset is not None and dataset_looks_local(self.dataset):
            path = Path(self.dataset).expanduser()
            if not path.exists():
                raise FileNotFoundError(
                    f"dataset not found: {path} (give an existing .txt/.jsonl/.json/.parquet/.csv "
                    "file or folder, a Hub dataset id, or leave --dataset out for the bundled sample)"
                )
        if self.synthetic is not None and self.activation_cache is not None:
            raise ValueError(
                "give --synthetic WORLD or --activation-cache DIR, not both: one is the data"
            )
        for name in ("activation_cache", "eval_cache"):
            value = getattr(self, name)
            if value is not None and not (Path(value).expanduser() / MANIFEST).is_file():
                raise FileNotFoundError(
                    f"--{name.replace('_', '-')} {value}: no activation cache there (missing "
                    f"{MANIFEST}); write one with `hf-topafa harvest --output DIR`"
                )


@dataclass
class OptimArgs:
    """How long and how the SAE is optimized, and how it starts (seed, decoder bias)."""

    _argument_group_name = "optimization"

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
    decoder_bias_init: Literal["zeros", "mean"] = _arg(
        "zeros", "zeros: b_dec starts at zero (the paper); mean: the first batch's mean."
    )
    init_from: str | None = _arg(
        None,
        "Start from a saved SAE's weights (a run folder or Hub id) instead of a fresh "
        "initialization, less a threshold it estimated or learned: another rule trains on from "
        "a dictionary already learned. Its d_in, d_sae and input normalization must match.",
    )

    def __post_init__(self):
        for name in ("max_tokens", "batch_size"):
            require_positive_int(name, getattr(self, name))
        require_nonnegative_int("seed", self.seed)
        if self.max_tokens < self.batch_size:
            raise ValueError(
                f"max_tokens={self.max_tokens} is less than one batch (batch_size="
                f"{self.batch_size}); raise --max-tokens or lower --batch-size"
            )
        for name in ("lr", "adam_eps"):
            require_positive_number(name, getattr(self, name))
        for name in ("adam_beta1", "adam_beta2"):
            if not (_number(getattr(self, name)) and 0 <= getattr(self, name) < 1):
                raise ValueError(f"{name} must be in [0, 1); got {getattr(self, name)!r}")
        for name in ("warmup_fraction", "decay_fraction"):
            if not (_number(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)!r}")
        if self.init_from is not None and self.decoder_bias_init == "mean":
            raise ValueError(
                "decoder_bias_init mean would overwrite the b_dec of --init-from; pass only one"
            )
        if self.warmup_fraction + self.decay_fraction > 1:
            raise ValueError("warmup_fraction + decay_fraction must be at most 1")
        if not (_number(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ValueError(f"max_grad_norm must be >= 0; got {self.max_grad_norm!r}")
        _require_choice(self, "mixed_precision")
        _require_choice(self, "decoder_bias_init")

    @property
    def steps(self) -> int:
        return self.max_tokens // self.batch_size


@dataclass
class RunArgs:
    """The run folder, checkpoints and logging: what steers a run, not its result (these may
    change when a run is resumed)."""

    _argument_group_name = "the run"

    output: str = _arg(DEFAULT_OUTPUT, "Run folder.")
    resume: bool = _arg(False, "Continue the run in --output from its latest checkpoint.")
    overwrite: bool = _arg(
        False,
        "Delete the run already in --output and start again (without it, a finished run is "
        "left as it is).",
    )
    checkpoint_every: int = _arg(100, "Steps between checkpoints (0: none).")
    keep_checkpoints: int = _arg(2, "Checkpoints kept (the newest).")
    log_every: int = _arg(10, "Steps between metric logs and progress-bar updates.")
    log_with: Literal["auto", "tensorboard", "trackio", "wandb", "none"] = _arg(
        "auto",
        "Metric tracker; auto: TensorBoard if installed (logs in RUN/logs), else none.",
    )
    progress: bool = _arg(True, "Hide the progress bars (progress: false in a config file).")

    def __post_init__(self):
        for name in ("keep_checkpoints", "log_every"):
            require_positive_int(name, getattr(self, name))
        require_nonnegative_int("checkpoint_every", self.checkpoint_every)
        _require_choice(self, "log_with")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other; pass only one")


def _require_choice(section, name: str) -> None:
    """A Literal-typed field holds one of its values."""
    valid = typing.get_args(typing.get_type_hints(type(section))[name])
    if getattr(section, name) not in valid:
        raise ValueError(
            f"{name} must be one of {', '.join(valid)}; got {getattr(section, name)!r}"
        )


# The sections of a training configuration, in training_config.json's order.
SECTIONS = {"data": DataArgs, "sae": SAESettings, "optim": OptimArgs, "run": RunArgs}

# Each field's section (field names are unique over the sections: the command line's flags).
FIELD_SECTION = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}

# Each field's default: what a training_config.json written before the field existed meant.
FIELD_DEFAULTS = {
    f.name: f.default for cls in SECTIONS.values() for f in dataclasses.fields(cls)
    if f.default is not dataclasses.MISSING
}  # fmt: skip


@dataclass
class TrainConfig:
    """Everything a training run depends on, in four sections; saved as ``training_config.json``
    (one object per section) in the run folder.

    ``config.data`` (``DataArgs``), ``config.sae`` (``SAESettings``, the SAE's own
    hyperparameters, which ``SAEConfig.from_settings`` turns into the SAE's config),
    ``config.optim`` (``OptimArgs``) and ``config.run`` (``RunArgs``). Each section validates
    itself; a section may also be given as a dict. ``TrainConfig.from_flat(k=32, lr=1e-3)`` routes
    flat keywords (the command line's names) to their sections.
    """

    data: DataArgs = field(default_factory=DataArgs)
    sae: SAESettings = field(default_factory=SAESettings)
    optim: OptimArgs = field(default_factory=OptimArgs)
    run: RunArgs = field(default_factory=RunArgs)

    def __post_init__(self):
        # Copies, validated again: dataclasses.replace(config) checks a config edited by hand and
        # shares no section with the original.
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                value = cls(**_checked_section(name, value))
            elif isinstance(value, cls):
                value = dataclasses.replace(value)
            else:
                raise TypeError(f"{name} must be {cls.__name__} or a dict; got {value!r}")
            setattr(self, name, value)

    @classmethod
    def from_flat(cls, **fields) -> TrainConfig:
        """A TrainConfig from flat keywords, each a field of one section (``layer=3, k=32``)."""
        sections: dict[str, dict] = {name: {} for name in SECTIONS}
        unknown = sorted(set(fields) - set(FIELD_SECTION))
        if unknown:
            raise ValueError(
                f"unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(FIELD_SECTION)}"
            )
        for key, value in fields.items():
            sections[FIELD_SECTION[key]][key] = value
        return cls(**sections)

    @classmethod
    def from_dict(cls, data: dict, where: str = "training configuration") -> TrainConfig:
        """A TrainConfig from ``training_config.json``'s nested form, or the flat form written
        before the sections existed (or a mix: a config file may use either)."""
        return cls.from_flat(**_flatten(data, where, check=True))

    def to_dict(self) -> dict:
        """The nested form written to ``training_config.json``."""
        return dataclasses.asdict(self)

    def to_flat(self) -> dict:
        """Every field under its flat (command-line) name."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    @property
    def steps(self) -> int:
        return self.optim.steps

    def resolved_dead_threshold(self) -> int:
        """The SAE's dead-feature threshold in tokens: as set, else five global batches."""
        if self.sae.dead_tokens_threshold is not None:
            return self.sae.dead_tokens_threshold
        return 5 * self.optim.batch_size


def _checked_section(name: str, values: dict) -> dict:
    valid = [f.name for f in dataclasses.fields(SECTIONS[name])]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(unknown)} in section {name}; valid: {', '.join(valid)}"
        )
    return values


def _flatten(data: dict, where: str, check: bool) -> dict:
    """One flat mapping from a nested (sections) or flat configuration mapping."""
    flat: dict = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            items = (_checked_section(key, value) if check else value).items()
        else:
            items = [(key, value)]
        for name, item in items:
            if name in flat:
                raise ValueError(f"{where}: {name} is given twice")
            flat[name] = item
    return flat


def flat_training_config(data: dict) -> dict:
    """A saved ``training_config.json`` (nested, or flat as written before the sections) as one
    flat mapping of field names; unknown keys are kept, nothing is validated."""
    return _flatten(data, "training_config.json", check=False)


# Fields that may change between a run and its resumption (the run section): they steer the run,
# not its result.
RUN_CONTROL = tuple(f.name for f in dataclasses.fields(RunArgs))


DESCRIPTION = (
    "Train a sparse autoencoder on a language model's activations. Without arguments: a top-AFA "
    "SAE on SmolLM2-135M-Instruct, layer 15, the bundled corpus sample."
)


def build_parser() -> DataclassParser:
    """``hf-topafa train``'s parser: one flag per field of every section, under its heading."""
    parser = DataclassParser(*SECTIONS.values(), prog="hf-topafa train", description=DESCRIPTION)
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or JSON file of TrainConfig fields, flat (lr: 1e-3) or by section "
        "(optim: {lr: 1e-3}), such as a run's training_config.json; flags override",
    )
    return parser


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON mapping of TrainConfig fields, flat or by section, as one flat
    mapping; unknown keys are an error."""
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
    flat = _flatten(data, str(path), check=True)
    unknown = sorted(set(flat) - set(FIELD_SECTION))
    if unknown:
        raise ValueError(
            f"{path}: unknown field(s) {', '.join(unknown)}; valid fields: "
            f"{', '.join(FIELD_SECTION)}"
        )
    return {key: _coerce(key, value) for key, value in flat.items()}


def _coerce(name: str, value):
    """YAML reads 3e-4 as a string: turn strings into the field's number or bool type."""
    if not isinstance(value, str):
        return value
    hint = typing.get_type_hints(SECTIONS[FIELD_SECTION[name]])[name]
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    try:
        if kinds[0] is int:
            return int(value)
        if kinds[0] is float:
            return float(value)
    except ValueError as err:
        raise ValueError(f"{name} must be a number; got {value!r}") from err
    if kinds[0] is bool:
        if value.lower() in ("true", "yes", "1"):
            return True
        if value.lower() in ("false", "no", "0"):
            return False
        raise ValueError(f"{name} must be true or false; got {value!r}")
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
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
    return TrainConfig(*parser.dataclasses_from(namespace))


def parse_command(argv: list[str]) -> tuple[TrainConfig]:
    """``hf-topafa train``'s arguments, checked before torch loads (for
    ``hf_topafa.train.run_command``)."""
    try:
        return (parse_config(argv),)
    except ValueError as err:  # FileNotFoundError (--config) already names its file
        raise ValueError(f"train: {err} (see `hf-topafa train --help`)") from err
