"""Reproduce the paper's comparison (Lee et al., arXiv 2503.24277) on a real language model.

For each of three middle layers: harvest activations once (cached), train TopK and BatchTopK
over k in powers of two and top-AFA over lambda_AFA, evaluate every SAE on held-out text, and
write the table (CSV + Markdown), the L0 - normalized-MSE plot per layer and the per-layer
half-violins into a results folder, with the exact command, hardware and wall times.

Data split: windows of ``--context-length`` tokens; every 10th window is held out
(``holdout="eval"``), the others are the training text (``holdout="train"``).
Evaluation: reconstruction, sparsity and AFA numbers on ``--eval-tokens`` held-out activations;
loss recovered and KL on the first ``--downstream-tokens`` held-out positions (the language model
runs once clean, once zero-ablated per layer and once per SAE).

The defaults fit a CPU budget (embedded SmolLM2-135M-Instruct, d = 576, expansion 4, a few tens
of thousands of tokens). The paper's setting is reached with flags, on a GPU, e.g.::

    python scripts/reproduce_paper.py --model gpt2 --layers 6 7 8 --dataset Skylion007/openwebtext \\
        --train-tokens 80000000 --expansion 16 --ks 16 32 64 128 256 --batch-size 4096 \\
        --lr 3e-4 --disk-cache --device cuda --eval-tokens 1000000 --downstream-tokens 65536
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import platform
import shlex
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch
from safetensors import safe_open

from hf_topafa import SparseAutoencoder
from hf_topafa.data import lm
from hf_topafa.data.harvest import HarvestConfig, Harvester, batched, dataset_name
from hf_topafa.evaluation import evaluate as ev
from hf_topafa.evaluation import plots
from hf_topafa.helpers import save_safetensors, write_text
from hf_topafa.sae.rules import ACTIVATIONS, NEEDS_K

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "results" / "paper_comparison"
AFA_COEFS = ("1/128", "1/64", "1/32", "1/24", "1/16")
K_RULES = NEEDS_K  # rules with a k: the baselines, trained over --ks
VIOLIN_QUANTILES = 201  # per-token quantiles kept in each record, for the violins
COLUMNS = (
    "layer", "seed", "activation", "k", "afa_coef", "l0", "normalized_mse", "fvu", "loss_recovered",
    "kl_div", "eps_lbo_median", "within_0.5", "dead_features", "train_steps", "train_seconds",
    "vs_topk",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="language model; default: embedded SmolLM2")
    p.add_argument("--layers", type=int, nargs="+", default=[12, 15, 18])
    p.add_argument("--hook-point", default="resid_post", choices=lm.HOOK_POINTS)
    p.add_argument("--dataset", default=None, help="default: the bundled WikiText-2 sample")
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--train-tokens", type=int, default=16384)
    p.add_argument("--eval-tokens", type=int, default=2048)
    p.add_argument("--downstream-tokens", type=int, default=254)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--afa-coefs", nargs="+", default=list(AFA_COEFS), help="fractions allowed")
    p.add_argument(
        "--activations", nargs="+", default=["topk", "batchtopk", "topafa"],
        choices=sorted(set(ACTIVATIONS) - {"relu", "jumprelu"}),
        help="rules to train; rules with a k run over --ks, k-free rules over --afa-coefs",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training tokens")
    p.add_argument(
        "--layer-tokens", nargs="+", default=[], metavar="LAYER=N",
        help="training tokens per SAE at a layer (overrides --epochs there), e.g. 15=1048576;\n"
        "when N exceeds the harvested tokens, training makes several passes over them",
    )  # fmt: skip
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (the paper's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results folder (committed)")
    p.add_argument(
        "--disk-cache", action="store_true",
        help="harvest training activations to on-disk caches (one per layer) instead of memory;\n"
        "needed at the paper's scale (80M tokens do not fit in memory)",
    )  # fmt: skip
    p.add_argument(
        "--report-only", action="store_true", help="train nothing; report the finished runs"
    )
    p.add_argument("--work", default=None, help="activation cache and trained SAEs (not committed)")
    p.add_argument(
        "--threads-file", default=None,
        help="a file holding a torch thread count, re-read before each SAE (so a long run can\n"
        "take more cores when the machine frees up)",
    )  # fmt: skip
    return p


# --------------------------------------------------------------------------------------------
# Harvest: all layers in one truncated forward, train and held-out splits cached once


def _settings(args, split: str) -> dict:
    return {
        "model": args.model or lm.DEFAULT_MODEL,
        "layers": sorted(set(args.layers)),
        "hook_point": args.hook_point,
        "dataset": dataset_name(args.dataset),
        "dataset_config": args.dataset_config,
        "context_length": args.context_length,
        "split": split,
        "tokens": args.train_tokens if split == "train" else args.eval_tokens,
    }


def same_harvest(cached: dict, wanted: dict) -> bool:
    """A cache serves a request with the same settings whose layers it holds (a run of some
    layers reuses the cache of all three)."""
    rest = {k: v for k, v in cached.items() if k != "layers"}
    return rest == {k: v for k, v in wanted.items() if k != "layers"} and set(
        wanted["layers"]
    ) <= set(cached.get("layers", []))


def harvest(args, split: str, path: Path) -> dict[int, torch.Tensor]:
    """Activations {layer: [N, d]} of the ``split`` windows, read from ``path`` or harvested."""
    settings = _settings(args, split)
    if path.is_file():
        with safe_open(str(path), framework="pt") as fh:
            cached = json.loads(fh.metadata().get("settings", "{}"))
            if same_harvest(cached, settings):
                print(f"reusing cached {split} activations {path}")
                return {layer: fh.get_tensor(f"L{layer}") for layer in settings["layers"]}
    from tqdm.auto import tqdm

    layers = settings["layers"]
    harvester = Harvester(
        HarvestConfig(
            model=args.model,
            layer=layers[-1],
            hook_point=args.hook_point,
            dataset=args.dataset,
            dataset_config=args.dataset_config,
            context_length=args.context_length,
            holdout=split,
            device=args.device,
        )  # fmt: skip
    )
    for layer in layers:
        lm.validate_hook(harvester.model, layer, args.hook_point)
    wanted = settings["tokens"]
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    count = 0
    bar = tqdm(total=wanted, unit="tok", desc=f"harvest {split}")
    for batch in batched(harvester.windows(), 8):
        ids = torch.stack(batch).to(harvester.device)
        keep = harvester.keep_mask(ids)
        rows, cols = keep.nonzero(as_tuple=True)
        rows, cols = rows[: wanted - count], cols[: wanted - count]
        captured = lm.truncated_forward_layers(harvester.model, ids, layers, args.hook_point)
        for layer in layers:
            parts[layer].append(captured[layer][rows, cols].float().cpu())
        count += len(rows)
        bar.update(len(rows))
        if count >= wanted:
            break
    bar.close()
    if count == 0:
        raise ValueError(f"the dataset gave no {split} tokens to harvest")
    acts = {layer: torch.cat(parts[layer]) for layer in layers}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(path, {f"L{k}": v for k, v in acts.items()},
                     metadata={"settings": json.dumps(settings)})  # fmt: skip
    return acts


# --------------------------------------------------------------------------------------------
# Train


def sae_grid(args) -> list[dict]:
    """One entry per SAE to train at each layer: activation, k, afa_coef. Rules that take a k
    (TopK, BatchTopK) run over ``--ks`` without the AFA loss, as in the paper; k-free rules
    (top-AFA and its variants) run over ``--afa-coefs``."""
    grid = []
    for activation in args.activations:
        if activation in K_RULES:
            grid += [{"activation": activation, "k": k, "afa_coef": "0"} for k in args.ks]
        else:
            grid += [{"activation": activation, "k": None, "afa_coef": c} for c in args.afa_coefs]
    return grid


def training_order(grid: list[dict]) -> list[dict]:
    """The order SAEs are trained in, most informative first, so that a run stopped early has
    the extremes of top-AFA's lambda and the TopK frontier; the tables keep the grid's order."""

    def rank(spec):
        if spec["activation"] not in K_RULES:
            coefs = [g["afa_coef"] for g in grid if g["activation"] == spec["activation"]]
            i = coefs.index(spec["afa_coef"])
            first = spec["activation"] == "topafa" and i in (0, len(coefs) - 1, len(coefs) // 2)
            return (0 if first else 2, i)
        return (1 if spec["activation"] == "topk" else 3, spec["k"])

    return sorted(grid, key=rank)


def run_name(layer: int, spec: dict, seed: int = 0) -> str:
    """L15_topk_k32, L15_topafa_afa1-32; a seed other than 0 adds _s<seed> (a replicate)."""
    if spec["k"] is None:
        name = f"L{layer}_{spec['activation']}_afa{spec['afa_coef'].replace('/', '-')}"
    else:
        name = f"L{layer}_{spec['activation']}_k{spec['k']}"
    return name if seed == 0 else f"{name}_s{seed}"


def disk_caches(args, work: Path) -> dict[int, Path]:
    """--disk-cache: one activation cache of the training windows per layer (hf_topafa.harvest)."""
    from hf_topafa.data.harvest import write_cache

    caches = {}
    for layer in sorted(set(args.layers)):
        cfg = HarvestConfig(
            model=args.model, layer=layer, hook_point=args.hook_point, dataset=args.dataset,
            dataset_config=args.dataset_config, context_length=args.context_length,
            holdout="train", max_tokens=args.train_tokens, device=args.device,
        )  # fmt: skip
        caches[layer] = write_cache(cfg, work / f"train_cache_L{layer}")
    return caches


def set_threads(path: str | None) -> None:
    if path and Path(path).is_file():
        with contextlib.suppress(ValueError):
            torch.set_num_threads(max(1, int(Path(path).read_text().strip())))


def layer_tokens(args) -> dict[int, int]:
    """--layer-tokens 15=1048576 ... as {layer: tokens}."""
    out = {}
    for item in args.layer_tokens:
        layer, _, n = item.partition("=")
        out[int(layer)] = int(n)
    return out


def wanted_settings(args, layer: int, spec: dict, n_rows: int) -> dict:
    """The settings that make a finished SAE reusable: a record with other settings is stale."""
    tokens = layer_tokens(args).get(layer, int(args.epochs * n_rows))
    return {
        "layer": layer, "activation": spec["activation"], "k": spec["k"],
        "afa_coef": float(Fraction(spec["afa_coef"])), "expansion_factor": args.expansion,
        "max_tokens": tokens // args.batch_size * args.batch_size,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "loss_convention": "paper", "input_normalization": "layer_norm", "init": "kaiming",
    }  # fmt: skip


def train_one(args, wanted: dict, acts: torch.Tensor | Path, eval_x, run_dir: Path) -> dict:
    """Train one SAE with hf_topafa.train on activations in memory or in a cache folder, or reuse
    the finished weights in ``run_dir``; returns the run's training metrics."""
    from hf_topafa.training.train import METRICS, TrainConfig, train
    from hf_topafa.training.train_config import flat_training_config

    if (run_dir / METRICS).is_file() and (run_dir / "model.safetensors").is_file():
        saved = flat_training_config(json.loads((run_dir / "training_config.json").read_text()))
        if all(saved.get(k) == v for k, v in wanted.items() if k != "layer"):
            return json.loads((run_dir / METRICS).read_text())
        print(f"   {run_dir.name} was trained with other settings; training again")
    on_disk = isinstance(acts, Path)
    config = TrainConfig.from_flat(
        model=args.model or lm.DEFAULT_MODEL, hook_point=args.hook_point, dataset=args.dataset,
        dataset_config=args.dataset_config, context_length=args.context_length, **wanted,
        eval_tokens=min(1024, len(eval_x)), output=str(run_dir), overwrite=True,
        checkpoint_every=0 if not on_disk else 1000, log_with="none",
        progress=sys.stderr.isatty(), activation_cache=str(acts) if on_disk else None,
    )  # fmt: skip
    train(config, data=None if on_disk else acts, eval_data=eval_x)
    return json.loads((run_dir / METRICS).read_text())


