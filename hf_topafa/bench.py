"""`hf-topafa bench`: time one SAE training step next to the paper's step, a dense ReLU-SAE step
and the dense floor, and mark the performance targets met or missed.

Variants, timed side by side in interleaved rounds (A, B, C, ... A, B, C, ...) so that a busy
machine slows them alike; each reports the median of its timed rounds after warm-up:

- ``paper_topafa``: the published top-AFA step written plainly (full sort of every token's
  contributions, dense masks and products, W_dec W_dec^T formed on every forward to log the
  decoder's quasi-orthogonality), then backward, Adam, decoder renormalisation.
- ``topafa``, ``topk``, ``batchtopk``, ``relu``: this package's step, ``hf_topafa.train.train_step``
  itself (forward with a dead mask, backward, gradient clipping, decoder-parallel gradient
  removed, decoder renormalised, Adam). TopK and BatchTopK use k = top-AFA's mean L0 measured
  during warm-up; ``relu`` is a dense ReLU SAE with its L1 penalty, same shapes.
- ``dense_floor``: the six dense matrix products every SAE step needs at these sizes (encoder and
  decoder, forward and backward).

``--encoder-scale`` multiplies every variant's fresh W_enc, which sets how many features top-AFA
keeps (a trained top-AFA SAE keeps hundreds: 1.02 gives about 32% of d_sae).

Peak memory on CPU is measured in a fresh subprocess per variant: the peak resident set size
(Linux ``VmHWM``, reset after imports) minus the resident set after imports. On CUDA it is
``torch.cuda.max_memory_allocated`` (minus what was allocated before the variant was built).

By default the benchmark runs with ``OMP_WAIT_POLICY=PASSIVE`` (re-running itself if needed): on a
shared, oversubscribed CPU, spinning OpenMP threads stall steps made of many short kernels.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

import torch

from .bench_config import (  # noqa: F401 - re-exported: the config and its CLI live there
    VARIANTS,
    BenchConfig,
    BenchRun,
    build_parser,
)
from .helpers import torch_dtype, write_json

# -- the steps ----------------------------------------------------------------------------------


def dead_mask_for(d_sae: int, fraction: float, device) -> torch.Tensor:
    """Every round(1/fraction)-th feature is dead (none when fraction is 0)."""
    mask = torch.zeros(d_sae, dtype=torch.bool, device=device)
    if fraction > 0:
        mask[:: max(1, round(1 / fraction))] = True
    return mask


def make_optimizer(params, cfg: BenchConfig) -> torch.optim.Optimizer:
    kind = {"fused": {"fused": True}, "foreach": {"foreach": True}}[cfg.adam]
    return torch.optim.Adam(params, lr=cfg.lr, **kind)


class PackageStep:
    """This package's training step for one activation rule: ``train.train_step``, the function
    the trainer calls, with the trainer's default clipping and a constant learning rate."""

    def __init__(self, cfg: BenchConfig, activation: str, d_sae: int, k: int | None = None):
        from .configuration_sae import SAEConfig
        from .modeling_sae import SparseAutoencoder
        from .train_config import TrainConfig

        torch.manual_seed(cfg.seed)
        sae_cfg = SAEConfig(d_in=cfg.d_in, d_sae=d_sae, activation=activation, k=k)
        self.sae = SparseAutoencoder(sae_cfg).to(cfg.device, torch_dtype(cfg.dtype)).train()
        with torch.no_grad():
            self.sae.W_enc.mul_(cfg.encoder_scale)
        self.opt = make_optimizer(self.sae.parameters(), cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: 1.0)
        self.train_config = TrainConfig()  # only its step settings are read (max_grad_norm)
        self.accelerator = _accelerator(cfg.device)
        self.dead_mask = dead_mask_for(d_sae, cfg.dead_fraction, cfg.device)
        self.last_l0 = float("nan")

    def __call__(self, x: torch.Tensor) -> None:
        from .train import train_step

        out = train_step(
            self.sae,
            self.sae,
            self.opt,
            self.scheduler,
            x,
            self.dead_mask,
            self.train_config,
            self.accelerator,
        )
        self.last_l0 = out.l0.float().mean().item()


