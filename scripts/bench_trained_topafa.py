"""Top-AFA step speed in the realistic dense regime: a trained SAE (e.g. the main job's, L0 ~1200
of 4608) on real SmolLM2 layer-15 activations, next to the paper's step, TopK at the same L0, a
dense ReLU-SAE step of the same shapes and the dense floor; each target marked met or missed.

    python scripts/bench_trained_topafa.py [RUN_FOLDER] [THREADS] [JSON_OUT]

Every package step is ``hf_topafa.train.train_step`` (through ``bench.PackageStep``).
"""

import statistics
import sys
import time

import torch

from hf_topafa import SparseAutoencoder
from hf_topafa.bench import bench
from hf_topafa.data.harvest import HarvestConfig, Harvester

threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(threads)
trained = SparseAutoencoder.from_pretrained(
    sys.argv[1] if len(sys.argv) > 1 else "runs/smollm2-topafa"
)
d_in, d_sae = trained.config.d_in, trained.config.d_sae
h = Harvester(HarvestConfig(layer=15, hook_point="resid_post", max_tokens=1024, holdout="eval"))
x = torch.cat([c.acts for c in h.iter_with_tokens(progress=False)])[:1024]
# a tiny learning rate: every step costs the same, but the weights (and so L0) barely move
cfg = bench.BenchConfig(d_in=d_in, d_sae=d_sae, batch=1024, threads=threads, lr=1e-9)
pkg = bench.PackageStep(cfg, "topafa", d_sae)
pkg.sae.load_state_dict(trained.state_dict())
paper = bench.PaperTopAFAStep(cfg, d_sae)
with torch.no_grad():
    for p, n in zip(paper.params, ["W_enc", "W_dec", "b_enc", "b_dec"], strict=True):
        p.copy_(getattr(trained, n))
warmup_l0 = []
for _ in range(3):  # L0 settles over the first steps (the decoder rows are renormalized)
    pkg(x)
    warmup_l0.append(pkg.last_l0)
k = round(warmup_l0[-1])
topk = bench.PackageStep(cfg, "topk", d_sae, k=k)
topk.sae.load_state_dict(trained.state_dict())
relu = bench.PackageStep(cfg, "relu", d_sae)  # same shapes; its own weights
dense = bench.DenseFloor(cfg, d_sae)
steps = {"paper_topafa": paper, "topafa": pkg, "topk": topk, "relu": relu, "dense_floor": dense}
for s in steps.values():
    s(x)
times = {n: [] for n in steps}
names = list(steps)
for round_ in range(9):
    shift = round_ % len(names)  # rotated rounds, as hf-topafa bench: no step always goes first
    for n in names[shift:] + names[:shift]:
        s = steps[n]
        t = time.perf_counter()
        s(x)
        times[n].append(time.perf_counter() - t)
variants = {n: {"median_s": statistics.median(v), "times_s": v} for n, v in times.items()}
print(f"top-AFA mean L0 {pkg.last_l0:.0f} of {d_sae}; TopK k={k}; {threads} threads")
for n, v in variants.items():
    print(f"{n:12s} {v['median_s'] * 1e3:8.0f} ms")
report = {"ratios": bench.ratios(variants), "variants": variants}
judged = bench.targets(report)
for name, value in report["ratios"].items():
    mark = bench._mark(judged[name]) if name in judged else ""
    print(f"{name:26s} {value:6.2f}  {mark}")
if len(sys.argv) > 3:
    from hf_topafa.helpers import write_json

    report.update(targets=judged, mean_l0=pkg.last_l0, k_for_topk=k, threads=threads)
    write_json(sys.argv[3], report)
    print(f"wrote {sys.argv[3]}")
