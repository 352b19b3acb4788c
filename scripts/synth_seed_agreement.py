"""Does agreement between seeds pick the setting that finds the truth?

For every run name trained under both run folders (the same world, data and settings; another
initialization seed, ``synth_bench.py --init-seed``), the two dictionaries are matched to each
other (``agreement.dictionary_agreement``: the truth-free MCC) and each to the world's features
(SAELens's MCC); beside them, how far two fresh dictionaries of that shape agree by chance
and how far each trained one still agrees with its own start. If the
setting whose seeds agree most is the one whose dictionary is nearest the truth, agreement can
choose TopK's k where no truth exists (SmolLM2).

    python scripts/synth_seed_agreement.py runs/synthbench_flat/cache/synthsaebench-4k-flat-eval \\
        runs/synthbench_flat8m/runs/synthsaebench-4k-flat runs/synthbench_seeds/runs/synthsaebench-4k-flat \\
        --json results/synthbench/seeds/4k-flat-seeds.json --plot results/synthbench/seeds/4k-flat-seeds.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hf_topafa import SparseAutoencoder
from hf_topafa.data.harvest import ActivationCache
from hf_topafa.data.synthetic_cache import world_of_cache
from hf_topafa.evaluation.agreement import (
    dictionary_agreement,
    initialization_seed,
    moved_from_start,
)
from hf_topafa.helpers import script_command, write_json


def finished_runs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if (p / "config.json").is_file()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cache", help="the world's evaluation cache (names the world)")
    p.add_argument("first", type=Path, help="a folder of run folders (one seed)")
    p.add_argument("second", type=Path, help="the same run names trained from another seed")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="agreement against MCC with the truth, as PNG")
    args = p.parse_args()
    for folder in (args.first, args.second):
        if not folder.is_dir():
            raise SystemExit(f"{folder} is not a folder of run folders")
    torch.set_num_threads(1)
    world = world_of_cache(ActivationCache(args.cache).manifest)
    features = world.feature_dict.feature_vectors
    first, second = finished_runs(args.first), finished_runs(args.second)
    names = [name for name in first if name in second]
    if not names:
        raise SystemExit(f"no run name is finished in both {args.first} and {args.second}")
    rows = []
    for name in names:
        saes = [SparseAutoencoder.from_pretrained(f[name]) for f in (first, second)]
        a, b = (sae.W_dec for sae in saes)
        try:
            moved = [moved_from_start(str(f[name]), sae, initialization_seed(str(f[name])))
                     for sae, f in zip(saes, (first, second), strict=True)]  # fmt: skip
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        row = {"name": name, **{f"seeds_{k}": v for k, v in dictionary_agreement(a, b).items()},
               "truth_mcc": [dictionary_agreement(w, features)["mcc"] for w in (a, b)],
               "chance": moved[0]["chance"], "from_start": [m["from_start"] for m in moved]}  # fmt: skip
        print(json.dumps({k: [round(x, 3) for x in v] if isinstance(v, list) else
                          round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
              flush=True)  # fmt: skip
        rows.append(row)
    if args.json:
        write_json(args.json, {"cache": args.cache, "first": str(args.first),
                               "second": str(args.second), "rows": rows,
                               "command": script_command()})  # fmt: skip
    if args.plot:
        save_plot(rows, Path(args.cache).name.removesuffix("-eval"), args.plot)


def save_plot(rows: list[dict], world: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for row in rows:
        truth = sum(row["truth_mcc"]) / 2
        ax.scatter(row["seeds_mcc"], truth)
        ax.annotate(row["name"], (row["seeds_mcc"], truth), fontsize=7)
    ax.set_xlabel("agreement between two seeds (matched |cos|)")
    ax.set_ylabel("MCC with the true features (mean of the seeds)")
    ax.set_title(f"{world}\ndoes seed agreement find the truth?", fontsize=10)  # long names fit
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
