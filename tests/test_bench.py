"""The benchmark runs end to end at toy sizes and its reference steps compute the right thing."""

import json

import pytest
import torch

from hf_topafa.bench import bench, bench_memory


def tiny(**kwargs):
    base = dict(d_in=16, d_sae=128, batch=32, warmup=1, repeats=2, memory=False, width_d_sae=0)
    base.update(kwargs)
    return bench.BenchConfig(**base)


def test_cli_writes_json_with_ratios_from_medians(tmp_path, capfd):
    out = tmp_path / "sub" / "bench.json"
    argv = "--d-in 16 --d-sae 128 --batch 32 --warmup 1 --repeats 2 --no-memory --width-d-sae 0"
    # the default wait policy (passive) re-runs the benchmark in a fresh interpreter
    assert bench.cli_main([*argv.split(), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["OMP_WAIT_POLICY"] == "PASSIVE"
    printed = capfd.readouterr().out
    assert "paper_topafa" in printed and "dense_floor" in printed
    variants = report["variants"]
    assert set(variants) == set(bench.VARIANTS)
    for v in variants.values():
        assert len(v["times_s"]) == 2 and v["median_s"] > 0
    ratio = report["ratios"]["topafa_over_topk"]
    assert ratio == pytest.approx(variants["topafa"]["median_s"] / variants["topk"]["median_s"])
    relu = report["ratios"]["topafa_over_relu"]
    assert relu == pytest.approx(variants["topafa"]["median_s"] / variants["relu"]["median_s"])
    target = report["targets"]["topafa_over_topk"]
    assert target["target"] == "<= 1.1" and target["met"] == (ratio <= 1.1)
    assert ("topafa_over_topk" in printed) and ("met" in printed or "MISSED" in printed)
    assert 1 <= report["k_for_topk"] <= 128
    assert report["machine"]["torch_threads"] == 2


def test_targets_are_judged_met_or_missed_with_the_margin():
    report = {
        "ratios": {"topafa_over_relu": 1.56, "topafa_over_topk": 1.05, "paper_over_topafa": 1.2},
        "variants": {"topafa": {"peak_over_need": 1.2}},
    }
    judged = bench.targets(report)
    assert judged["topafa_over_relu"]["met"] is False
    assert judged["topafa_over_relu"]["missed_by"] == pytest.approx(0.2)  # 1.56 vs 1.3
    assert judged["topafa_over_topk"]["met"] is True
    assert judged["topafa_over_topk"]["missed_by"] == 0.0
    assert judged["paper_over_topafa"]["met"] is False  # a ">=" target, 1.2 < 1.7
    assert judged["topafa_peak_over_need"]["met"] is True
    assert "topafa_over_dense_floor" not in judged  # reported, not judged


def test_package_step_is_the_trainers_train_step(monkeypatch):
    """The bench times hf_topafa.train.train_step itself, not a copy of it."""
    from hf_topafa.training import train

    calls = []
    real = train.train_step
    monkeypatch.setattr(train, "train_step", lambda *a: calls.append(a) or real(*a))
    step = bench.PackageStep(tiny(), "topafa", 128)
    before = step.sae.W_dec.detach().clone()
    step(bench.make_batch(tiny(), 32))
    assert len(calls) == 1 and calls[0][0] is step.sae
    assert not torch.equal(before, step.sae.W_dec)  # the step moved the weights
    norms = torch.linalg.vector_norm(step.sae.W_dec, dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-2)  # renormalised, then Adam


def test_encoder_scale_sets_the_kept_share():
    low, high = [], []
    for scale, out in ((1.0, low), (1.3, high)):
        step = bench.PackageStep(tiny(encoder_scale=scale, d_sae=512), "topafa", 512)
        step(bench.make_batch(tiny(), 32))
        out.append(step.last_l0)
    assert high[0] < low[0]  # larger encoder weights: the target is met with fewer features


def test_paper_step_selects_like_the_package():
    """The plain published step and the package's top-AFA pick the same features."""
    cfg = tiny(dtype="float32")
    paper = bench.PaperTopAFAStep(cfg, cfg.d_sae)
    package = bench.PackageStep(cfg, "topafa", cfg.d_sae)
    with torch.no_grad():
        package.sae.W_enc.copy_(paper.W_enc)
        package.sae.W_dec.copy_(paper.W_dec)
    x = bench.make_batch(cfg, cfg.batch)
    _, acts = paper.forward(x)
    out = package.sae(x)
    assert torch.equal(paper.last_k, out.k)
    assert torch.allclose(acts, out.feature_acts, atol=1e-6)
    assert 0 < paper.stats["mean_abs_cos"] <= paper.stats["max_abs_cos"] <= 1


def test_width_probe_reports_peak_and_need():
    cfg = tiny(width_steps=1)
    result = bench.memory_probe(cfg, "topafa", 256, 8, None)
    assert len(result["step_times_s"]) == 1
    # the tensor peak holds at least the weights, their gradients and Adam's two moments,
    # all of which the probe allocates after it starts counting
    n_weights = 2 * 16 * 256
    assert result["peak_bytes"] >= 4 * 4 * n_weights
    assert result["rss_peak_bytes"] >= 0
    need = bench.parameter_need_bytes(16, 256, 8, "float32")
    n_params = 2 * 16 * 256 + 256 + 16
    assert need["parameters"] == 4 * n_params and need["adam_state"] == 8 * n_params
    assert need["total"] == 16 * n_params + 4 * 8 * (2 * 16 + 256)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--d-sae", "0"], "d_sae"),
        (["--dead-fraction", "1.5"], "dead_fraction"),
        (["--variants", "topk,nope"], "variants"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--warmup", "0"], ""),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys):
    assert bench.cli_main(argv) == 2
    assert message in capsys.readouterr().err


def test_peak_of_allocations_is_the_highest_running_total():
    # out of order on purpose: events are sorted by time first
    events = [(30, -8), (10, 4), (20, 8), (40, 2), (50, -4)]
    assert bench_memory.peak_of_allocations(events) == 12
    assert bench_memory.peak_of_allocations([]) == 0


def test_tensor_peak_counts_what_a_function_holds_at_once():
    """The profiler-based peak sees two live 1 MiB tensors, not the 3 MiB allocated in all."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        a = torch.ones(2**18)  # 1 MiB of float32
        b = torch.ones(2**18)
        del a
        c = torch.ones(2**18)
        del b, c
    peak = bench_memory.peak_of_allocations(bench_memory._cpu_allocation_events(prof))
    assert 2 * 2**20 <= peak < 2 * 2**20 + 4096


def test_rounds_rotate_so_no_variant_always_runs_first(monkeypatch):
    calls = []

    class Fake:
        last_l0 = 3.0

        def __init__(self, name):
            self.name = name

        def __call__(self, x):
            calls.append(self.name)

    monkeypatch.setattr(bench, "build_variant", lambda name, cfg, d_sae, k: Fake(name))
    cfg = tiny(variants=("topafa", "topk", "relu"), warmup=1, repeats=3)
    bench.time_variants(cfg)
    timed = calls[3:]  # after one warm-up step each
    assert timed == ["topafa", "topk", "relu", "topk", "relu", "topafa", "relu", "topafa", "topk"]
