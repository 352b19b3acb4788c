"""The 16k world at the published budget on a lent GPU, inside a fixed wall-clock budget.

A GPU is lent for minutes, so this runs the whole check as one command and returns what it has
when the time is up. It builds the world on the GPU (the orthogonalization that takes an hour on
a CPU), times the sampler and one SAE's step apart (``probe``), samples the evaluation cache,
then trains the plan's SAEs side by side, one process each (a small SAE's step leaves the GPU
mostly idle), all on the same number of samples: the published 200M when that fits in the time
left, else as many as fit, read from a short calibration round of the same processes. Every run
is ``synth_bench.py --stream``, so a record here is the record that command makes anywhere. On
an H200 a 16k SAE trained at about 70 steps a second beside another (results/synthbench/gpu/):
4.4M samples in 15 minutes of device time, not 200M.

    python scripts/synth_device.py --out OUT --budget 540

OUT receives ``device_results.tgz`` (records, world facts, logs) and ``timings.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, str(REPO / "scripts" / "synth_bench.py")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for what comes back")
    p.add_argument("--budget", type=float, default=540.0, help="seconds this script may take")
    p.add_argument("--world", default="synthsaebench-16k")
    p.add_argument("--plan", default="published")
    p.add_argument("--only", nargs="+", default=None, help="record names (default: the plan's)")
    p.add_argument("--max-samples", type=int, default=200_000_000, help="the published budget")
    p.add_argument("--calibration-samples", type=int, default=1_536_000)
    p.add_argument("--eval-samples", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument("--margin", type=float, default=45.0, help="seconds kept back at the end")
    p.add_argument("--safety", type=float, default=0.8,
                   help="fraction of the calibrated rate planned on (a k-free rule's step "
                   "grows as its count settles)")  # fmt: skip
    p.add_argument("--work", type=Path, default=REPO / "runs" / "device")
    p.add_argument("--d-sae", type=int, default=4096, help="the probe's SAE width")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="skip timing the sampler and one SAE's step apart (about 20 s)")  # fmt: skip
    return p


def samples_that_fit(rates: list[float], seconds: float, batch: int, cap: int) -> int:
    """Samples per SAE when every SAE trains the same number at the slowest one's rate (steps
    per second), rounded down to three significant digits, at most ``cap``."""
    samples = int(min(rates) * max(seconds, 0.0)) * batch
    if samples >= cap:
        return cap
    unit = 10 ** max(len(str(samples)) - 3, 0)
    return samples // unit * unit


def bench_command(args, name: str, samples: int, work: Path, results: Path) -> list[str]:
    return BENCH + [
        "--world", args.world, "--plan", args.plan, "--only", name, "--stream",
        "--train-samples", str(samples), "--eval-samples", str(args.eval_samples),
        "--threads", str(args.threads), "--checkpoint-every", "0",
        "--work", str(work), "--results", str(results),
    ]  # fmt: skip


def run_side_by_side(commands: dict[str, list[str]], logs: Path, deadline: float) -> dict:
    """Start every command at once; wait until all end or the deadline passes (then stop the
    rest). Returns each one's exit code (None: stopped) and wall seconds."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    started, procs = time.time(), {}
    for name, command in commands.items():
        log = open(logs / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        procs[name] = (
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env),
            log,
        )
    ended: dict[str, dict] = {}
    while len(ended) < len(procs):
        for name, (proc, log) in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = {"rc": proc.returncode, "seconds": round(time.time() - started, 1)}
                log.close()
        if time.time() > deadline:
            for name, (proc, log) in procs.items():
                if name not in ended:
                    proc.kill()
                    ended[name] = {"rc": None, "seconds": round(time.time() - started, 1)}
                    log.close()
        time.sleep(0.5)
    return ended


def train_rate(work: Path, world: str, name: str) -> tuple[float, float] | None:
    """(steps per second, seconds of training) of a finished run folder, from its metrics."""
    path = work / "runs" / Path(world).stem / name / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics["steps"] / max(metrics["train_time_s"], 1e-9), metrics["train_time_s"]


