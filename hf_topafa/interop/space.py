"""``hf-topafa space USER/SPACE``: publish the SAE explorer (spaces_app/) as a Gradio Space.

One commit holds what a bare Space needs: the app files, the ``hf_topafa`` package next to them
(the app imports it from its own folder) and ``requirements.txt``. ``--sae`` writes the default
SAE into ``default_sae.txt``, which the app reads when ``$HF_TOPAFA_SAE`` is unset.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..cli.cli_args import CommandParser

PACKAGE = Path(__file__).resolve().parents[1]
APP_DIR = PACKAGE.parent / "spaces_app"
APP_FILES = ("README.md", "requirements.txt", "*.py")
DEFAULT_SAE_FILE = "default_sae.txt"
SKIP_PARTS = ("__pycache__",)
DESCRIPTION = (  # of `hf-topafa space --help`
    "Publish the SAE explorer as a Gradio Space on the Hugging Face Hub: the app, the hf_topafa "
    "package and requirements.txt, in one commit."
)


def space_files(sae: str | None = None) -> dict[str, str | bytes]:
    """path in the Space -> local file (or bytes): the app, the package, the default SAE."""
    if not (APP_DIR / "app.py").is_file():
        raise FileNotFoundError(
            f"{APP_DIR} holds no app.py: publishing needs a source checkout of hf-topafa "
            "(spaces_app/ next to hf_topafa/)"
        )
    files: dict[str, str | bytes] = {}
    for pattern in APP_FILES:
        for path in sorted(APP_DIR.glob(pattern)):
            files[path.name] = str(path)
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and not set(SKIP_PARTS) & set(path.parts) and path.suffix != ".pyc":
            files[f"hf_topafa/{path.relative_to(PACKAGE).as_posix()}"] = str(path)
    if sae is not None:
        sae = sae.strip()
        if not sae or "\n" in sae:
            raise ValueError(f"--sae must be one Hub id or path; got {sae!r}")
        files[DEFAULT_SAE_FILE] = (sae + "\n").encode()
    return files


def publish_space(
    repo_id: str, sae: str | None = None, *, token: str | None = None, private: bool = False
):
    """Create the Space (Gradio SDK) when missing and upload the app as one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi

    files = space_files(sae)
    api = HfApi(token=token)
    repo_id = api.create_repo(
        repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True
    ).repo_id
    operations = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=c) for n, c in files.items()]
    return api.create_commit(
        repo_id, operations, repo_type="space", commit_message="Publish the hf-topafa explorer"
    )


def build_parser() -> CommandParser:
    p = CommandParser(prog="hf-topafa space", description=DESCRIPTION)
    p.add_argument(
        "repo_id", metavar="REPO_ID", help="the Space, 'user/name' (created when missing)"
    )
    p.add_argument("--sae", default=None, help="default SAE of the page (a Hub id)")
    p.add_argument("--private", action="store_true", help="create the Space as private")
    p.add_argument(
        "--token", default=None, help="Hub token (default: $HF_TOKEN or `hf auth login`'s)"
    )
    p.add_argument("--dry-run", action="store_true", help="list the files; upload nothing")
    return p


def cli_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..sources import HUB_ID
    from .model_card import scrub_token

    if not HUB_ID.fullmatch(args.repo_id) or ".." in args.repo_id:
        raise ValueError(
            f"invalid Space id {args.repo_id!r}: a Hub repo id is 'user/name' (letters, digits, "
            "'-', '_', '.')"
        )
    if args.dry_run:
        names = list(space_files(args.sae))
        print(f"would upload {len(names)} files to the Space {args.repo_id}: {', '.join(names)}")
        return 0
    try:
        commit = publish_space(args.repo_id, args.sae, token=args.token, private=args.private)
    except Exception as err:  # noqa: BLE001 - one scrubbed line instead of a traceback
        from huggingface_hub import constants, get_token

        found = args.token or get_token()
        message = scrub_token(" ".join(f"{type(err).__name__}: {err}".split()), found)
        where = f"{constants.ENDPOINT}, token {'found' if found else 'not found'}"
        print(f"error: publishing the Space failed ({where}): {message}", file=sys.stderr)
        return 2
    print(f"published the Space {args.repo_id}: {commit.commit_url}")
    return 0
