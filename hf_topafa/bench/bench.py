"""`hf-topafa bench`: time one SAE training step next to the paper's step, a dense ReLU-SAE step
and the dense floor, and mark the performance targets met or missed.

Variants, timed side by side in interleaved rounds (A, B, C, then B, C, A, ...) so that a busy
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

Peak memory (``bench_memory``) is the most bytes held in tensors while a variant is built and
stepped (the profiler's allocation events on CPU, ``torch.cuda.max_memory_allocated`` on CUDA),
judged against what parameters, gradients, Adam state and activations need; on CPU the process's
peak resident set is reported beside it.

By default the benchmark runs with ``OMP_WAIT_POLICY=PASSIVE`` (re-running itself if needed): on a
shared, oversubscribed CPU, spinning OpenMP threads stall steps made of many short kernels.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

import torch

from ..helpers import write_json
from .bench_config import (  # noqa: F401 - re-exported: the config and its CLI live there
    VARIANTS,
    BenchConfig,
    BenchRun,
    build_parser,
)
from .bench_memory import (  # noqa: F401 - re-exported
    MEMORY_TARGET,
    config_dict,
    measure_memory,
    measure_width,
    memory_probe,
    parameter_need_bytes,
)
from .bench_steps import (  # noqa: F401 - re-exported: the variants live there
    DenseFloor,
    PackageStep,
    PaperTopAFAStep,
    build_variant,
    make_batch,
    sync_device,
)

# -- timing -------------------------------------------------------------------------------------


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
    sync_device(cfg.device)
    afa_l0 = []
    names = list(cfg.variants)
    for round_ in range(cfg.repeats):
        # each round starts one variant later: whichever runs first in a round was measured
        # up to 15% slower here (allocator state), so no variant may always go first
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name](x)
            sync_device(cfg.device)
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
        "config": config_dict(cfg),
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
            entry = report["variants"][name]
            entry["peak_bytes"] = mem["peak_bytes"]
            entry["peak_over_need"] = mem["peak_bytes"] / need["total"]
            if "rss_peak_bytes" in mem:
                entry["rss_peak_bytes"] = mem["rss_peak_bytes"]
                entry["rss_over_need"] = mem["rss_peak_bytes"] / need["total"]
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
        f"median of {cfg['repeats']} interleaved, rotated rounds after {cfg['warmup']} warm-up",
        f"TopK / BatchTopK k = top-AFA's warm-up mean L0 = {report['k_for_topk']}",
        "",
        f"{'variant':<14}{'median ms':>11}{'min ms':>9}{'tensor MiB':>11}{'/ need':>7}"
        f"{'RSS MiB':>9}{'/ need':>7}  note",
    ]
    for name, v in report["variants"].items():
        mem = "".join(
            f"{v[key] / scale:{width}.{digits}f}" if key in v else f"{'-':>{width}}"
            for key, scale, width, digits in (
                ("peak_bytes", 2**20, 11, 0),
                ("peak_over_need", 1, 7, 2),
                ("rss_peak_bytes", 2**20, 9, 0),
                ("rss_over_need", 1, 7, 2),
            )
        )
        note = f"mean L0 {v['mean_l0']:.1f}" if "mean_l0" in v else ""
        lines.append(f"{name:<14}{v['median_s'] * 1e3:11.1f}{v['min_s'] * 1e3:9.1f}{mem}  {note}")
    lines += ["", f"{'ratio':<28}{'medians':>8}{'minimums':>10}  target"]
    judged = report.get("targets", {})
    for key, value in report["ratios"].items():
        mark = _mark(judged[key]) if key in judged else ""
        lines.append(f"{key:<28}{value:8.2f}{report['ratios_of_minimums'][key]:10.2f}  {mark}")
    if "topafa_peak_over_need" in judged:
        need = report["need_bytes"]["total"]
        lines.append(
            f"top-AFA peak tensor memory over need ({need / 2**20:.0f} MiB): "
            f"{report['variants']['topafa']['peak_over_need']:.2f}  "
            f"{_mark(judged['topafa_peak_over_need'])}"
        )
        if "rss_over_need" in report["variants"]["topafa"]:
            lines.append(
                "  (process peak RSS over need, reported, not judged: "
                f"{report['variants']['topafa']['rss_over_need']:.2f}; glibc keeps freed "
                "buffers for reuse, see hf_topafa/bench_memory.py)"
            )
    if "width" in report:
        w = report["width"]
        need = w["need_bytes"]
        lines += [
            "",
            f"width: top-AFA step at d_in={w['d_in']} d_sae={w['d_sae']} batch={w['batch']}: "
            f"median step {statistics.median(w['step_times_s']) * 1e3:.0f} ms (profiled), "
            f"peak tensors {w['peak_bytes'] / 2**20:.0f} MiB vs need {need['total'] / 2**20:.0f} MiB "
            f"(params {need['parameters'] / 2**20:.0f} + grads {need['gradients'] / 2**20:.0f} "
            f"+ Adam {need['adam_state'] / 2**20:.0f} + activations "
            f"{need['activations'] / 2**20:.0f}) -> {w['peak_over_need']:.2f}x "
            f"{_mark(judged['width_peak_over_need'])}",
        ]
        if "rss_over_need" in w:
            lines.append(f"  (process peak RSS over need, reported: {w['rss_over_need']:.2f})")
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
    from ..cli.cli import main

    return main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(cli_main())