_ACCELERATORS: dict[str, object] = {}


def _accelerator(device: str):
    """One single-process Accelerator per device (what ``train`` builds, without precision
    casts: the bench sets the dtype itself)."""
    if device not in _ACCELERATORS:
        from accelerate import Accelerator

        _ACCELERATORS[device] = Accelerator(
            cpu=torch.device(device).type == "cpu", mixed_precision="no"
        )
    return _ACCELERATORS[device]


class PaperTopAFAStep:
    """The published top-AFA step, written plainly for comparison (not used for training).

    Per step: pre = ReLU((x - b_dec) W_enc + b_enc); a full descending sort of every token's
    decoder-scaled contributions; cumulative sum; k = argmin |sqrt(cumsum) - ||x - b_dec|||; a
    dense mask; a dense decoder product; MSE + lambda_AFA norm loss + aux-k loss; and
    W_dec W_dec^T (d_sae x d_sae) on every forward to log max / mean |cos| between decoder rows.
    Then backward, Adam, decoder renormalisation.
    """

    def __init__(self, cfg: BenchConfig, d_sae: int, afa_coef=1 / 32, aux_k=512, aux_coef=1 / 32):
        torch.manual_seed(cfg.seed)
        dtype, device = torch_dtype(cfg.dtype), cfg.device
        w = torch.randn(d_sae, cfg.d_in)
        w /= w.norm(dim=-1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w.to(device, dtype))
        self.W_enc = torch.nn.Parameter((w.T * cfg.encoder_scale).contiguous().to(device, dtype))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae, device=device, dtype=dtype))
        self.b_dec = torch.nn.Parameter(torch.zeros(cfg.d_in, device=device, dtype=dtype))
        self.params = [self.W_enc, self.W_dec, self.b_enc, self.b_dec]
        self.opt = make_optimizer(self.params, cfg)
        self.dead_mask = dead_mask_for(d_sae, cfg.dead_fraction, device)
        self.afa_coef, self.aux_k, self.aux_coef = afa_coef, aux_k, aux_coef
        self.stats: dict[str, float] = {}
        self.last_k = None

    def forward(self, x: torch.Tensor):
        centered = x - self.b_dec
        pre = torch.relu(centered @ self.W_enc + self.b_enc)
        norms = self.W_dec.norm(dim=-1)
        contributions = (pre.detach() * norms.detach()) ** 2
        values, order = contributions.sort(dim=-1, descending=True, stable=True)
        cumulative = values.cumsum(-1).sqrt()
        target = centered.detach().norm(dim=-1, keepdim=True)
        k = (cumulative - target).abs().argmin(dim=-1) + 1
        ranks = torch.arange(pre.shape[-1], device=x.device).expand_as(pre)
        mask = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, order, ranks < k.unsqueeze(-1))
        acts = pre * mask
        recon = acts @ self.W_dec + self.b_dec
        total = x.pow(2).sum()
        mse = (recon - x).pow(2).sum() / total
        f_norm = ((acts * norms).pow(2).sum(-1) + self.b_dec.pow(2).sum()).sqrt()
        afa = (f_norm - x.norm(dim=-1)).pow(2).sum() / total
        aux = pre.new_zeros(())
        n_dead = int(self.dead_mask.sum())
        if n_dead:
            dead_pre = pre * self.dead_mask
            top, idx = dead_pre.topk(min(self.aux_k, n_dead), dim=-1)
            aux_recon = torch.zeros_like(pre).scatter(-1, idx, top) @ self.W_dec
            residual = (x - recon).detach()
            aux = (aux_recon - residual).pow(2).sum() / residual.pow(2).sum()
        with torch.no_grad():  # logged every step in the published code
            unit = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
            cos = (unit @ unit.T).abs()
            cos.fill_diagonal_(0)
            n = cos.shape[0]
            self.stats = {
                "max_abs_cos": cos.max().item(),
                "mean_abs_cos": cos.sum().item() / (n * (n - 1)),
            }
        self.last_k = k
        return mse + self.afa_coef * afa + self.aux_coef * aux, acts

    def __call__(self, x: torch.Tensor) -> None:
        loss, _ = self.forward(x)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True)