def evaluate_run(args, run_dir: Path, eval_x: torch.Tensor) -> tuple[dict, dict]:
    """Held-out metrics of one SAE (activation-level, then downstream) and the quantiles of its
    per-token normalized MSE and eps_LBO (what the violins need, small enough to commit)."""
    sae = SparseAutoencoder.from_pretrained(run_dir).eval()
    metrics, details = ev.evaluate_activations(sae, eval_x, device=args.device)
    if args.downstream_tokens > 0:
        cfg = ev.EvalConfig(
            model=args.model, dataset=args.dataset, dataset_config=args.dataset_config,
            context_length=args.context_length, max_tokens=args.downstream_tokens,
            holdout="eval", device=args.device, batch_windows=2,
        )  # fmt: skip
        ((downstream, _),) = ev.evaluate_saes([sae], cfg, token_texts=False)
        metrics["downstream"] = downstream["downstream"]
    qs = torch.linspace(0, 1, VIOLIN_QUANTILES, dtype=torch.float64)
    per_token = {
        name: [float(f"{v:.5g}") for v in torch.quantile(values.double(), qs).tolist()]
        for name, values in (
            ("normalized_mse", details.normalized_mse),
            ("eps_lbo", details.eps_lbo),
        )
    }
    return metrics, per_token


