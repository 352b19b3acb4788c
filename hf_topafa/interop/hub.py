"""Share SAEs on the Hugging Face Hub: a one-commit upload of a run with its model card.

Loading needs nothing from here: ``SparseAutoencoder.from_pretrained("user/repo", revision=...)``
and ``AutoModel.from_pretrained`` (after ``import hf_topafa``) read what ``push_run`` uploads.
The card is rendered by ``hf_topafa.model_card`` (re-exported here).
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import yaml

from ..helpers import read_json
from .hub_config import build_parser, check_repo_id  # noqa: F401 - build_parser: imported here
from .model_card import (  # noqa: F401 - re-exported: the card was rendered here
    TEMPLATE_PATH,
    public_training_config,
    read_training_config,
    render_model_card,
    scrub_token,
)

REQUIRED_FILES = ("config.json", "model.safetensors")
# Uploaded when the run folder has them (written by training, evaluation and plotting).
OPTIONAL_FILES = (
    "metrics.json",
    "zf_plot.png",
    "zf_plot.html",
    "training_config.json",
    "training_config.yaml",
    "features.parquet",  # hf-topafa features: the feature browser's data
    "examples.parquet",
)
# trust_remote_code: transformers imports these classes from the repo's own copy of the code.
AUTO_MAP = {
    "AutoConfig": "configuration_sae.SAEConfig",
    "AutoModel": "modeling_sae.SparseAutoencoder",
}
MODEL_PACKAGE = "sae"  # where AUTO_MAP's modules live in hf_topafa (a repo holds them flat)


def check_run_dir(run_dir: str | os.PathLike) -> list[Path]:
    """The files of a run folder to upload; a clear error when it is not a saved SAE."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder} does not exist (or is not a folder)")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not an SAE folder: {', '.join(missing)} missing "
            f"(a run folder holds {' and '.join(REQUIRED_FILES)}, as written by save_pretrained)"
        )
    from ..sae.saved import check_saved_sae  # shapes and truncation, with readable errors

    check_saved_sae(str(folder))
    return [folder / n for n in REQUIRED_FILES + OPTIONAL_FILES if (folder / n).is_file()]


# --------------------------------------------------------------------------------------------
# Remote code: loading without installing hf-topafa


def remote_code_files() -> dict[str, bytes]:
    """The package's model code as transformers' ``trust_remote_code`` loader needs it in a repo.

    Starts from the modules AUTO_MAP names (in ``hf_topafa/sae/``) and follows their relative
    imports. A repo holds the files side by side, without the package's folders, so each relative
    import is rewritten to name its module flat (``from ..helpers import x`` becomes
    ``from .helpers import x``); see ``flat_imports``.
    """
    root = Path(__file__).parents[1]
    pending = sorted({f"{MODEL_PACKAGE}.{target.split('.')[0]}" for target in AUTO_MAP.values()})
    files: dict[str, bytes] = {}
    origin: dict[str, str] = {}
    while pending:
        dotted = pending.pop()
        name = dotted.rsplit(".", 1)[-1] + ".py"
        if name in files:
            if origin[name] != dotted:
                raise RuntimeError(
                    f"remote code: {dotted} and {origin[name]} both flatten to {name}"
                )
            continue
        source = (root.joinpath(*dotted.split(".")[:-1]) / name).read_text(encoding="utf-8")
        lines, imported = flat_imports(source, dotted.split(".")[:-1], root)
        pending += imported
        files[name], origin[name] = ("\n".join(lines) + "\n").encode(), dotted
    return files


def flat_imports(source: str, package: list[str], root: Path) -> tuple[list[str], list[str]]:
    """``source``'s lines with every relative import pointing at a flat sibling, and the modules
    (dotted, from ``root``) it imports. ``package`` is the module's folder under ``root``.

    The loader fetches the sibling modules it spots as ``from .x import y``; a plain
    ``from . import x`` escapes it, so after each such line one more import names the module in
    the form it spots.
    """
    lines = source.splitlines()
    imported: list[str] = []
    for node in sorted(ast.walk(ast.parse(source)), key=lambda n: -getattr(n, "lineno", 0)):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        target = package[: len(package) - node.level + 1] + (node.module or "").split(".")
        target = [part for part in target if part]
        if not target or root.joinpath(*target).is_dir():  # modules of a package
            imported += [".".join([*target, alias.name]) for alias in node.names]
            flat = "."
        else:
            imported.append(".".join(target))
            flat = "." + target[-1]
        line = lines[node.lineno - 1]
        lines[node.lineno - 1] = re.sub(
            r"from\s+\.+[\w.]*\s+import", f"from {flat} import", line, count=1
        )
        if flat != ".":
            continue
        indent = " " * node.col_offset
        for alias in node.names:
            lines.insert(
                node.end_lineno,
                f"{indent}from .{alias.name} import __name__ as _{alias.name}_module  # noqa: F401"
                f" (lets transformers fetch {alias.name}.py)",
            )
    return lines, imported


def saelens_uploads(run_dir: str | os.PathLike) -> dict[str, bytes]:
    """The run's SAE as a SAELens folder (file name -> bytes), to upload beside ours; a
    refusal when SAELens cannot compute it exactly. Imported here, when asked: the Hub code
    loads no model code otherwise."""
    from ..integrations.saelens_export import load_sae, saelens_files

    return saelens_files(load_sae(os.fspath(run_dir)))


def _config_with_auto_map(config_path: Path) -> bytes:
    config = read_json(config_path)
    config["auto_map"] = dict(AUTO_MAP)
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


