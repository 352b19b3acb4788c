"""``hf-topafa features``' command line, without torch.

The text is read exactly as ``harvest`` reads it, so the options are ``HarvestConfig``'s own
fields (with this command's defaults) plus ``FeaturesOptions``; the layer and hook point come
from the SAE. Bad values fail before ``hf_topafa.features`` (torch) is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cli.cli_args import DataclassParser, arg
from ..data.harvest_config import HarvestConfig

DEFAULT_CONTEXT = 64  # short windows keep examples readable and the files small
# HarvestConfig fields that are options of this command, and their defaults here
TEXT_FIELDS = (
    "dataset",
    "dataset_config",
    "text_column",
    "split",
    "gguf_file",
    "max_tokens",
    "context_length",
    "batch_windows",
    "holdout",
    "device",
)
DEFAULTS = {"max_tokens": 100_000, "context_length": DEFAULT_CONTEXT, "batch_windows": 32}
# help of a HarvestConfig field whose text there describes harvest's default
HELPS = {"max_tokens": "stop after this many kept tokens"}


@dataclass
class FeaturesOptions:
    """Which SAE, what to keep per feature, and where to write."""

    sae: str = arg(help="saved SAE folder, Hub id or FORMAT:SOURCE", positional=True, metavar="RUN")
    output: str = arg(help="folder for the parquet files", metavar="DIR")
    model: str | None = arg(None, "language model; unset: the SAE's base_model")
    top: int = arg(20, "examples kept per feature")
    logits: int = arg(10, "top/bottom logit tokens per feature")

    def __post_init__(self):
        for name, what in (("top", "examples per feature"), ("logits", "tokens listed")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int ({what}), got {value!r}")


def build_parser() -> DataclassParser:
    return DataclassParser(
        FeaturesOptions,
        HarvestConfig,
        only={HarvestConfig: TEXT_FIELDS},
        defaults=DEFAULTS,
        helps=HELPS,
        prog="hf-topafa features",
        description="Top examples, density, histograms and logit effects of every feature.",
    )


def parse_command(argv: list[str]) -> tuple[FeaturesOptions, HarvestConfig]:
    """``hf-topafa features RUN --output DIR``'s arguments, checked before torch loads (for
    ``hf_topafa.features.run_command``)."""
    return build_parser().parse_dataclasses(argv)
