"""Harvest throughput against the bare truncated forward of the same model on the same windows.

"bare" runs only ``truncated_forward`` on pre-tokenized windows. "harvest" runs the whole
pipeline from text: dataset reading, tokenization and packing, the same forwards, position
filtering, CPU copy and the shuffling buffer. Rounds alternate the two so that background load
hits both alike; each is timed by its fastest round (medians of wall and process CPU time are
printed too). The last line reads ``harvest overhead: N%``.

    PYTHONPATH=. .venv/bin/python scripts/bench_harvest.py [--rounds 5] [--batches 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import time
from pathlib import Path

import torch

from hf_topafa.data.harvest import HarvestConfig, Harvester
from hf_topafa.data.lm import DEFAULT_HOOK_POINT, DEFAULT_LAYER, truncated_forward

SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-test.txt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--layer", type=int, default=DEFAULT_LAYER)
    p.add_argument("--hook-point", default=DEFAULT_HOOK_POINT)
    p.add_argument("--dataset", default=str(SHARED_CORPUS) if SHARED_CORPUS.is_file() else None)
    p.add_argument("--context-length", type=int, default=256)
    p.add_argument("--batch-windows", type=int, default=8)
    p.add_argument("--batches", type=int, default=2, help="forward passes per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-tokens", type=int, default=4096, help="harvest output batch size")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = HarvestConfig(
        model=args.model,
        layer=args.layer,
        hook_point=args.hook_point,
        dataset=args.dataset,
        context_length=args.context_length,
        batch_windows=args.batch_windows,
        device=args.device,
    )
    harvester = Harvester(base)
    n_windows = args.batches * args.batch_windows
    windows = list(itertools.islice(harvester.windows(), n_windows))
    if len(windows) < n_windows:
        raise SystemExit(f"dataset has only {len(windows)} windows, {n_windows} needed")
    batches = [
        torch.stack(windows[i : i + args.batch_windows])
        for i in range(0, n_windows, args.batch_windows)
    ]
    kept = sum(int(harvester.keep_mask(b).sum()) for b in batches)
    forwarded = n_windows * args.context_length
    # Same windows: the harvest stops once it has the kept tokens of exactly these windows.
    cfg = dataclasses.replace(base, max_tokens=kept)
    run = Harvester(cfg)

    def bare() -> int:
        for ids in batches:
            truncated_forward(harvester.model, ids, args.layer, args.hook_point)
        sync()
        return forwarded

    def harvest() -> int:
        return sum(len(b) for b in run.iter_batches(args.batch_tokens, progress=False))

    def sync():
        if harvester.device.type == "cuda":
            torch.cuda.synchronize()

    truncated_forward(harvester.model, batches[0], args.layer, args.hook_point)  # warm-up
    times: dict[str, list[float]] = {"bare": [], "harvest": []}
    cpu: dict[str, list[float]] = {"bare": [], "harvest": []}  # process CPU time, less noisy
    for r in range(args.rounds):
        for name, fn in (("bare", bare), ("harvest", harvest)):
            start, start_cpu = time.perf_counter(), time.process_time()
            n = fn()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            if name == "harvest" and n != kept:
                raise SystemExit(f"harvest returned {n} tokens, expected {kept}")
        print(
            f"round {r + 1}: bare {times['bare'][-1]:.2f}s (cpu {cpu['bare'][-1]:.2f}s)  "
            f"harvest {times['harvest'][-1]:.2f}s (cpu {cpu['harvest'][-1]:.2f}s)"
        )

    t_bare, t_harvest = min(times["bare"]), min(times["harvest"])
    print(
        f"model={args.model or 'embedded SmolLM2-135M-Instruct'} layer={args.layer} "
        f"hook={args.hook_point} device={args.device} threads={torch.get_num_threads()}"
    )
    print(
        f"windows/round={n_windows} x {args.context_length} tokens = {forwarded} forwarded, {kept} kept"
    )
    print(f"bare truncated forward: {forwarded / t_bare:,.0f} tokens/s ({t_bare:.2f}s)")
    print(
        f"harvest: {forwarded / t_harvest:,.0f} tokens/s forwarded, {kept / t_harvest:,.0f} kept "
        f"tokens/s ({t_harvest:.2f}s)"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        f"medians: bare {med['bare']:.2f}s (cpu {med_cpu['bare']:.2f}s), harvest "
        f"{med['harvest']:.2f}s (cpu {med_cpu['harvest']:.2f}s); overhead of medians: wall "
        f"{100 * (med['harvest'] / med['bare'] - 1):.1f}%, "
        f"cpu {100 * (med_cpu['harvest'] / med_cpu['bare'] - 1):.1f}%"
    )
    print(f"harvest overhead: {100 * (t_harvest / t_bare - 1):.1f}%")


if __name__ == "__main__":
    main()
