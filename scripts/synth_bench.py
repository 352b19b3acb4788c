"""Ground truth: top-AFA, the k-free rules and the baselines on SynthSAEBench worlds.

Each SAE of the plan is trained on one activation cache sampled once from the world
(``hf_topafa.data.synthetic_cache``), so no run waits on SAELens's sampler, and scored with
SAELens's ``eval_sae_on_synthetic_data`` on one stored truth set (the same samples for every SAE),
plus this package's AFA and per-sample-L0 checks (``hf_topafa.evaluation.ground_truth``). The
external reference, SAELens's own BatchTopK trained by SAELens's ``SyntheticSAERunner`` on fresh
samples of the same world, is read back through ``hf-topafa convert --from saelens`` and scored by
the same code.

Resumable: each finished SAE leaves one record, ``results/synthbench/records/WORLD/NAME.json``
(committed with ``--commit``), and is never trained again; an SAE cut short resumes from its last
checkpoint under ``--work``. The caches are seeded, so another machine rebuilds the same rows.
Outputs, rebuilt from all records on every call: ``summary.json``, ``table.md``, and the plots
``l0_vs_f1_mcc_WORLD.png`` and ``per_sample_l0_WORLD.png``.

    python scripts/synth_bench.py --world synthsaebench-4k --train-samples 3000000 --commit
    python scripts/synth_bench.py --report-only          # rebuild the outputs from the records
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch

from hf_topafa.sae.rules import RULES

PRESETS_4K = ("synthsaebench-4k",)
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results" / "synthbench"
WORK = REPO / "runs" / "synthbench"
PER_SAMPLE_KEPT = 2000  # samples whose per-sample figures a record keeps, for the plots
# rules with neither a k nor a sparsity coefficient: top-AFA and the k-free rules
K_FREE = tuple(n for n, rule in RULES.items() if not rule.needs_k and rule.penalty is None)
ROW_KEYS = (
    "world", "trainer", "activation", "k", "afa_coef", "input_normalization", "d_sae",
    "train_samples", "seed", "l0", "true_l0_top_width", "mcc", "f1", "precision", "recall",
    "uniqueness", "explained_variance", "dead", "shrinkage", "l0_corr", "afa_norm_rel_err_median",
)  # fmt: skip


def spec(activation, k=None, afa_coef="0", norm="none", trainer="hf_topafa", **overrides) -> dict:
    """One SAE of a plan. ``overrides`` are further training fields (``TrainConfig.from_flat``
    names, e.g. ``l0_coef``; ``SyntheticSAERunnerConfig`` names for the SAELens trainer); they
    name the record and show in the table."""
    s = {"trainer": trainer, "activation": activation, "k": k, "afa_coef": afa_coef,
         "input_normalization": norm}  # fmt: skip
    return {**s, "overrides": overrides} if overrides else s


# In priority order: what answers the question first, so a session cut short still has it.
PLANS = {
    "4k": [
        spec("topk", 16), spec("noise_floor"), spec("afa_band"), spec("topafa", afa_coef="1/32"),
        spec("topk", 12), spec("afa_mdl"), spec("batchtopk", 12),
        spec("batchtopk", 12, trainer="saelens"), spec("topk", 8), spec("risk_inflation"),
        spec("topk", 24),
        spec("batchtopk", 16), spec("afa_universal"), spec("afa_batch"), spec("jumprelu"),
        spec("topafa", afa_coef="0"), spec("topafa", afa_coef="1/128"),
        spec("noise_floor", afa_coef="1/32"),
        spec("topafa", afa_coef="1/32", norm="layer_norm"),
        spec("topafa", afa_coef="0", norm="layer_norm"),
        spec("topafa", afa_coef="1/128", norm="layer_norm"), spec("afa_count"),
        spec("jumprelu", l0_coef=0.01), spec("jumprelu", l0_coef=0.1), spec("jumprelu", l0_coef=1.0),
        # the threshold's pseudo-gradient only sees pre-activations within a bandwidth of it:
        # 1e-3 (the default) against activations of order 1 leaves the thresholds where they start
        spec("jumprelu", l0_coef=0.01, jumprelu_bandwidth=0.1),
        spec("jumprelu", l0_coef=0.1, jumprelu_bandwidth=0.1),
        spec("jumprelu", l0_coef=1.0, jumprelu_bandwidth=0.1),
        # Adam moves a threshold by at most about lr a step, whatever l0_coef: from 1e-3, 2,929
        # steps cannot reach the interference level (about 2); start the thresholds near it
        spec("jumprelu", l0_coef=0.1, jumprelu_bandwidth=0.1, jumprelu_init_threshold=1.0),
        spec("jumprelu", l0_coef=0.01, jumprelu_bandwidth=0.1, jumprelu_init_threshold=1.0),
        spec("noise_batch"), spec("noise_floor", aux_coef=1.0),
        # the AFA norm loss mended noise_floor's dictionary on this world: does it mend noise_batch's?
        spec("noise_batch", afa_coef="1/32"),
        # each latent's own noise level, read as synth_latent_noise.py reads a dictionary
        spec("latent_noise"),
        # the AFA's energy over one confidently detected feature's: a count from the norm that
        # spreading cannot inflate (afa_count's per-feature energy falls when the code spreads)
        spec("afa_energy"),
        # one feature's energy from the fourth moment of the decoder projections (the excess
        # over their interference's), the code's from the AFA: on the worlds' own features it
        # reads 1.05-1.11x the true L0 where that differs eightfold (synth_reread.py oracle:),
        # two factors cancelling (ground_truth.kurtosis_reading_of_truth)
        spec("afa_kurtosis"),
        # risk inflation's per-token counts spent across the batch: the reader with the best F1
        # on every world, given noise_batch's allocation (whose per-sample counts follow the truth)
        spec("risk_batch"),
        # risk inflation at one noise level pooled over the batch (hf_topafa/sae/risk.py): read
        # post hoc it keeps fewer false latents than the per-token level; trained, does it learn?
        spec("risk_pooled"),
        # the same, each kept latent also paying its price alone: read post hoc and unfolded by
        # levels it meets the bars on the 4k and sparse worlds; trained, does it learn?
        spec("risk_floor"),
    ],
    # worlds whose true L0 differs several-fold (configs/synth/): does a rule follow the truth?
    "variants": [spec("noise_floor"), spec("afa_mdl"), spec("topk", 16), spec("topk", 32),
                 spec("topk", 8), spec("topk", 4), spec("afa_band"), spec("afa_batch"),
                 spec("noise_batch"), spec("noise_floor", aux_coef=1.0),
                 spec("noise_floor", afa_coef="1/32"),
                 spec("jumprelu", l0_coef=0.1, jumprelu_bandwidth=0.1, jumprelu_init_threshold=1.0),
                 spec("noise_batch", matryoshka_levels=4),
                 spec("batchtopk", 4), spec("batchtopk", 4, matryoshka_levels=4),
                 spec("topk", 4, matryoshka_levels=4),
                 spec("afa_band", matryoshka_levels=4), spec("latent_noise"),
                 spec("latent_noise", matryoshka_levels=4), spec("afa_energy"),
                 spec("afa_energy", matryoshka_levels=4),
                 # the dense world's Matryoshka baseline at what its width holds (24.4)
                 spec("batchtopk", 24, matryoshka_levels=4),
                 spec("afa_kurtosis"), spec("afa_kurtosis", matryoshka_levels=4),
                 # below what the sparse world's width holds (3.06), for seed agreement's sweep
                 spec("topk", 2), spec("risk_batch"),
                 # Matryoshka TopK over k, for seed agreement's sweep with less absorption
                 spec("topk", 2, matryoshka_levels=4), spec("topk", 8, matryoshka_levels=4),
                 spec("topk", 16, matryoshka_levels=4),
                 # around what the dense world's width holds (24.4), for seed agreement's sweep
                 spec("topk", 24), spec("topk", 48), spec("risk_pooled"), spec("risk_floor")],
    # the sparse world's probabilities without its hierarchy: no parent to absorb, so does a
    # count read from a trained dictionary (afa_kurtosis) reach the truth?
    "flat": [spec("batchtopk", 5), spec("afa_kurtosis"), spec("topk", 5), spec("noise_batch"),
             spec("afa_energy"), spec("batchtopk", 5, matryoshka_levels=4),
             spec("afa_kurtosis", matryoshka_levels=4),
             # the 4k world's best k-free pipeline (trained so, read by afa_kurtosis) here, and
             # TopK at more k, for the best TopK over k
             spec("noise_batch", matryoshka_levels=4), spec("topk", 3), spec("topk", 8),
             spec("topk", 12), spec("risk_batch"),
             # Matryoshka TopK over k, for seed agreement's sweep
             spec("topk", 3, matryoshka_levels=4), spec("topk", 5, matryoshka_levels=4),
             spec("topk", 8, matryoshka_levels=4), spec("topk", 12, matryoshka_levels=4)],
    # absorption: trained longer, TopK's parents with an active child sink into the interference
    # (synth_detectability). Matryoshka training asks the first d_sae/2 ... d_sae/16 features to
    # reconstruct alone, which keeps general features whole; with a k-free rule, does the count
    # then follow the truth?
    "matryoshka": [spec("noise_batch", matryoshka_levels=4),
                   spec("batchtopk", 12, matryoshka_levels=4),
                   spec("noise_floor", matryoshka_levels=4), spec("afa_band", matryoshka_levels=4),
                   spec("topk", 16, matryoshka_levels=4), spec("afa_mdl", matryoshka_levels=4),
                   spec("topk", 12, matryoshka_levels=4), spec("topk", 24, matryoshka_levels=4),
                   # the per-latent reading of a Matryoshka dictionary keeps more: does training?
                   spec("latent_noise", matryoshka_levels=4),
                   # a Matryoshka dictionary absorbs less, so the decoder's projection reads a
                   # detected feature nearer its magnitude (synth_energy.py): afa_energy's count?
                   spec("afa_energy", matryoshka_levels=4),
                   spec("afa_kurtosis", matryoshka_levels=4),
                   # below what the width holds (12.2), for seed agreement's sweep
                   spec("topk", 8, matryoshka_levels=4),
                   # the dense world's sweep goes past what its width holds (24.4)
                   spec("topk", 32, matryoshka_levels=4)],
    # afa_mdl landed at L0 13.7: TopK at that k is its fair comparison; noise_batch followed
    # the truth's count on the 4k world: does it on this one? Matryoshka is the published
    # world's best family: does its gain on the 4k world hold here?
    "16k": [spec("topk", 25), spec("afa_mdl"), spec("batchtopk", 25),
            spec("topafa", afa_coef="1/32"), spec("topk", 14), spec("noise_batch"),
            spec("topk", 25, matryoshka_levels=4), spec("latent_noise"), spec("afa_energy"),
            # TopK at the world's true L0 (34.6), which is also the truth's energy count (36.4,
            # ground_truth.kurtosis_reading_of_truth): is the best dictionary trained there?
            spec("topk", 35)],
    # the 16k world at the published budget on a GPU (synth_device.py): the published table's
    # families at its L0 25 beside the k-free rules that did best at 5M here
    "published": [spec("noise_batch"), spec("batchtopk", 25), spec("afa_mdl"),
                  spec("noise_batch", matryoshka_levels=4),
                  spec("batchtopk", 25, matryoshka_levels=4),
                  spec("afa_energy", matryoshka_levels=4)],
    # why SAELens's own BatchTopK (trained by SAELens) lands far below ours: our trainer with
    # SAELens's settings, one at a time (run with --results results/synthbench/controls)
    "controls": [spec("batchtopk", 12, dead_tokens_threshold=1000 * 1024),
                 spec("batchtopk", 12, adam_beta2=0.999), spec("batchtopk", 12, aux_coef=1.0),
                 spec("batchtopk", 12, dead_tokens_threshold=1000 * 1024, adam_beta2=0.999,
                      aux_coef=1.0),
                 # and the other way: SAELens's trainer with the one setting that moved ours most
                 spec("batchtopk", 12, trainer="saelens", adam_beta2=0.99),
                 # and SAELens's decoder parametrization switched to ours: unit rows at init,
                 # activations not rescaled by the decoder norm
                 spec("batchtopk", 12, trainer="saelens", adam_beta2=0.99, decoder_init_norm=1.0,
                      rescale_acts_by_decoder_norm=False),
                 # which of the two: the initial norm alone
                 spec("batchtopk", 12, trainer="saelens", adam_beta2=0.99, decoder_init_norm=1.0)],
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--world", default="synthsaebench-4k", help="preset, saved folder or JSON")
    p.add_argument("--plan", default=None, choices=sorted(PLANS), help="default: from --world")
    p.add_argument("--topk", type=int, nargs="+", default=None, metavar="K",
                   help="train plain TopK at these k instead of a plan (a ladder to choose k "
                   "from, e.g. scripts/synth_choose_k.py); --only picks among them as topk-kK")  # fmt: skip
    p.add_argument("--only", nargs="+", default=None,
                   help="run only these record names (one no plan holds, e.g. none, only samples "
                   "the caches and prints the world's facts)")  # fmt: skip
    p.add_argument("--d-sae", type=int, default=None, help="default: 1024 (4k), 4096 (16k)")
    p.add_argument("--train-samples", type=int, default=20_000_000, help="per SAE")
    p.add_argument("--cache-samples", type=int, default=None,
                   help="rows sampled into the training cache (default: --train-samples); "
                   "SAEs read it in passes when it is smaller")  # fmt: skip
    p.add_argument("--stream", action="store_true",
                   help="draw every SAE's training samples from the world while it trains, on "
                   "the training device, instead of reading a cache (no --cache-samples; for "
                   "budgets a disk cannot hold, and GPUs, which sample faster than they read)")  # fmt: skip
    p.add_argument("--eval-samples", type=int, default=50_000)
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="steps between checkpoints (0: none; a resumed run starts there)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init-seed",
        type=int,
        default=None,
        help="the SAE's initialization and shuffling seed, where it should differ from "
        "--seed (the caches stay --seed's): seed agreement, same data",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--work", type=Path, default=WORK, help="caches and run folders (not committed)")
    p.add_argument("--commit", action="store_true", help="git-commit each record as it lands")
    p.add_argument("--report-only", action="store_true", help="only rebuild the outputs")
    return p


def plan_of(args) -> list[dict]:
    plan = args.plan or ("16k" if "16k" in args.world else "4k" if args.world in PRESETS_4K
                         else "variants")  # fmt: skip
    if args.topk:
        plan = f"TopK k = {' '.join(map(str, args.topk))}"
    specs = [spec("topk", k) for k in dict.fromkeys(args.topk)] if args.topk else PLANS[plan]
    if args.only:
        missing = sorted(set(args.only) - {record_name(s) for s in specs})
        if missing:
            names = ", ".join(record_name(s) for s in specs)
            print(f"--only: plan {plan!r} holds no {', '.join(missing)} (nothing is trained for "
                  f"a name the plan lacks; its names: {names})", flush=True)  # fmt: skip
        specs = [s for s in specs if record_name(s) in args.only]
    return specs


def record_name(s: dict) -> str:
    parts = [s["activation"]] if s["trainer"] == "hf_topafa" else [s["trainer"], s["activation"]]
    if s["k"] is not None:
        parts.append(f"k{s['k']}")
    if s["activation"] in K_FREE:
        parts.append("afa" + s["afa_coef"].replace("/", "-"))
    if s["input_normalization"] != "none":
        parts.append(s["input_normalization"])
    parts += [f"{key}{value}" for key, value in sorted(s.get("overrides", {}).items())]
    return "-".join(parts)


def settings_of(args, s: dict, d_sae: int) -> dict:
    """Everything that defines one record's SAE; a record with other settings is redone.
    ``cache_samples`` None: the samples were drawn while training (``--stream``)."""
    return {**s, "world": args.world, "d_sae": d_sae, "train_samples": args.train_samples,
            "cache_samples": None if args.stream else args.cache_samples or args.train_samples,
            "eval_samples": args.eval_samples, "batch_size": args.batch_size, "lr": args.lr,
            "seed": args.seed,
            **({} if args.init_seed is None else {"init_seed": args.init_seed})}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Data and training


def ensure_caches(args) -> tuple[Path | None, Path]:
    """(training cache, evaluation cache with the truth); no training cache with ``--stream``."""
    from hf_topafa.data.synthetic_cache import write_synthetic_cache

    name = Path(args.world).stem
    cache_rows = args.cache_samples or args.train_samples
    eval_cache = write_synthetic_cache(
        args.world, args.work / "cache" / f"{name}-eval", args.eval_samples, seed=args.seed + 1,
        with_truth=True,
    )  # fmt: skip
    if args.stream:
        return None, eval_cache
    train_cache = write_synthetic_cache(
        args.world, args.work / "cache" / f"{name}-train", cache_rows, seed=args.seed
    )
    return train_cache, eval_cache


def train_ours(args, settings: dict, train_cache: Path, eval_x, run_dir: Path) -> None:
    """Train with hf_topafa's trainer, resuming from the run folder's last checkpoint."""
    from hf_topafa.training.train import METRICS, TrainConfig, train

    if (run_dir / METRICS).is_file():
        trained, head = finished_at(run_dir), head_commit()
        if trained != head:  # the code may have changed since: say so, as the record is made
            print(f"   reusing the finished SAE in {run_dir}, finished at commit {trained} (now "
                  f"{head}); remove the folder to train it with this code", flush=True)  # fmt: skip
        return
    resumable = any((run_dir / "checkpoints").glob("step_*"))
    if run_dir.is_dir() and not resumable:
        print(f"   {run_dir} has no checkpoint yet: starting it from step 0", flush=True)
    config = TrainConfig.from_flat(
        activation=settings["activation"], k=settings["k"],
        afa_coef=float(Fraction(settings["afa_coef"])),
        input_normalization=settings["input_normalization"], d_sae=settings["d_sae"],
        batch_size=args.batch_size, lr=args.lr, seed=settings.get("init_seed", args.seed),
        max_tokens=args.train_samples, eval_tokens=len(eval_x), output=str(run_dir),
        resume=resumable, overwrite=not resumable, checkpoint_every=args.checkpoint_every,
        log_with="none",
        progress=sys.stderr.isatty(), synthetic=args.world if args.stream else None,
        **settings.get("overrides", {}),
    )  # fmt: skip
    train(config, data=train_cache, eval_data=eval_x)
    (run_dir / FINISHED_AT).write_text(f"{head_commit()}\n")


FINISHED_AT = "finished_at_commit.txt"
"""A run folder's note of the commit whose code finished training it (``train_ours``)."""


