"""The benchmark runs end to end at toy sizes and its reference steps compute the right thing."""

import json

import pytest
import torch

from hf_topafa import bench


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
    ratio = report["ratios"]["topafa_over_topk (target <= 1.15)"]
    assert ratio == pytest.approx(variants["topafa"]["median_s"] / variants["topk"]["median_s"])
    assert 1 <= report["k_for_topk"] <= 128
    assert report["machine"]["torch_threads"] == 2


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
    assert result["peak_bytes"] >= 0 and len(result["step_times_s"]) == 1
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