def ensure_record(args, layer, spec, acts, eval_x, work: Path, records: Path) -> dict | None:
    """The committed record of one SAE: read when it exists with the wanted settings (a finished
    SAE is never trained twice, even on a machine without the work folder), otherwise trained,
    evaluated and written at once. None with --report-only when it is missing."""
    name = run_name(layer, spec, args.seed)
    path = records / f"{name}.json"
    n_rows = args.train_tokens if isinstance(acts, Path) else len(acts)
    wanted = wanted_settings(args, layer, spec, n_rows)
    if path.is_file():
        record = json.loads(path.read_text())
        if record["settings"] == wanted:
            return record
        print(f"   {name}: its record has other settings; training again")
    if args.report_only:
        return None
    set_threads(args.threads_file)
    print(f"== {name} ({torch.get_num_threads()} threads)", flush=True)
    run_dir = work / "runs" / name
    info = train_one(args, wanted, acts, eval_x, run_dir)
    metrics, per_token = evaluate_run(args, run_dir, eval_x)
    record = {"name": name, "layer": layer, "spec": spec, "settings": wanted, "train": info,
              "metrics": metrics, "per_token_quantiles": per_token, "command": args.command}  # fmt: skip
    records.mkdir(parents=True, exist_ok=True)
    ev.write_json(record, path)
    return record


