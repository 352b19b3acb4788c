"""What ``hf-topafa evaluate`` measures (``EvalConfig``) and its command line, without torch.

The parser is generated from the dataclasses (``hf_topafa.cli_args``); a bad value fails in
``__post_init__`` before ``hf_topafa.evaluate`` (torch, transformers) is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cli.cli_args import DataclassParser, arg
from ..names import HOLDOUTS, HOOK_POINTS
from ..sae.reading import parse_reading


@dataclass
class EvalConfig:
    """Where the evaluation text comes from and what is measured."""

    dataset: str | None = arg(None, "Hub dataset id, local file or folder; unset: bundled sample")
    dataset_config: str | None = arg(
        None, 'configuration of a Hub dataset (e.g. "wikitext-2-raw-v1")'
    )
    text_column: str = arg("text", "column holding the text (ignored for .txt files)")
    split: str = arg("train", "dataset split")
    model: str | None = arg(
        None, "language model; unset: the SAE's own base_model (the embedded SmolLM2 if none)"
    )
    gguf_file: str | None = arg(None, "GGUF file name inside --model")
    layer: int | None = arg(None, "decoder block; unset: the SAE's own layer")
    hook_point: str | None = arg(
        None, "hook point; unset: the SAE's own hook_point", choices=HOOK_POINTS
    )
    max_tokens: int = arg(4096, "evaluated (kept) positions; reading stops once this many are in")
    context_length: int | None = arg(
        None,
        "tokens per window; unset: the SAE's own context_length (so that the held-out windows "
        "are exactly those its training skipped), or 256 (the harvest default) if it records none",
    )
    batch_windows: int = arg(4, "windows per language-model forward pass")
    holdout: str = arg(
        "eval",
        "which windows to read: eval (held out from holdout=train runs), train or none (all)",
        choices=HOLDOUTS,
    )
    holdout_every: int = arg(10, "every Nth window is an eval window (must match the training run)")
    compute_downstream: bool = arg(
        True,
        "skip cross-entropy, loss recovered and KL (default: measured, three or more full "
        "forwards per batch)",
        flag="--no-downstream",
    )
    dense_threshold: float = arg(
        0.1, "a feature firing on more than this share of tokens counts as dense"
    )
    device: str = arg("cpu", "device of the language model and the SAEs")
    progress: bool = arg(True, "hide the progress bar (default: shown)")
    read_with: str | None = arg(
        None,
        "read each SAE's dictionary with another selection rule, its weights as trained: NAME, "
        "NAME:K for a rule that needs k, NAME@LEVEL to fix an estimated threshold (e.g. "
        "risk_batch reads a TopK dictionary with no k)",
        metavar="RULE",
    )

    def __post_init__(self):
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise ValueError(f"max_tokens must be a positive int, got {self.max_tokens!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {self.max_tokens!r}")
        for name in ("batch_windows", "holdout_every", "context_length", "layer"):
            value = getattr(self, name)
            smallest = 0 if name == "layer" else 1
            if value is not None and (isinstance(value, bool) or value < smallest):
                raise ValueError(f"{name} must be an int >= {smallest}, got {value!r}")
        if self.holdout not in HOLDOUTS:
            raise ValueError(f"holdout must be one of {', '.join(HOLDOUTS)}; got {self.holdout!r}")
        if not 0 < self.dense_threshold < 1:
            raise ValueError(f"dense_threshold must be in (0, 1), got {self.dense_threshold!r}")
        if self.read_with is not None:
            parse_reading(self.read_with)
        if self.hook_point is not None and self.hook_point not in HOOK_POINTS:
            raise ValueError(
                f"unknown hook_point {self.hook_point!r}: valid hook points are "
                f"{', '.join(HOOK_POINTS)}"
            )


@dataclass
class EvalOutputs:
    """Which SAEs ``hf-topafa evaluate`` reads and where it writes (options of the command)."""

    saes: list[str] = arg(
        help="saved SAE folder, Hub id or FORMAT:SOURCE (e.g. saelens:REPO/SAE_ID)",
        positional=True,
        nargs="+",
        metavar="SAE",
    )
    json: str | None = arg(None, "write the metrics here", metavar="OUT")
    plots: str | None = arg(None, "write the plots here", metavar="DIR")
    synthetic: str | None = arg(
        None,
        "score against a synthetic world's true features instead of text: a cache written by "
        "harvest --synthetic (its stored true codes), or a world (preset, saved folder or JSON "
        "config; --max-tokens fresh samples); SAELens's synthetic-data metrics plus the AFA and "
        "per-sample-L0 checks; needs the synth extra",
        metavar="WORLD",
    )
    unfold: bool = arg(
        False,
        "count the directions rows share above chance (absorbed parents, and the ancestors those "
        "share in turn, unfolded level by level) as features of their own "
        "(hf_topafa.sae.absorption): on text extra L0s; with --synthetic each SAE is scored "
        "nine times more: along its rows less the shared direction, unfolded once, by levels, "
        "by levels with no atom for a group whose rows all meet one of them and not each "
        "other (absorption.star_groups: that row is the parent), by levels with no group of "
        "latents that fire nested (absorption.nested_pairs: on text read on the first 20,000 "
        "tokens, with --synthetic on 20,000 fresh samples of the world, not the scored ones), "
        "and so with each atom silent where its group's parent's own row fires "
        "(absorption.group_hubs; hubs found on the same tokens or samples), and so with that row "
        "folded into its atom instead (absorption.FoldedView: one latent per parent), and that "
        "without the atoms that fire inside another latent and are most of its firings "
        "(absorption.doubled_atoms: one feature counted twice), and folded with the rows that "
        "meet no other but close a triangle grouped too (lone triangles: "
        "absorption.triangle_coherence)",
    )


def build_parser() -> DataclassParser:
    return DataclassParser(
        EvalConfig,
        EvalOutputs,
        prog="hf-topafa evaluate",
        description="Evaluate SAEs on held-out text: reconstruction, sparsity, downstream loss, AFA.",
    )


def parse_command(argv: list[str]) -> tuple[EvalConfig, EvalOutputs]:
    """``hf-topafa evaluate SAE [SAE ...]``'s arguments, checked before torch loads; the
    dispatcher (hf_topafa.cli) hands them to ``hf_topafa.evaluate.run_command``."""
    return build_parser().parse_dataclasses(argv)