def head_commit() -> str:
    """The repository's current commit ("unknown" outside a git checkout)."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def finished_at(run_dir: Path) -> str:
    """The commit that finished the run folder's SAE ("unknown" for folders from before the
    note was written)."""
    note = run_dir / FINISHED_AT
    return note.read_text().strip() if note.is_file() else "unknown"


def train_saelens(args, settings: dict, run_dir: Path) -> Path:
    """SAELens's BatchTopK trained by SAELens's SyntheticSAERunner; returns its saved folder."""
    from sae_lens import BatchTopKTrainingSAEConfig, LoggingConfig
    from sae_lens.synthetic import SyntheticSAERunner, SyntheticSAERunnerConfig

    from hf_topafa.data.synthetic import world_folder

    out = run_dir / "saelens"
    if (out / "cfg.json").is_file():
        return out
    _, folder = world_folder(args.world)
    # an override that names a field of SAELens's SAE config (decoder_init_norm, ...) goes there
    sae_fields = {f.name for f in dataclasses.fields(BatchTopKTrainingSAEConfig)}
    overrides = settings.get("overrides", {})
    sae_cfg = BatchTopKTrainingSAEConfig(
        d_in=json.loads((folder / "synthetic_model_config.json").read_text())["hidden_dim"],
        d_sae=settings["d_sae"], k=settings["k"],
        **{key: value for key, value in overrides.items() if key in sae_fields},
    )  # fmt: skip
    cfg = SyntheticSAERunnerConfig(
        synthetic_model=str(folder), sae=sae_cfg, training_samples=args.train_samples,
        batch_size=args.batch_size, lr=args.lr, output_path=str(out), checkpoint_path=None,
        run_final_eval=False, logger=LoggingConfig(log_to_wandb=False),
        **{key: value for key, value in overrides.items() if key not in sae_fields},
    )  # fmt: skip
    torch.manual_seed(settings.get("init_seed", args.seed))
    SyntheticSAERunner(cfg).run()
    return out


def load_trained(run_dir: Path, saelens_folder: Path | None):
    """Our SAE of a run, or SAELens's saved folder read by ``convert --from saelens``."""
    from hf_topafa import SparseAutoencoder
    from hf_topafa.interop.convert import convert

    if saelens_folder is not None:
        return convert("saelens", saelens_folder)
    return SparseAutoencoder.from_pretrained(run_dir).eval()


