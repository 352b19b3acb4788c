"""Top-AFA step speed in the realistic dense regime: the main job's trained SAE (L0 ~1300 of
4608) on real SmolLM2 layer-15 activations, next to the paper's step and TopK at the same L0."""

import statistics
import sys
import time

import torch

from hf_topafa import SparseAutoencoder, bench
from hf_topafa.harvest import HarvestConfig, Harvester

torch.set_num_threads(2)
trained = SparseAutoencoder.from_pretrained(
    sys.argv[1] if len(sys.argv) > 1 else "runs/smollm2-topafa"
)
h = Harvester(HarvestConfig(layer=15, hook_point="resid_post", max_tokens=1024, holdout="eval"))
x = torch.cat([c.acts for c in h.iter_with_tokens(progress=False)])[:1024]
cfg = bench.BenchConfig(d_in=576, d_sae=4608, batch=1024)
pkg = bench.PackageStep(cfg, "topafa", 4608)
pkg.sae.load_state_dict(trained.state_dict())
paper = bench.PaperTopAFAStep(cfg, 4608)
with torch.no_grad():
    for p, n in zip(paper.params, ["W_enc", "W_dec", "b_enc", "b_dec"], strict=True):
        p.copy_(getattr(trained, n))
pkg(x)
k = round(pkg.last_l0)
topk = bench.PackageStep(cfg, "topk", 4608, k=k)
topk.sae.load_state_dict(trained.state_dict())
dense = bench.DenseFloor(cfg, 4608)
steps = {"paper": paper, "topafa": pkg, "topk": topk, "dense_floor": dense}
for s in steps.values():
    s(x)
times = {n: [] for n in steps}
for _ in range(7):
    for n, s in steps.items():
        t = time.perf_counter()
        s(x)
        times[n].append(time.perf_counter() - t)
med = {n: statistics.median(v) * 1000 for n, v in times.items()}
print(f"top-AFA mean L0 {pkg.last_l0:.0f} of 4608; TopK k={k}")
for n, m in med.items():
    print(f"{n:12s} {m:8.0f} ms")
print(
    f"paper/topafa {med['paper'] / med['topafa']:.2f}  topafa/dense {med['topafa'] / med['dense_floor']:.2f}  topafa/topk {med['topafa'] / med['topk']:.2f}"
)
