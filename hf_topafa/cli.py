"""The `hf-topafa` command: one subcommand per module, imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module that implements it, one-line help). Each module exposes `cli_main(argv)`.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hf_topafa.train", "train an SAE (default: top-AFA on the embedded SmolLM2 model)"),
    "evaluate": ("hf_topafa.evaluate", "reconstruction, sparsity, downstream and AFA diagnostics"),
    "harvest": (
        "hf_topafa.harvest",
        "harvest a language model's activations into an on-disk cache",
    ),
    "convert": ("hf_topafa.convert", "import an SAE saved by SAELens, sparsify, Gemma Scope, ..."),
    "push": ("hf_topafa.hub", "upload a run folder to the Hugging Face Hub with a model card"),
    "bench": (
        "hf_topafa.bench",
        "time the training step against the paper's step and the dense floor",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-topafa",
        description="Top-AFA sparse autoencoders and AFA diagnostics on Hugging Face models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}; valid commands: {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
