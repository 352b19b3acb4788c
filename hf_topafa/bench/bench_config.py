"""What ``hf-topafa bench`` times (``BenchConfig``) and its command line, without torch.

The parser is generated from the dataclasses (``hf_topafa.cli_args``); the values are checked
before ``hf_topafa.bench`` (torch) is imported, so a bad flag answers at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from ..cli.cli_args import DataclassParser, arg

VARIANTS = ("paper_topafa", "topafa", "topk", "batchtopk", "relu", "dense_floor")
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def parse_variants(text: str) -> tuple[str, ...]:
    """``topafa,topk`` as ("topafa", "topk")."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


@dataclass
class BenchConfig:
    """What to time and how."""

    d_in: int = arg(576, "width of the SAE's input")
    d_sae: int = arg(4608, "number of features")
    batch: int = arg(1024, "tokens per training step")
    dtype: str = arg("float32", "parameter and input dtype", choices=DTYPE_NAMES)
    device: str = arg("cpu", "torch device, e.g. cpu or cuda")
    threads: int = arg(2, "CPU threads, torch.set_num_threads (timings depend on it)")
    warmup: int = arg(
        2,
        "untimed rounds first (top-AFA's L0 is measured here and sets TopK's and BatchTopK's k)",
    )
    repeats: int = arg(7, "timed rounds; each variant reports its median")
    dead_fraction: float = arg(
        0.1,
        "share of features marked dead (every round(1/fraction)-th one) so the aux-k loss runs",
    )
    adam: str = arg(
        "fused",
        "Adam implementation: fused (one kernel per tensor) or foreach",
        choices=("fused", "foreach"),
    )
    lr: float = arg(1e-4, "Adam learning rate (small, so L0 barely drifts while timing)")
    seed: int = arg(0, "seed of the weights and of the Gaussian input batch")
    encoder_scale: float = arg(
        1.0,
        "multiply the fresh W_enc by this (every variant): sets top-AFA's L0; at 1 it keeps about "
        "40% of d_sae, at 1.02 about 32% (trained-like), larger keeps fewer",
    )
    variants: tuple[str, ...] = arg(
        VARIANTS,
        f"comma-separated subset of {', '.join(VARIANTS)} (default: all)",
        parse=parse_variants,
        metavar="LIST",
    )
    memory: bool = arg(
        True,
        "skip the peak-memory probes (default: measure each variant's peak memory; on CPU one "
        "subprocess each)",
        flag="--no-memory",
    )
    width_d_sae: int = arg(
        65536, "d_sae of the width check (a top-AFA step at this width); 0 skips it"
    )
    width_batch: int = arg(256, "width check's batch")
    width_steps: int = arg(3, "width check's steps")
    extra: dict = arg({}, "free-form notes carried into the JSON (the command line)", cli=False)

    def validate(self) -> None:
        """ValueError naming the first bad value."""
        self.validate_values()
        self.validate_device()

    def validate_values(self) -> None:
        """Every check that needs no torch."""
        for name in ("d_in", "d_sae", "batch", "threads", "repeats", "width_batch", "width_steps"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if self.warmup < 1:
            raise ValueError(
                f"warmup must be at least 1 (k for TopK is measured there); got {self.warmup}"
            )
        if self.width_d_sae < 0:
            raise ValueError(
                f"width_d_sae must be >= 0 (0 skips the width check); got {self.width_d_sae}"
            )
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}; got {self.dtype!r}")
        if not (isinstance(self.encoder_scale, int | float) and self.encoder_scale > 0):
            raise ValueError(f"encoder_scale must be > 0; got {self.encoder_scale!r}")
        if not 0 <= self.dead_fraction < 1:
            raise ValueError(f"dead_fraction must be in [0, 1); got {self.dead_fraction}")
        if self.adam not in ("fused", "foreach"):
            raise ValueError(f"adam must be fused or foreach; got {self.adam!r}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"variants must be among {', '.join(VARIANTS)}; got {self.variants}")

    def validate_device(self) -> None:
        """The device check needs torch: it runs after every check that does not."""
        import torch

        try:
            torch.device(self.device)
        except RuntimeError as err:
            raise ValueError(f"device {self.device!r} is not a torch device ({err})") from err
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device cuda was asked for but torch sees no CUDA GPU")


@dataclass
class BenchRun:
    """How the benchmark process runs and where its results go (not part of the results)."""

    json: str | None = arg(None, "also write the results as JSON here", metavar="OUT")
    omp_wait_policy: str = arg(
        "passive",
        "OMP_WAIT_POLICY for the timed process (default passive: idle OpenMP threads sleep "
        "instead of spinning, which on a shared, busy CPU otherwise stalls many-kernel steps; "
        "inherit keeps the environment's)",
        choices=("passive", "active", "inherit"),
    )


def build_parser() -> DataclassParser:
    return DataclassParser(
        BenchConfig,
        BenchRun,
        prog="hf-topafa bench",
        description="Time a full SAE training step (top-AFA, TopK, BatchTopK) next to the "
        "paper's top-AFA step and the six dense products, and measure peak memory.",
    )


def parse_command(argv: list[str] | None = None) -> tuple[BenchConfig, BenchRun] | int:
    """``hf-topafa bench``'s values, checked before torch loads. Returns the configs for
    ``hf_topafa.bench.run_command``, or an exit status when the command ran in a fresh
    interpreter with the wanted OpenMP wait policy (or a value was refused)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, run = build_parser().parse_dataclasses(argv, extra={"argv": argv})
    try:
        cfg.validate_values()
        wanted = run.omp_wait_policy.upper()
        restart = run.omp_wait_policy != "inherit" and os.environ.get("OMP_WAIT_POLICY") != wanted
        if not restart:  # the restarted process checks the device itself
            cfg.validate_device()
    except ValueError as err:
        print(f"error: bench: {err}", file=sys.stderr)
        return 2
    if restart:
        # OpenMP reads the policy when torch loads, so it takes a fresh interpreter to change it
        env = {**os.environ, "OMP_WAIT_POLICY": wanted}
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        command = [sys.executable, "-m", "hf_topafa.bench.bench", *argv]
        return subprocess.run(command, env=env, check=False).returncode
    return cfg, run