# --------------------------------------------------------------------------------------------
# Report


def other_records(records: Path, runs: list[dict]) -> list[dict]:
    """Records in the folder beyond this invocation's grid (e.g. a k-free rule run on its own):
    the report always covers every finished SAE."""
    seen = {r["name"] for r in runs}
    found = [json.loads(path.read_text()) for path in sorted(records.glob("*.json"))]
    return [r for r in found if r["name"] not in seen]


def report_order(run: dict) -> tuple:
    """Layer, then the registry's rule order, then k or lambda_AFA."""
    spec = run["spec"]
    rule = ACTIVATIONS.index(spec["activation"]) if spec["activation"] in ACTIVATIONS else 99
    coef = float(Fraction(spec["afa_coef"]))
    return (run["layer"], rule, spec["k"] or 0, coef, run["settings"]["seed"])


def table_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for run in runs:
        m = run["metrics"]
        down = m.get("downstream", {})
        rows.append({
            "layer": run["layer"],
            "seed": run["settings"]["seed"],
            "activation": run["spec"]["activation"],
            "k": run["spec"]["k"] if run["spec"]["k"] is not None else "",
            "afa_coef": run["spec"]["afa_coef"] if run["spec"]["k"] is None else "",
            "l0": round(m["sparsity"]["l0_mean"], 2),
            "normalized_mse": round(m["reconstruction"]["normalized_mse"], 4),
            "fvu": round(m["reconstruction"]["fvu"], 4),
            "loss_recovered": round(down["loss_recovered"], 4) if down else "",
            "kl_div": round(down["kl_div"], 4) if down else "",
            "eps_lbo_median": f"{m['afa']['eps_lbo_quartiles']['q50']:.3g}",
            "within_0.5": round(m["afa"]["bands"]["0.5"]["within"], 3),
            "dead_features": m["sparsity"]["dead_features"],
            "train_steps": run["train"].get("steps", ""),
            "train_seconds": round(run["train"].get("train_time_s", 0.0), 1),
        })  # fmt: skip
    return rows


