"""``hf-topafa push``'s command line and repo-id check, without torch or the Hub client.

A typo answers before ``hf_topafa.hub`` imports the model card's torch and huggingface_hub.
"""

from __future__ import annotations

import argparse

from ..cli.cli_args import CommandParser
from ..sources import HUB_ID

FORMATS = ("hf-topafa", "saelens")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when it is a Hub repo id ``user/name``; a ValueError naming it otherwise."""
    if not HUB_ID.fullmatch(repo_id) or ".." in repo_id:
        raise ValueError(
            f"invalid repo id {repo_id!r}: a Hub repo id is 'user/name' (letters, digits, "
            "'-', '_', '.')"
        )
    return repo_id


DESCRIPTION = (
    "Upload a run folder (config.json, model.safetensors, metrics.json, ZF plot) to the Hugging "
    "Face Hub with a generated model card."
)


def build_parser() -> CommandParser:
    parser = CommandParser(prog="hf-topafa push", description=DESCRIPTION)
    parser.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="folder written by training: config.json, model.safetensors",
    )
    parser.add_argument(
        "repo_id", metavar="REPO_ID", help="Hub repo, 'user/name' (created when missing)"
    )
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created when missing)")
    parser.add_argument(
        "--token",
        default=None,
        help="Hub token (default: $HF_TOKEN or the token saved by `hf auth login`; prefer those, "
        "a token on the command line is visible to other users of the machine)",
    )
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument(
        "--remote-code",
        action="store_true",
        help="also upload the model code, so AutoModel.from_pretrained(repo, "
        "trust_remote_code=True) loads it without hf-topafa installed",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="hf-topafa",
        help="saelens: also upload the SAE in SAELens's format (cfg.json, "
        "sae_weights.safetensors) beside ours, so sae_lens.SAE.load_from_disk("
        "snapshot_download(repo)) loads it; what SAELens cannot compute exactly is refused",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the folder and print the model card and the file list; upload nothing",
    )
    return parser


def parse_command(argv: list[str]) -> tuple[argparse.Namespace]:
    """``hf-topafa push``'s arguments, checked before torch loads; the dispatcher
    (hf_topafa.cli) hands them to ``hf_topafa.hub.run_command``."""
    args = build_parser().parse_args(argv)
    check_repo_id(args.repo_id)
    return (args,)