class DenseFloor:
    """The six dense products of an SAE step: encoder and decoder, forward and backward."""

    def __init__(self, cfg: BenchConfig, d_sae: int):
        dtype, device = torch_dtype(cfg.dtype), cfg.device
        g = torch.Generator(device="cpu").manual_seed(cfg.seed)
        make = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
        self.W_enc, self.W_dec = make(cfg.d_in, d_sae), make(d_sae, cfg.d_in)
        self.x, self.acts = make(cfg.batch, cfg.d_in), make(cfg.batch, d_sae)
        self.grad_pre, self.grad_recon = make(cfg.batch, d_sae), make(cfg.batch, cfg.d_in)

    def __call__(self, x: torch.Tensor) -> None:
        self.x @ self.W_enc  # encoder forward
        self.x.T @ self.grad_pre  # encoder weight gradient
        self.grad_pre @ self.W_enc.T  # encoder input gradient
        self.acts @ self.W_dec  # decoder forward
        self.acts.T @ self.grad_recon  # decoder weight gradient
        self.grad_recon @ self.W_dec.T  # decoder input gradient


def build_variant(name: str, cfg: BenchConfig, d_sae: int, k: int | None):
    if name == "paper_topafa":
        return PaperTopAFAStep(cfg, d_sae)
    if name == "dense_floor":
        return DenseFloor(cfg, d_sae)
    return PackageStep(cfg, name, d_sae, k if name in ("topk", "batchtopk") else None)