def topk_frontier(rows: list[dict], layer: int, l0: float) -> float | None:
    """TopK's normalized MSE at ``l0`` on ``layer``, interpolated log-log between the two TopK
    SAEs around it; None outside their range (no extrapolation)."""
    points = sorted(
        (float(r["l0"]), float(r["normalized_mse"]))
        for r in rows
        if r["layer"] == layer and r["activation"] == "topk" and r["seed"] == 0
    )
    for (l0_a, mse_a), (l0_b, mse_b) in zip(points, points[1:], strict=False):
        if l0_a <= l0 <= l0_b:
            t = (math.log(l0) - math.log(l0_a)) / (math.log(l0_b) - math.log(l0_a))
            return math.exp(math.log(mse_a) + t * (math.log(mse_b) - math.log(mse_a)))
    return None


def add_frontier_ratios(rows: list[dict]) -> None:
    """vs_topk: any other rule's normalized MSE over TopK's at the same L0 (below 1: better)."""
    for row in rows:
        other = row["activation"] != "topk"
        frontier = topk_frontier(rows, row["layer"], row["l0"]) if other else None
        row["vs_topk"] = round(row["normalized_mse"] / frontier, 3) if frontier else ""


def write_tables(rows: list[dict], out: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "table.csv", buf.getvalue())
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    write_text(out / "table.md", "\n".join(lines) + "\n")