# --------------------------------------------------------------------------------------------
# Records


def ensure_record(args, s: dict, d_sae: int, caches, world, truth) -> dict | None:
    from hf_topafa.evaluation.ground_truth import score_against_truth
    from hf_topafa.helpers import write_json

    name = record_name(s)
    path = args.results / "records" / Path(args.world).stem / f"{name}.json"
    settings = settings_of(args, s, d_sae)
    if path.is_file():
        record = json.loads(path.read_text())
        if record["settings"] == settings:
            return record
        print(f"   {name}: its record has other settings; training again", flush=True)
    if args.report_only:
        return None
    print(f"== {name}", flush=True)
    started = time.perf_counter()
    run_dir = args.work / "runs" / Path(args.world).stem / name
    train_cache, eval_x = caches
    saelens_folder = None
    if s["trainer"] == "saelens":
        saelens_folder = train_saelens(args, settings, run_dir)
    else:
        train_ours(args, settings, train_cache, eval_x, run_dir)
    sae = load_trained(run_dir, saelens_folder)
    scored = score_against_truth(sae, world, truth, args.eval_samples)
    per_sample = {k: [round(float(v), 4) for v in t[:PER_SAMPLE_KEPT]]
                  for k, t in scored["per_sample"].items()}  # fmt: skip
    record = {"name": name, "settings": settings, "row": scored["row"], "per_sample": per_sample,
              "seconds": round(time.perf_counter() - started, 1), "command": args.command,
              "threads": torch.get_num_threads()}  # fmt: skip
    write_json(path, record, indent=1)
    row = scored["row"]
    print(f"   L0 {row['l0']:.1f}  F1 {row['f1']:.3f}  MCC {row['mcc']:.3f}  "
          f"l0_corr {row['l0_corr']}", flush=True)  # fmt: skip
    if args.commit:
        commit_record(path, f"synthbench: {Path(args.world).stem} {name} "
                      f"(L0 {row['l0']:.1f}, F1 {row['f1']:.3f})")  # fmt: skip
    return record