def make_batch(cfg: BenchConfig, batch: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    return torch.randn(batch, cfg.d_in, generator=g).to(cfg.device, torch_dtype(cfg.dtype))


# -- timing -------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_variants(cfg: BenchConfig) -> dict:
    """Interleaved rounds; returns per-variant times, medians, L0 and the k used for TopK."""
    x = make_batch(cfg, cfg.batch)
    steps: dict[str, object] = {}
    times: dict[str, list[float]] = {name: [] for name in cfg.variants}
    l0s: list[float] = []
    k = None
    # top-AFA warms up first: its mean L0 is TopK's and BatchTopK's k.
    needs_k = any(v in ("topk", "batchtopk") for v in cfg.variants)
    if "topafa" in cfg.variants or needs_k:
        steps["topafa"] = build_variant("topafa", cfg, cfg.d_sae, None)
        for _ in range(cfg.warmup):
            steps["topafa"](x)
            l0s.append(steps["topafa"].last_l0)
        k = max(1, min(cfg.d_sae, round(statistics.fmean(l0s))))
    for name in cfg.variants:
        if name not in steps:
            steps[name] = build_variant(name, cfg, cfg.d_sae, k)
            for _ in range(cfg.warmup):
                steps[name](x)
    _sync(cfg.device)
    afa_l0 = []
    for _ in range(cfg.repeats):
        for name in cfg.variants:
            start = time.perf_counter()
            steps[name](x)
            _sync(cfg.device)
            times[name].append(time.perf_counter() - start)
            if name == "topafa":
                afa_l0.append(steps[name].last_l0)
    result = {
        name: {"median_s": statistics.median(ts), "times_s": ts, "min_s": min(ts)}
        for name, ts in times.items()
    }
    if afa_l0:
        result["topafa"]["mean_l0"] = statistics.fmean(afa_l0)
    return {"variants": result, "k_for_topk": k, "warmup_topafa_l0": l0s}


# The targets of issue 16 (top-AFA where trained SAEs live) and issue 9 (the paper's step):
# (name, numerator, denominator, comparison, bound); a None comparison is reported, not judged.
RATIOS = (
    ("paper_over_topafa", "paper_topafa", "topafa", ">=", 1.7),
    ("topafa_over_relu", "topafa", "relu", "<=", 1.3),
    ("topafa_over_topk", "topafa", "topk", "<=", 1.1),
    ("topafa_over_dense_floor", "topafa", "dense_floor", None, None),
    ("topafa_over_batchtopk", "topafa", "batchtopk", None, None),
)
MEMORY_TARGET = 1.5
"""Peak memory over what parameters, gradients, Adam state and activations need."""


def ratios(variants: dict, stat: str = "median_s") -> dict[str, float]:
    """The ratios of RATIOS whose two variants were timed, from median (or min) step times."""
    return {
        name: variants[a][stat] / variants[b][stat]
        for name, a, b, _, _ in RATIOS
        if a in variants and b in variants
    }


def judge(value: float, comparison: str, bound: float) -> dict:
    """One target: met or missed, and by how much (as a share of the bound)."""
    met = value >= bound if comparison == ">=" else value <= bound
    return {
        "value": value,
        "target": f"{comparison} {bound}",
        "met": met,
        "missed_by": 0.0 if met else abs(value - bound) / bound,
    }


def targets(report: dict) -> dict[str, dict]:
    """Every target this run measured, judged on medians: step-time ratios and peak memory."""
    out = {}
    for name, _, _, comparison, bound in RATIOS:
        if comparison is not None and name in report["ratios"]:
            out[name] = judge(report["ratios"][name], comparison, bound)
    topafa = report["variants"].get("topafa", {})
    if "peak_over_need" in topafa:
        out["topafa_peak_over_need"] = judge(topafa["peak_over_need"], "<=", MEMORY_TARGET)
    if "width" in report:
        out["width_peak_over_need"] = judge(report["width"]["peak_over_need"], "<=", MEMORY_TARGET)
    return out


# -- memory -------------------------------------------------------------------------------------


def parameter_need_bytes(d_in: int, d_sae: int, batch: int, dtype: str) -> dict[str, int]:
    """What a top-AFA step cannot do without: weights, their gradients, Adam's two moments, and
    the batch's activations (input, pre-activations, reconstruction)."""
    size = torch.tensor([], dtype=torch_dtype(dtype)).element_size()
    n_params = 2 * d_in * d_sae + d_sae + d_in
    parts = {
        "parameters": n_params * size,
        "gradients": n_params * size,
        "adam_state": 2 * n_params * size,
        "activations": batch * (2 * d_in + d_sae) * size,
    }
    parts["total"] = sum(parts.values())
    return parts


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _max_rss_bytes() -> int:
    """Peak resident set of this process image. On Linux VmHWM (ru_maxrss survives exec, so a
    child would inherit its parent's peak); elsewhere ru_maxrss."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _reset_peak_rss() -> None:
    """Start the peak over from the current resident set (Linux; a no-op where unsupported)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def memory_probe(cfg: BenchConfig, name: str, d_sae: int, batch: int, k: int | None) -> dict:
    """Peak memory of a few steps of one variant in this process (run it in a fresh one on CPU)."""
    torch.set_num_threads(cfg.threads)
    from . import train  # noqa: F401  (the trainer's modules and Accelerator are not the step's)

    _accelerator(cfg.device)
    cuda = torch.device(cfg.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        before = _rss_bytes()
    x = make_batch(cfg, batch)
    step = build_variant(name, cfg, d_sae, k)
    times = []
    for _ in range(cfg.width_steps):
        start = time.perf_counter()
        step(x)
        _sync(cfg.device)
        times.append(time.perf_counter() - start)
    # the kernel refreshes ru_maxrss lazily, so the current resident set may still be above it
    peak = torch.cuda.max_memory_allocated() if cuda else max(_max_rss_bytes(), _rss_bytes())
    result = {"peak_bytes": peak - before, "step_times_s": times}
    if getattr(step, "last_l0", None) is not None:
        result["l0"] = step.last_l0
    return result


def memory_in_subprocess(cfg: BenchConfig, name: str, d_sae: int, batch: int, k) -> dict:
    """Run memory_probe in a fresh interpreter so earlier allocations do not hide the peak."""
    payload = json.dumps(
        {"cfg": _cfg_dict(cfg), "name": name, "d_sae": d_sae, "batch": batch, "k": k}
    )
    code = (
        "import json, sys\n"
        "from hf_topafa import bench\n"
        "a = json.loads(sys.argv[1])\n"
        "cfg = bench.BenchConfig(**a['cfg'])\n"
        "print('RESULT ' + json.dumps(bench.memory_probe(cfg, a['name'], a['d_sae'], a['batch'], a['k'])))\n"
    )
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", code, payload], capture_output=True, text=True, env=env, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"memory probe for {name} failed (exit {proc.returncode}): {proc.stderr[-2000:]}"
    )


def _cfg_dict(cfg: BenchConfig) -> dict:
    d = asdict(cfg)
    d["variants"] = list(cfg.variants)
    return d


def measure_memory(cfg: BenchConfig, k: int | None) -> dict[str, dict]:
    cuda = torch.device(cfg.device).type == "cuda"
    probe = memory_probe if cuda else memory_in_subprocess
    return {name: probe(cfg, name, cfg.d_sae, cfg.batch, k) for name in cfg.variants}


def measure_width(cfg: BenchConfig) -> dict:
    cuda = torch.device(cfg.device).type == "cuda"
    probe = memory_probe if cuda else memory_in_subprocess
    result = probe(cfg, "topafa", cfg.width_d_sae, cfg.width_batch, None)
    need = parameter_need_bytes(cfg.d_in, cfg.width_d_sae, cfg.width_batch, cfg.dtype)
    result.update(
        d_in=cfg.d_in,
        d_sae=cfg.width_d_sae,
        batch=cfg.width_batch,
        need_bytes=need,
        peak_over_need=result["peak_bytes"] / need["total"],
    )
    return result


# -- running and reporting ----------------------------------------------------------------------


def machine_info(cfg: BenchConfig) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": cfg.device,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.device(cfg.device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(cfg: BenchConfig) -> dict:
    cfg.validate()
    if torch.device(cfg.device).type == "cpu":
        torch.set_num_threads(cfg.threads)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    timing = time_variants(cfg)
    report = {
        "machine": {**machine_info(cfg), "load_average_before": load_before},
        "config": _cfg_dict(cfg),
        "k_for_topk": timing["k_for_topk"],
        "warmup_topafa_l0": timing["warmup_topafa_l0"],
        "variants": timing["variants"],
        "ratios": ratios(timing["variants"]),
        "ratios_of_minimums": ratios(timing["variants"], "min_s"),
    }
    if cfg.memory:
        need = parameter_need_bytes(cfg.d_in, cfg.d_sae, cfg.batch, cfg.dtype)
        report["need_bytes"] = need
        for name, mem in measure_memory(cfg, timing["k_for_topk"]).items():
            report["variants"][name]["peak_bytes"] = mem["peak_bytes"]
            if name == "topafa":
                report["variants"][name]["peak_over_need"] = mem["peak_bytes"] / need["total"]
    if cfg.width_d_sae:
        report["width"] = measure_width(cfg)
    report["targets"] = targets(report)
    return report


def format_report(report: dict) -> str:
    cfg, machine = report["config"], report["machine"]
    lines = [
        f"machine: {machine['processor']} ({machine['cpu_count']} cores), torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, OMP_WAIT_POLICY={machine['OMP_WAIT_POLICY']}, "
        f"device {machine['device']}; load average "
        f"{_load(machine.get('load_average_before'))} before, "
        f"{_load(machine.get('load_average_1_5_15min'))} after timing",
        f"sizes: d_in={cfg['d_in']} d_sae={cfg['d_sae']} batch={cfg['batch']} {cfg['dtype']}; "
        f"dead features {cfg['dead_fraction']:.0%}; Adam {cfg['adam']}; "
        f"median of {cfg['repeats']} interleaved rounds after {cfg['warmup']} warm-up",
        f"TopK / BatchTopK k = top-AFA's warm-up mean L0 = {report['k_for_topk']}",
        "",
        f"{'variant':<14}{'median ms':>11}{'min ms':>9}{'peak MiB':>10}  note",
    ]
    for name, v in report["variants"].items():
        peak = f"{v['peak_bytes'] / 2**20:10.0f}" if "peak_bytes" in v else f"{'-':>10}"
        note = f"mean L0 {v['mean_l0']:.1f}" if "mean_l0" in v else ""
        lines.append(f"{name:<14}{v['median_s'] * 1e3:11.1f}{v['min_s'] * 1e3:9.1f}{peak}  {note}")
    lines += ["", f"{'ratio':<28}{'medians':>8}{'minimums':>10}  target"]
    judged = report.get("targets", {})
    for key, value in report["ratios"].items():
        mark = _mark(judged[key]) if key in judged else ""
        lines.append(f"{key:<28}{value:8.2f}{report['ratios_of_minimums'][key]:10.2f}  {mark}")
    if "topafa_peak_over_need" in judged:
        need = report["need_bytes"]["total"]
        lines.append(
            f"top-AFA peak memory over need ({need / 2**20:.0f} MiB): "
            f"{report['variants']['topafa']['peak_over_need']:.2f}  "
            f"{_mark(judged['topafa_peak_over_need'])}"
        )
    if "width" in report:
        w = report["width"]
        need = w["need_bytes"]
        lines += [
            "",
            f"width: top-AFA step at d_in={w['d_in']} d_sae={w['d_sae']} batch={w['batch']}: "
            f"median step {statistics.median(w['step_times_s']) * 1e3:.0f} ms, "
            f"peak {w['peak_bytes'] / 2**20:.0f} MiB vs need {need['total'] / 2**20:.0f} MiB "
            f"(params {need['parameters'] / 2**20:.0f} + grads {need['gradients'] / 2**20:.0f} "
            f"+ Adam {need['adam_state'] / 2**20:.0f} + activations "
            f"{need['activations'] / 2**20:.0f}) -> {w['peak_over_need']:.2f}x "
            f"{_mark(judged['width_peak_over_need'])}",
        ]
    if judged:
        missed = [name for name, t in judged.items() if not t["met"]]
        lines += [
            "",
            f"targets: {len(judged) - len(missed)} of {len(judged)} met"
            + (f"; MISSED: {', '.join(missed)}" if missed else ""),
        ]
    return "\n".join(lines)


def _mark(target: dict) -> str:
    if target["met"]:
        return f"{target['target']}: met"
    return f"{target['target']}: MISSED by {target['missed_by']:.0%}"


def _load(values) -> str:
    return "n/a" if not values else f"{values[0]:.1f}"


def run_command(cfg: BenchConfig, run_options: BenchRun) -> int:
    """``hf-topafa bench`` once its values are checked and the wait policy is in place."""
    report = run(cfg)
    print(format_report(report))
    if run_options.json:
        # NaN stays writable: a failed measurement must not lose the whole run's report
        write_json(run_options.json, report, allow_nan=True)
        print(f"\nwrote {run_options.json}")
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """``hf-topafa bench ...`` from Python: the command line's checks, errors and exit status."""
    from .cli import main

    return main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(cli_main())