def write_summary(args, runs: list[dict], rows: list[dict], out: Path) -> None:
    """summary.json: the comparison in one documented shape (k is null for rules without one)."""
    main_layer = 15 if 15 in args.layers else sorted(args.layers)[len(args.layers) // 2]
    first = runs[0] if runs else None
    summary = {
        "model": args.model or lm.DEFAULT_MODEL,
        "hook_point": args.hook_point,
        "d_sae": first["metrics"]["sae"]["d_sae"] if first else None,
        "main_layer": main_layer,
        "train_tokens": {
            str(layer): max(r["train"]["tokens_trained"] for r in runs if r["layer"] == layer)
            for layer in sorted({r["layer"] for r in runs})
        },
        "eval_tokens": first["metrics"]["num_tokens"] if first else 0,
        "rows": [
            {
                "layer": row["layer"],
                "activation": row["activation"],
                "k": run["spec"]["k"],
                "afa_coef": float(Fraction(run["spec"]["afa_coef"])),
                "l0": row["l0"],
                "normalized_mse": row["normalized_mse"],
                "fvu": row["fvu"],
                "loss_recovered": row["loss_recovered"] if row["loss_recovered"] != "" else None,
                "eps_lbo_median": float(row["eps_lbo_median"]),
                "within_0.5": row["within_0.5"],
                "dead": row["dead_features"],
            }
            for run, row in zip(runs, rows, strict=True)
            if row["seed"] == 0  # replicates with other seeds are in table.csv
        ],
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def write_figures(runs: list[dict], rows: list[dict], out: Path) -> None:
    for layer in sorted({r["layer"] for r in rows}):
        plots.save_l0_mse_plot(
            [r for r in rows if r["layer"] == layer], out / f"l0_vs_nmse_L{layer}.png",
            title=f"Layer {layer}: L0 vs normalized MSE (held-out)",
        )  # fmt: skip
    # Half-violins across layers for each rule's middle setting among those every layer has
    # (seed 0), from the records' per-token quantiles (carried-over records have none).
    for activation in sorted({r["spec"]["activation"] for r in runs}):
        mine = [
            r for r in runs if r["spec"]["activation"] == activation and r["settings"]["seed"] == 0
        ]
        layers = {r["layer"] for r in mine}
        common = [
            spec
            for spec in {setting(r["spec"]): r["spec"] for r in mine}.values()
            if all(any(setting(r["spec"]) == setting(spec) for r in mine if r["layer"] == layer)
                   for layer in layers)
        ]  # fmt: skip
        common.sort(key=lambda spec: (spec["k"] or 0, float(Fraction(spec["afa_coef"]))))
        middle = setting(common[(len(common) - 1) // 2])
        per_layer = {
            f"layer {r['layer']}": r["per_token_quantiles"]
            for r in mine
            if setting(r["spec"]) == middle and r.get("per_token_quantiles")
        }
        if per_layer:
            plots.save_half_violins(
                per_layer, out / f"violins_{middle}.png",
                title=f"{middle}: per-token normalized MSE and eps_LBO by layer",
            )  # fmt: skip


def setting(spec: dict) -> str:
    """A rule's setting as in its run name: topk_k32, topafa_afa1-32."""
    return run_name(0, spec).split("_", 1)[1]


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, IndexError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    with contextlib.suppress(OSError, AttributeError):
        mem += f"; load average at the end {os.getloadavg()[0]:.1f} (other jobs share the machine)"
    return (
        f"{cpu}; {os.cpu_count()} CPU cores visible, torch threads {torch.get_num_threads()}"
        f"{mem}; {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command = "python scripts/reproduce_paper.py " + shlex.join(argv)
    for c in args.afa_coefs:
        Fraction(c)  # fail early on a malformed coefficient
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = out / "runs"
    work = Path(args.work) if args.work else lm.cache_root() / "reproduce_paper"

    t = time.perf_counter()
    if args.disk_cache:
        train_acts = disk_caches(args, work)
    else:
        train_acts = harvest(args, "train", work / "train_activations.safetensors")
    eval_acts = harvest(args, "eval", work / "eval_activations.safetensors")
    harvest_s = time.perf_counter() - t

    runs = []
    main_first = sorted(set(args.layers), key=lambda layer: (layer != 15, layer))
    for layer in main_first:  # the main layer first: a partial run still answers the question
        for spec in training_order(sae_grid(args)):
            record = ensure_record(
                args, layer, spec, train_acts[layer], eval_acts[layer], work, records
            )
            if record is None:
                print(f"   missing (--report-only): {run_name(layer, spec, args.seed)}")
            else:
                runs.append(record)
    runs = sorted(runs + other_records(records, runs), key=report_order)

    rows = table_rows(runs)
    add_frontier_ratios(rows)
    write_tables(rows, out)
    write_figures(runs, rows, out)
    write_summary(args, runs, rows, out)
    total = time.perf_counter() - started
    n_eval = {layer: len(a) for layer, a in eval_acts.items()}
    in_grid = {run_name(layer, spec, args.seed) for layer in args.layers for spec in sae_grid(args)}
    commands: dict[str, list[str]] = {}
    for run in runs:
        commands.setdefault(run.get("command", "(command not recorded)"), []).append(run["name"])
    made_by = "".join(
        f"\n```\n{command}\n```\n{len(names)} SAEs: {', '.join(names)}\n"
        for command, names in commands.items()
    )
    write_text(
        out / "COMMAND.md",
        "# How this folder was produced\n\n"
        "Each finished SAE is recorded in `runs/<name>.json` (settings, training metrics, held-out "
        "metrics, per-token quantiles, the command) as soon as it is evaluated; a record with the "
        "wanted settings is never trained again, so a command resumes on any machine. The tables, "
        "plots and `summary.json` are made from every record in the folder, by any of the "
        "commands below with `--report-only`.\n"
        f"{made_by}\n"
        f"- Reported: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{sum(r['name'] in in_grid for r in runs)} of this grid's {len(in_grid)} SAEs and "
        f"{sum(r['name'] not in in_grid for r in runs)} other records\n"
        f"- Hardware of this report: {hardware()}\n"
        f"- Wall time of this invocation: {total / 60:.1f} min (harvest or cache read "
        f"{harvest_s / 60:.1f}); each SAE's own training time is `train_seconds` in table.csv\n"
        f"- Held-out tokens per layer: {n_eval}\n",
    )
    print(open(out / "table.md").read())
    print(f"done in {total / 60:.1f} min; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
