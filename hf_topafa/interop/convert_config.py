"""``hf-topafa convert``'s command line and option checks, without torch.

Everything a typo can break (format, dtype, hook point, an option the format does not take) is
checked here, so that it answers before ``hf_topafa.convert`` imports torch and the readers.
"""

from __future__ import annotations

import argparse

from ..cli.cli_args import CommandParser
from ..names import HOOK_POINTS

FORMATS = ("saelens", "sparsify", "gemma_scope", "dictionary_learning")
EXPORT_FORMATS = ("saelens",)
DTYPE_NAMES = ("float32", "float64", "bfloat16")
PROVENANCE_OVERRIDES = ("base_model", "layer", "hook_point", "dataset", "context_length")
OPTIONS = {
    "dtype": "all formats: parameter dtype of the converted SAE (float32, float64, bfloat16)",
    "norm_scaling_factor": "saelens: the constant of normalize_activations=expected_average_only_in",
    "normalize_decoder": "dictionary_learning AutoEncoder: fold decoder norms like from_pretrained",
}


def check_format(format: str) -> str:
    """The canonical format name; the spellings of READMEs (gemmascope, sae-lens) accepted."""
    fmt = str(format).strip().lower().replace("-", "_")
    fmt = {"gemmascope": "gemma_scope", "sae_lens": "saelens"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {format!r}; valid formats: {', '.join(FORMATS)}")
    return fmt


def check_export_format(format: str) -> str:
    """The canonical name of a format ``--to`` writes."""
    fmt = str(format).strip().lower().replace("-", "_")
    fmt = {"sae_lens": "saelens"}.get(fmt, fmt)
    if fmt not in EXPORT_FORMATS:
        raise ValueError(
            f"unknown format {format!r} for --to; formats written: {', '.join(EXPORT_FORMATS)}"
        )
    return fmt


def split_overrides(fmt: str, overrides: dict, export: bool = False) -> tuple[dict, dict]:
    """Provenance fields and reader options, each checked against the format; ``export``: the
    options of ``--to`` (provenance and dtype), where the readers' options mean nothing."""
    provenance, options = {}, {"reader": {}}
    for name, value in overrides.items():
        if value is None:
            continue
        if export and name not in PROVENANCE_OVERRIDES and name != "dtype":
            raise ValueError(
                f"option {name!r} applies to --from only; --to {fmt} takes provenance "
                f"({', '.join(PROVENANCE_OVERRIDES)}) and dtype"
            )
        if name in PROVENANCE_OVERRIDES:
            provenance[name] = value
        elif name == "dtype":
            if value not in DTYPE_NAMES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}; got {value!r}")
            options["dtype"] = value
        elif name == "norm_scaling_factor" and fmt == "saelens":
            options["reader"][name] = value
        elif name == "normalize_decoder" and fmt == "dictionary_learning":
            options["reader"][name] = bool(value)
        else:
            valid = list(PROVENANCE_OVERRIDES) + list(OPTIONS)
            raise ValueError(
                f"unknown or inapplicable option {name!r} for format {fmt!r}; options: "
                f"{', '.join(valid)} ({'; '.join(f'{k}: {v}' for k, v in OPTIONS.items())})"
            )
    hook = provenance.get("hook_point")
    if hook is not None and hook not in HOOK_POINTS:
        raise ValueError(f"hook_point must be one of {', '.join(HOOK_POINTS)}; got {hook!r}")
    return provenance, options


def _cli_format(text: str) -> str:
    try:
        return check_format(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _cli_export_format(text: str) -> str:
    try:
        return check_export_format(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="hf-topafa convert",
        description="Import an SAE saved by another library as an hf-topafa SAE folder (--from), "
        "or write an hf-topafa SAE in another library's format (--to). Anything the target "
        "cannot express exactly is refused, never approximated.",
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--from",
        dest="format",
        type=_cli_format,
        metavar="{" + ",".join(FORMATS) + "}",
        help="the library that saved SOURCE (gemmascope, gemma-scope, sae_lens also accepted)",
    )
    direction.add_argument(
        "--to",
        dest="to",
        type=_cli_export_format,
        metavar="{" + ",".join(EXPORT_FORMATS) + "}",
        help="write SOURCE, an hf-topafa SAE (run folder or Hub id), as a SAELens folder "
        "(cfg.json + sae_weights.safetensors) that sae_lens.SAE.load_from_disk reads",
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="--from: local folder/file, or owner/repo[/path] on the Hub; --to: an "
        "hf-topafa SAE folder or Hub id",
    )
    parser.add_argument(
        "output",
        metavar="OUTPUT",
        help="folder to write (--from: config.json + model.safetensors; --to saelens: "
        "cfg.json + sae_weights.safetensors)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT")
    parser.add_argument(
        "--dtype",
        choices=list(DTYPE_NAMES),
        help="parameter dtype of what is written (default: float32 for --from, as saved for --to)",
    )
    parser.add_argument("--base-model", help="override the recorded language model id")
    parser.add_argument("--layer", type=int, help="override the recorded block index")
    parser.add_argument("--hook-point", choices=HOOK_POINTS, help="override the hook point")
    parser.add_argument("--dataset", help="override the recorded training dataset")
    parser.add_argument("--context-length", type=int, help="override the recorded context")
    parser.add_argument(
        "--norm-scaling-factor",
        type=float,
        help="saelens expected_average_only_in: the input scale to fold into the weights",
    )
    parser.add_argument(
        "--no-normalize-decoder",
        dest="normalize_decoder",
        action="store_false",
        default=None,
        help="dictionary_learning AutoEncoder: keep decoder norms as saved",
    )
    return parser


def overrides_of(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``hf_topafa.convert.convert`` that the command line sets."""
    names = PROVENANCE_OVERRIDES + tuple(OPTIONS)
    return {name: getattr(args, name) for name in names}


def parse_command(argv: list[str]) -> tuple[argparse.Namespace]:
    """``hf-topafa convert``'s arguments, checked before torch loads; the dispatcher
    (hf_topafa.cli) hands them to ``hf_topafa.convert.run_command``."""
    args = build_parser().parse_args(argv)
    if args.to is not None:
        split_overrides(args.to, overrides_of(args), export=True)
    else:
        split_overrides(args.format, overrides_of(args))
    return (args,)
