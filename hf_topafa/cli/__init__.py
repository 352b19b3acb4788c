"""The ``hf-topafa`` command.

- ``cli``: the dispatcher (``main``): one subcommand per concern, whose torch-free checking module
  (``*_config``) runs before the module that does the work is imported
- ``cli_args``: command-line parsers generated from dataclasses (``arg``, ``DataclassParser``)

Nothing here imports torch or transformers, so ``--help`` and typos answer at once.
"""

from ..helpers import lazy_exports
from .cli import COMMANDS, main, run_subcommand

__all__ = ["COMMANDS", "main", "run_subcommand"]

# hf_topafa.cli was the module cli.py: its other names (build_parser, one_line, ...) answer here
__getattr__ = lazy_exports(__name__, fallback="cli")
