"""``hf-topafa bench``: the training step timed against the paper's step and the dense floor.

- ``bench``: timing, ratios and their targets, the report; ``bench_config``: the torch-free
  configuration and checks
- ``bench_steps``: the steps it times (this package's, the paper's, the dense floor)
- ``bench_memory``: peak memory, each variant measured in a fresh process

Names load on first use, so that the torch-free configuration imports no torch. The other
names of ``bench.bench`` answer here too (``hf_topafa.bench`` was that module).
"""

from ..helpers import lazy_exports

__all__ = ["BenchConfig", "BenchRun", "build_variant", "measure_memory", "run_command"]

__getattr__ = lazy_exports(
    __name__,
    bench_config=["BenchConfig", "BenchRun"],
    bench_steps=["build_variant"],
    bench_memory=["measure_memory"],
    bench=["run_command"],
    fallback="bench",  # hf_topafa.bench was the module bench.py: its names still answer here
)
