"""Peak memory of one benchmark variant, next to what its step cannot do without.

Two peaks are measured, because on a CPU they answer different questions:

- **tensor bytes** (judged against the target): the most bytes held in tensors at any moment
  while the variant is built and stepped, from the profiler's allocation events. It is what
  ``torch.cuda.max_memory_allocated`` counts on a GPU, and the same definition is used there.
- **resident set** (reported): the process's peak RSS above its size after imports (Linux
  ``VmHWM``). It adds what glibc's allocator keeps after a free: its dynamic mmap threshold
  moves freed multi-MB buffers onto the heap for reuse, which keeps steps free of page faults
  but holds the memory. Forcing the memory back (``MALLOC_MMAP_THRESHOLD_=131072``) brings the
  RSS near the tensor peak and made steps 1.2-1.8x slower here, so the trainer leaves it alone.

On CPU every probe runs in a fresh interpreter so that earlier allocations do not hide the peak.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict

import torch

from ..helpers import torch_dtype
from .bench_config import BenchConfig
from .bench_steps import bench_accelerator, build_variant, make_batch, sync_device

MEMORY_TARGET = 1.5
"""Peak tensor memory over what parameters, gradients, Adam state and activations need."""


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


def peak_of_allocations(events) -> int:
    """The highest running total of (start time, signed bytes) allocation events."""
    total = peak = 0
    for _, nbytes in sorted(events):
        total += nbytes
        peak = max(peak, total)
    return peak


def _cpu_allocation_events(prof) -> list[tuple[int, int]]:
    cpu = torch.autograd.DeviceType.CPU
    return [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == cpu
    ]


def memory_probe(cfg: BenchConfig, name: str, d_sae: int, batch: int, k: int | None) -> dict:
    """Peak memory of building one variant and running ``cfg.width_steps`` steps of it, in this
    process: ``peak_bytes`` (tensors) and, on CPU, ``rss_peak_bytes``."""
    torch.set_num_threads(cfg.threads)
    from ..training import train  # noqa: F401  (the trainer's modules and Accelerator are not the step's)

    bench_accelerator(cfg.device)
    cuda = torch.device(cfg.device).type == "cuda"
    times: list[float] = []

    def build_and_step():
        x = make_batch(cfg, batch)
        step = build_variant(name, cfg, d_sae, k)
        for _ in range(cfg.width_steps):
            start = time.perf_counter()
            step(x)
            sync_device(cfg.device)
            times.append(time.perf_counter() - start)
        return getattr(step, "last_l0", None)

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        l0 = build_and_step()
        result = {"peak_bytes": torch.cuda.max_memory_allocated() - before}
    else:
        from torch.profiler import ProfilerActivity, profile

        _reset_peak_rss()
        rss_before = _rss_bytes()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            l0 = build_and_step()
        # the kernel refreshes VmHWM lazily, so the current resident set may still be above it
        rss_peak = max(_max_rss_bytes(), _rss_bytes()) - rss_before
        result = {"peak_bytes": peak_of_allocations(_cpu_allocation_events(prof))}
        result["rss_peak_bytes"] = rss_peak
    result["step_times_s"] = times
    if l0 is not None:
        result["l0"] = l0
    return result


def memory_in_subprocess(cfg: BenchConfig, name: str, d_sae: int, batch: int, k) -> dict:
    """Run memory_probe in a fresh interpreter so earlier allocations do not hide the peak."""
    payload = json.dumps(
        {"cfg": config_dict(cfg), "name": name, "d_sae": d_sae, "batch": batch, "k": k}
    )
    code = (
        "import json, sys\n"
        "from hf_topafa.bench import bench_memory as m\n"
        "a = json.loads(sys.argv[1])\n"
        "cfg = m.BenchConfig(**a['cfg'])\n"
        "print('RESULT ' + json.dumps(m.memory_probe(cfg, a['name'], a['d_sae'], a['batch'], a['k'])))\n"
    )
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def config_dict(cfg: BenchConfig) -> dict:
    d = asdict(cfg)
    d["variants"] = list(cfg.variants)
    return d


def _probe(cfg: BenchConfig):
    return memory_probe if torch.device(cfg.device).type == "cuda" else memory_in_subprocess


def measure_memory(cfg: BenchConfig, k: int | None) -> dict[str, dict]:
    """Every variant's peaks at the benchmark's sizes."""
    return {name: _probe(cfg)(cfg, name, cfg.d_sae, cfg.batch, k) for name in cfg.variants}


def measure_width(cfg: BenchConfig) -> dict:
    """A top-AFA step at ``cfg.width_d_sae`` features, with its need and peak over need."""
    result = _probe(cfg)(cfg, "topafa", cfg.width_d_sae, cfg.width_batch, None)
    need = parameter_need_bytes(cfg.d_in, cfg.width_d_sae, cfg.width_batch, cfg.dtype)
    result.update(
        d_in=cfg.d_in,
        d_sae=cfg.width_d_sae,
        batch=cfg.width_batch,
        need_bytes=need,
        peak_over_need=result["peak_bytes"] / need["total"],
    )
    if "rss_peak_bytes" in result:
        result["rss_over_need"] = result["rss_peak_bytes"] / need["total"]
    return result