# --------------------------------------------------------------------------------------------
# Uploading


def push_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    remote_code: bool = False,
    create_pr: bool = False,
    commit_description: str | None = None,
    saelens: bool = False,
) -> str:
    """Upload a run folder and its generated model card as one commit; returns the commit URL.

    Creates the repo (and the branch ``revision``) when missing. The returned string is a
    ``huggingface_hub.CommitInfo``: ``.oid`` is the commit id. ``private`` applies only when
    the repo is created. Files unchanged since the last push are not re-uploaded.
    ``training_config.*`` is uploaded without local paths and token-like settings.
    ``remote_code`` also uploads the model code and an ``auto_map``, so that
    ``AutoModel.from_pretrained(repo, trust_remote_code=True)`` works without hf-topafa.
    ``saelens`` also uploads the SAE in SAELens's format beside ours (cfg.json,
    sae_weights.safetensors; ``hf_topafa.integrations.saelens_export``), refusing before any
    upload an SAE that SAELens cannot compute exactly.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    files = check_run_dir(run_dir)
    extra = saelens_uploads(run_dir) if saelens else {}
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    card = render_model_card(run_dir, repo_id=repo_id, remote_code=remote_code, saelens=saelens)
    uploads: dict[str, str | bytes] = {p.name: str(p) for p in files}
    uploads.update(extra)
    training = public_training_config(read_training_config(Path(run_dir)))
    if "training_config.json" in uploads:
        uploads["training_config.json"] = (json.dumps(training, indent=2) + "\n").encode()
    elif "training_config.yaml" in uploads:
        uploads["training_config.yaml"] = yaml.safe_dump(training, sort_keys=False).encode()
    if remote_code:
        uploads["config.json"] = _config_with_auto_map(Path(run_dir) / "config.json")
        uploads.update(remote_code_files())
    uploads["README.md"] = card.encode()
    operations = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=c) for n, c in uploads.items()]
    with warnings.catch_warnings():  # the feature parquet files belong with the SAE, on purpose
        warnings.filterwarnings("ignore", message=".*commit a data file.*", category=UserWarning)
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or "Upload SAE with hf-topafa",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


def push_to_hub_extras(kwargs: dict) -> dict:
    """The transformers ``push_to_hub`` keywords ``push_model`` passes on (``create_pr``,
    ``commit_description``); serialization ones change nothing for an SAE (one safetensors
    file) and are dropped; any other is a TypeError naming what is accepted."""
    known = {"create_pr", "commit_description"}
    ignored = {"safe_serialization", "max_shard_size", "use_temp_dir", "variant"}
    unknown = sorted(set(kwargs) - known - ignored)
    if unknown:
        raise TypeError(
            f"unsupported push_to_hub arguments: {', '.join(unknown)} (accepted besides "
            f"the named ones: {', '.join(sorted(known | ignored))})"
        )
    return {k: v for k, v in kwargs.items() if k in known}


def push_model(
    model,
    repo_id: str,
    *,
    metrics: dict | None = None,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    remote_code: bool = False,
    **commit_options,
) -> str:
    """``push_run`` for an SAE in memory: saved to a temporary run folder with its metrics.
    ``commit_options``: ``create_pr``, ``commit_description``."""
    with tempfile.TemporaryDirectory(prefix="hf_topafa_push_") as tmp:
        model.save_pretrained(tmp)
        if metrics:
            Path(tmp, "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        return push_run(
            tmp,
            repo_id,
            private=private,
            revision=revision,
            token=token,
            commit_message=commit_message,
            remote_code=remote_code,
            **commit_options,
        )


# --------------------------------------------------------------------------------------------
# Command line


def cli_main(argv: list[str]) -> int:
    """``hf-topafa push ...`` from Python: argparse errors raise SystemExit, a bad repo id or a
    failed push prints one line and returns 2."""
    args = build_parser().parse_args(argv)
    try:
        check_repo_id(args.repo_id)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_command(args)


def run_command(args) -> int:
    """Push (or with --dry-run, show) what ``hf_topafa.hub_config.parse_command`` checked."""
    token = args.token or None
    try:
        if args.dry_run:
            files = check_run_dir(args.run_dir)
            saelens = args.format == "saelens"
            card = render_model_card(
                args.run_dir, repo_id=args.repo_id, remote_code=args.remote_code, saelens=saelens
            )
            print(card)
            extra = list(remote_code_files()) if args.remote_code else []
            extra += list(saelens_uploads(args.run_dir)) if saelens else []  # or its refusal
            names = ", ".join([p.name for p in files] + extra + ["README.md"])
            print(f"would upload to {args.repo_id}: {names}", file=sys.stderr)
            return 0
        commit = push_run(
            args.run_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            token=token,
            commit_message=args.message,
            remote_code=args.remote_code,
            saelens=args.format == "saelens",
        )
    except Exception as err:  # noqa: BLE001 - one scrubbed line instead of a traceback
        from huggingface_hub import constants, get_token

        found = token or get_token()
        message = scrub_token(" ".join(f"{type(err).__name__}: {err}".split()), found)
        where = f"{constants.ENDPOINT}, token {'found' if found else 'not found'}"
        print(f"error: push failed ({where}): {message}", file=sys.stderr)
        if getattr(getattr(err, "response", None), "status_code", None) == 401:
            print(
                "hint: the Hub refused the token; set HF_TOKEN, run `hf auth login`, or pass "
                "--token with a write token",
                file=sys.stderr,
            )
        return 2
    print(f"pushed {args.run_dir} to {commit}")
    return 0
