"""The `hf-topafa` command: one subcommand per module, imported only when it runs.

Every subcommand fails the same way: a known problem (bad value, missing file or model, absent
optional package) prints one line ``error: ...`` and exits 2; ``--debug`` or
``HF_TOPAFA_DEBUG=1`` shows the traceback instead. This module imports neither torch nor
transformers, so ``--help``, ``--version`` and unknown commands answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback

from .. import __version__

# subcommand -> (module that checks its arguments, module that runs it, one-line help). A
# checking module exposes `parse_command(argv)`, imports no torch, and returns the arguments for
# the running module's `run_command(*arguments)` (or an exit status); the running module is
# imported only after the checks. A subcommand without a separate checking module (None) runs
# its module's `cli_main(argv)`.
COMMANDS: dict[str, tuple[str | None, str, str]] = {
    "train": (
        "hf_topafa.training.train_config",
        "hf_topafa.training.train",
        "train an SAE (default: top-AFA on the embedded SmolLM2 model)",
    ),
    "evaluate": (
        "hf_topafa.evaluation.eval_config",
        "hf_topafa.evaluation.evaluate",
        "reconstruction, sparsity, downstream and AFA diagnostics",
    ),
    "harvest": (
        "hf_topafa.data.harvest_config",
        "hf_topafa.data.harvest",
        "harvest a language model's activations into an on-disk cache",
    ),
    "convert": (
        "hf_topafa.interop.convert_config",
        "hf_topafa.interop.convert",
        "import an SAE saved by SAELens, sparsify, Gemma Scope, ...",
    ),
    "features": (
        "hf_topafa.evaluation.features_config",
        "hf_topafa.evaluation.features",
        "top examples, density, histograms and logit effects of every feature",
    ),
    "agreement": (
        None,
        "hf_topafa.evaluation.agreement",
        "how far SAEs trained from different seeds agree, dictionary to dictionary",
    ),
    "choose-k": (
        None,
        "hf_topafa.training.choose_k",
        "train TopK at several k from two seeds; choose the k whose seeds agree most",
    ),
    "push": (
        "hf_topafa.interop.hub_config",
        "hf_topafa.interop.hub",
        "upload a run folder to the Hugging Face Hub with a model card",
    ),
    "space": (None, "hf_topafa.interop.space", "publish the SAE explorer as a Gradio Space"),
    "bench": (
        "hf_topafa.bench.bench_config",
        "hf_topafa.bench.bench",
        "time the training step against the paper's step and the dense floor",
    ),
}

USAGE_ERROR = 2
DEBUG_ENV = "HF_TOPAFA_DEBUG"
# user-facing problems: a value, a file, a model, a package. Anything else is a bug: traceback.
KNOWN_PROBLEMS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-topafa",
        description="Top-AFA sparse autoencoders and AFA diagnostics on Hugging Face models.",
        epilog=f"Add --debug (or set {DEBUG_ENV}=1) to any command to see tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"hf-topafa {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def one_line(err: BaseException) -> str:
    """An exception as one line: its message with newlines folded, or its type when empty."""
    return " ".join(str(err).split()) or type(err).__name__


def _argparse_error(self: argparse.ArgumentParser, message: str):
    """argparse's error, as one line that says where to look for what is valid."""
    self.exit(USAGE_ERROR, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


@contextlib.contextmanager
def _one_line_usage_errors():
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _argparse_error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def run_guarded(function, argv: list[str], debug: bool) -> int:
    """Call ``function(argv)``; known problems become ``error: ...`` and exit status 2."""
    argv = [a for a in argv if a != "--debug"]
    try:
        with _one_line_usage_errors():
            return int(function(argv) or 0)
    except SystemExit as exit_:
        code = exit_.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print(code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except KNOWN_PROBLEMS as err:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(err)}", file=sys.stderr)
        return USAGE_ERROR


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0].startswith("-"):  # --help, --version, or a typo of them
        return run_guarded(lambda a: build_parser().parse_args(a or ["--help"]), argv, debug)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"error: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return USAGE_ERROR
    return run_guarded(lambda a: run_subcommand(name, a), rest, debug)


def run_subcommand(name: str, argv: list[str]) -> int:
    """Check ``argv`` with the subcommand's checking module, then import the module that runs it."""
    checks, runs, _ = COMMANDS[name]
    if checks is None:
        return importlib.import_module(runs).cli_main(argv)
    arguments = importlib.import_module(checks).parse_command(argv)
    if isinstance(arguments, int):
        return arguments
    return importlib.import_module(runs).run_command(*arguments)


if __name__ == "__main__":
    sys.exit(main())