def commit_record(path: Path, message: str) -> None:
    """Commit one record in the repository that holds it; a failed commit only warns (the record
    stays on disk, and the next call commits it with its own). git runs in the record's folder,
    so the path it is given is the record's name there, whatever ``--results`` was relative to."""
    folder, name = path.parent, path.name
    for command in (
        ["git", "add", name],
        ["git", "commit", "-q", "-m", message, "--", name],
    ):
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        if done.returncode:
            print(f"   warning: {' '.join(command[:2])} failed: {done.stderr.strip()}", flush=True)
            return


# --------------------------------------------------------------------------------------------
# Outputs


def summary_row(record: dict) -> dict:
    s, row = record["settings"], record["row"]
    full = {**s, **row, "world": Path(s["world"]).stem, "afa_coef": s["afa_coef"]}
    return {key: full.get(key) for key in ROW_KEYS}


def write_outputs(args, records: list[dict], worlds: dict) -> None:
    from hf_topafa.helpers import write_json, write_text

    path = args.results / "summary.json"
    if path.is_file():  # another world's run may have written its facts since this one read them
        worlds = {**json.loads(path.read_text())["worlds"], **worlds}
    # the summary's rows have no field for further training settings: those SAEs (sweeps,
    # controls) are in table.md and their records only
    rows = [summary_row(r) for r in records if not r["settings"].get("overrides")]
    kfree = [r for r in rows if r["activation"] in K_FREE and r["trainer"] == "hf_topafa"]
    best = max(kfree, key=lambda r: (r["f1"], r["mcc"]), default=None)
    summary = {
        "worlds": worlds,
        "rows": rows,
        "best_kfree": None if best is None else {key: best[key] for key in (
            "world", "activation", "afa_coef", "input_normalization")},
    }  # fmt: skip
    write_json(args.results / "summary.json", summary, indent=1)
    write_text(args.results / "table.md", table(records))
    for world in {Path(r["settings"]["world"]).stem for r in records}:
        plot_world(
            args.results,
            world,
            [r for r in records if Path(r["settings"]["world"]).stem == world],
            worlds,
        )