def probe(world_spec: str, d_sae: int, steps: int = 40) -> dict:
    """Seconds per 1,024 samples drawn from the world (16 batches per draw, as streaming does on
    a GPU) and per training step of a BatchTopK k = 25 and a noise_batch SAE alone, each timed
    apart on the training device: which of the two bounds a streamed run."""
    import torch
    from accelerate import Accelerator

    from hf_topafa import SAEConfig, SparseAutoencoder
    from hf_topafa.data.synthetic import load_world
    from hf_topafa.training.train import TrainConfig, build_optimizer, train_step
    from hf_topafa.training.training_data import draw_samples

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    world = load_world(world_spec, device=device, progress=False)
    rows = 1024 * (16 if device == "cuda" else 1)

    def timed(work, repeats: int) -> float:
        work()  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            work()
        sync()
        return (time.perf_counter() - start) / repeats

    found = {"device": device, "draw_s_per_1024": timed(lambda: draw_samples(world, rows, 1), 3)}
    found["draw_s_per_1024"] /= rows / 1024
    x = draw_samples(world, 1024, 2)
    accelerator = Accelerator(mixed_precision="bf16" if device == "cuda" else "no")
    for activation, k in (("batchtopk", 25), ("noise_batch", None)):
        config = TrainConfig.from_flat(
            activation=activation, k=k, afa_coef=0.0, d_sae=d_sae, input_normalization="none",
            batch_size=1024, lr=3e-4, max_tokens=1024 * (steps + 1),
        )  # synth_bench's settings  # fmt: skip
        dead_after = config.resolved_dead_threshold()
        sae_config = SAEConfig.from_settings(
            config.sae, d_in=x.shape[1], dead_tokens_threshold=dead_after
        )
        sae = SparseAutoencoder(sae_config)
        sae = sae.to(device).train()  # as the trainer builds it
        optimizer, scheduler = build_optimizer(sae, config)
        model, optimizer = accelerator.prepare(sae, optimizer)
        dead = torch.zeros(d_sae, dtype=torch.bool, device=device)

        step = functools.partial(
            train_step, model, sae, optimizer, scheduler, x, dead, config, accelerator
        )
        found[f"step_s_{activation}"] = timed(step, steps)
    return {key: round(v, 6) if isinstance(v, float) else v for key, v in found.items()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.time()
    deadline = start + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    facts: dict = {"budget_s": args.budget, "world": args.world}

    def save_and_pack() -> None:
        facts["elapsed_s"] = round(time.time() - start, 1)
        (args.out / "timings.json").write_text(json.dumps(facts, indent=1) + "\n")
        with tarfile.open(args.out / "device_results.tgz", "w:gz") as tar:
            for folder in ("results", "logs"):
                if (args.work / folder).is_dir():
                    tar.add(args.work / folder, arcname=folder)
            for build in Path(os.environ["HF_TOPAFA_CACHE"]).glob("synthetic/*/build.json"):
                tar.add(build, arcname=f"build-{build.parent.name}.json")

    os.environ.setdefault("HF_TOPAFA_CACHE", str(args.work / "home"))  # where the world is cached
    try:
        sys.path.insert(0, str(REPO))
        import torch

        from hf_topafa.data.synthetic import world_folder

        facts["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        t = time.time()
        world_folder(args.world)
        facts["world_build_s"] = round(time.time() - t, 1)
        if args.probe:
            facts["probe"] = probe(args.world, args.d_sae)
            print(f"probe: {facts['probe']}", flush=True)

        names = args.only or plan_names(args)
        t = time.time()
        done = subprocess.run(
            BENCH + ["--world", args.world, "--only", "none", "--stream", "--eval-samples",
                     str(args.eval_samples), "--work", str(args.work), "--results",
                     str(args.work / "results" / "world"), "--threads", "8"],
            capture_output=True, text=True,
        )  # fmt: skip
        print(done.stdout[-2000:], done.stderr[-2000:], flush=True)
        facts["eval_cache_s"] = round(time.time() - t, 1)

        calibration = args.work / "calibration"
        (calibration / "cache").parent.mkdir(parents=True, exist_ok=True)
        if not (calibration / "cache").exists():
            (calibration / "cache").symlink_to(args.work / "cache")
        commands = {
            n: bench_command(args, n, args.calibration_samples, calibration,
                             calibration / "results" / n)
            for n in names
        }  # fmt: skip
        ended = run_side_by_side(commands, args.work / "logs" / "calibration", deadline)
        rates = {n: train_rate(calibration, args.world, n) for n in names}
        facts["calibration"] = {n: {**ended[n], "steps_per_s": r and round(r[0], 1),
                                    "train_s": r and round(r[1], 1)}
                                for n, r in rates.items()}  # fmt: skip
        measured = [n for n in names if rates[n] is not None]
        if not measured:
            raise RuntimeError("no calibration run finished: see logs/calibration")
        overhead = max(ended[n]["seconds"] - rates[n][1] for n in measured)
        left = deadline - time.time() - overhead - args.margin
        slowest = [rates[n][0] * args.safety for n in measured]
        samples = samples_that_fit(slowest, left, 1024, args.max_samples)
        facts.update(samples_per_sae=samples, overhead_s=round(overhead, 1))
        print(f"calibration: {facts['calibration']}; {samples:,} samples per SAE", flush=True)
        if samples:
            commands = {
                n: bench_command(args, n, samples, args.work, args.work / "results" / n)
                for n in measured
            }  # fmt: skip
            facts["main"] = run_side_by_side(commands, args.work / "logs" / "main", deadline)
    except Exception as exc:  # what finished still comes back
        facts["error"] = f"{type(exc).__name__}: {exc}"
        print(facts["error"], flush=True)
    save_and_pack()
    print(json.dumps(facts, indent=1), flush=True)
    return 0 if "error" not in facts else 1


def plan_names(args) -> list[str]:
    """The record names of ``--plan``, in its order (synth_bench's own naming)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("synth_bench", BENCH[1])
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return [bench.record_name(s) for s in bench.PLANS[args.plan]]


if __name__ == "__main__":
    sys.exit(main())