def table(records: list[dict]) -> str:
    """One line per record; a record's further training fields show under ``overrides``."""
    cols = ("world", "trainer", "activation", "k", "afa_coef", "input_normalization",
            "overrides", "train_samples", "l0", "true_l0_top_width", "f1", "mcc", "uniqueness",
            "explained_variance", "dead", "shrinkage", "l0_corr", "afa_norm_rel_err_median")  # fmt: skip
    rows = [{**summary_row(r), "overrides": " ".join(
        f"{key}={value}" for key, value in sorted(r["settings"].get("overrides", {}).items())
    ) or None} for r in records]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(rows, key=lambda r: (r["world"], r["activation"], r["k"] or 0,
                                         r["overrides"] or "")):  # fmt: skip
        cells = [f"{v:.3g}" if isinstance(v, float) else ("–" if v is None else str(v))
                 for v in (r[c] for c in cols)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


SWEPT = ("k", "afa_coef", "l0_coef")  # settings a plot joins into one line per rule


def series_label(settings: dict) -> str:
    """A plot series: the rule, its trainer and its settings other than the swept ones (k,
    λ_AFA and l0_coef, whose values make the series' points)."""
    label = settings["activation"]
    if settings["input_normalization"] != "none":
        label += f" {settings['input_normalization']}"
    fixed = {k: v for k, v in settings.get("overrides", {}).items() if k not in SWEPT}
    label += "".join(f" {k}={v}" for k, v in sorted(fixed.items()))
    return label if settings["trainer"] == "hf_topafa" else f"{label} ({settings['trainer']})"


def plot_world(out: Path, world: str, records: list[dict], worlds: dict) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_topafa.helpers import atomic_path

    info = worlds.get(world, {})
    true_l0 = info.get("true_l0")
    top = next(iter(info.get("true_l0_top_width", {}).values()), None)
    series: dict[str, list[dict]] = {}
    for r in records:
        series.setdefault(series_label(r["settings"]), []).append(r)
    colors = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ("f1", "mcc"), strict=True):
        for i, (label, mine) in enumerate(sorted(series.items())):
            pts = sorted((r["row"]["l0"], r["row"][metric]) for r in mine)
            style = ("o", "s", "^", "D")[i % 4] + ("-" if len(pts) > 1 else "")
            ax.plot(*zip(*pts, strict=True), style, color=colors[i % 20], label=label)
        for value, style, text in ((true_l0, "--", "true L0"), (top, ":", "true L0, top width")):
            if value:
                ax.axvline(value, color="k", ls=style, lw=1, label=text)
        ax.set_xscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
        lo, hi = ax.get_xlim()
        ax.xaxis.set_major_formatter(plain)  # plain numbers, not 1.1x10^1; minor ticks labelled
        ax.xaxis.set_minor_formatter(plain if hi / lo < 10 else matplotlib.ticker.NullFormatter())
        ax.set(xlabel="SAE L0 (held-out samples)", ylabel=metric.upper(), title=f"{world}")
    # beside the plots, where many series would hide the points
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    with atomic_path(out / f"l0_vs_f1_mcc_{world}.png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)

    adaptive = [r for r in records if r["settings"]["activation"] not in ("topk",)]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for r in adaptive:
        ps = r["per_sample"]
        ax.scatter(ps["true_l0"], ps["l0"], s=4, alpha=0.35, label=r["name"])
    hi = max((max(r["per_sample"]["true_l0"]) for r in adaptive), default=1)
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="SAE L0 = true L0")
    ax.set_yscale("symlog", linthresh=10)
    ax.set(xlabel="true per-sample L0", ylabel="SAE per-sample L0",
           title=f"{world}: per-sample count against the truth")  # fmt: skip
    ax.legend(fontsize=6, markerscale=3, loc="best")
    fig.tight_layout()
    with atomic_path(out / f"per_sample_l0_{world}.png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def world_facts(args, truth, d_sae: int) -> dict:
    from hf_topafa.data.synthetic import world_config
    from hf_topafa.evaluation.ground_truth import true_l0_top_width

    n = truth.num_samples
    return {
        "config": world_config(args.world),
        "true_l0": round(float(len(truth.indices)) / n, 3),
        "true_l0_top_width": {str(d_sae): round(true_l0_top_width(d_sae, n, truth), 3)},
    }


@torch.no_grad()
def afa_error(world, codes: torch.Tensor, x: torch.Tensor) -> float:
    """The paper's approximation on the truth: median |‖x − bias‖ / ‖f_true‖ − 1|."""
    from hf_topafa.evaluation.ground_truth import afa_relative_error

    true_norm = torch.linalg.vector_norm(codes, dim=-1)
    z_norm = torch.linalg.vector_norm(x - world.feature_dict.bias, dim=-1)
    return float(afa_relative_error(true_norm, z_norm).median())


def recorded_command(argv: list[str]) -> str:
    """The command a record keeps: paths inside the repository made relative to it, so that the
    record reads the same from any checkout."""

    def relative(arg: str) -> str:
        path = Path(arg)
        if path.is_absolute() and path.resolve().is_relative_to(REPO):
            return str(path.resolve().relative_to(REPO))
        return arg

    return "python scripts/synth_bench.py " + shlex.join(relative(a) for a in argv)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.topk and (args.plan or min(args.topk) < 1):
        raise SystemExit(f"--topk takes positive k and no --plan; got --topk {args.topk}"
                         f"{' --plan ' + args.plan if args.plan else ''}")  # fmt: skip
    args.command = recorded_command(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from hf_topafa.data.harvest import ActivationCache
    from hf_topafa.data.synthetic import load_world
    from hf_topafa.evaluation.ground_truth import TruthSet

    d_sae = args.d_sae or (4096 if "16k" in args.world else 1024)
    records = []
    summary_path = args.results / "summary.json"
    worlds = json.loads(summary_path.read_text())["worlds"] if summary_path.is_file() else {}
    if not args.report_only:
        train_cache, eval_cache = ensure_caches(args)
        world = load_world(args.world)
        truth = TruthSet.from_cache(ActivationCache(eval_cache), world.cfg.num_features)
        worlds[Path(args.world).stem] = facts = world_facts(args, truth, d_sae)
        codes = truth.rows(0, min(4096, truth.num_samples))
        with torch.no_grad():
            eval_x = world.feature_dict(codes)
        print(f"{Path(args.world).stem}: true L0 {facts['true_l0']}, over the {d_sae} most frequent "
              f"features {facts['true_l0_top_width'][str(d_sae)]}; the AFA on the truth: median "
              f"|‖x − bias‖/‖f_true‖ − 1| = {afa_error(world, codes, eval_x):.4f}", flush=True)  # fmt: skip
        for s in plan_of(args):
            record = ensure_record(args, s, d_sae, (train_cache, eval_x), world, truth)
            records.append(record)
            write_outputs(args, all_records(args.results), worlds)
    write_outputs(args, all_records(args.results), worlds)
    print(f"outputs in {args.results}")
    return 0


def all_records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "records").glob("*/*.json"))]


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
