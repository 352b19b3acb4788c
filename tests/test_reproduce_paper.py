"""The comparison script's bookkeeping: the grid, record names, cache reuse, the TopK frontier."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import reproduce_paper as rp  # noqa: E402


def _args(*extra):
    return rp.build_parser().parse_args(
        ["--ks", "16", "32", "--afa-coefs", "1/128", "1/32", *extra]
    )


def test_grid_runs_rules_with_k_over_ks_and_k_free_rules_over_coefficients():
    grid = rp.sae_grid(_args("--activations", "topk", "topafa", "afa_band"))
    assert [(g["activation"], g["k"], g["afa_coef"]) for g in grid] == [
        ("topk", 16, "0"), ("topk", 32, "0"),
        ("topafa", None, "1/128"), ("topafa", None, "1/32"),
        ("afa_band", None, "1/128"), ("afa_band", None, "1/32"),
    ]  # fmt: skip
    assert rp.run_name(15, grid[1]) == "L15_topk_k32"
    assert rp.run_name(15, grid[3]) == "L15_topafa_afa1-32"
    assert rp.run_name(15, grid[3], seed=2) == "L15_topafa_afa1-32_s2"


def test_a_cache_of_more_layers_serves_fewer_but_not_other_settings():
    cached = {"model": "m", "layers": [12, 15, 18], "split": "train", "tokens": 10}
    assert rp.same_harvest(cached, {**cached, "layers": [15]})
    assert not rp.same_harvest(cached, {**cached, "layers": [15, 21]})
    assert not rp.same_harvest(cached, {**cached, "layers": [15], "tokens": 11})


def test_topk_frontier_is_log_log_between_measured_neighbours():
    rows = [
        {"layer": 15, "seed": 0, "activation": "topk", "k": 16, "l0": 16.0, "normalized_mse": 0.2},
        {"layer": 15, "seed": 0, "activation": "topk", "k": 32, "l0": 32.0, "normalized_mse": 0.1},
        {"layer": 15, "seed": 1, "activation": "topk", "k": 32, "l0": 32.0, "normalized_mse": 0.5},
        {"layer": 15, "seed": 0, "activation": "afa_band", "k": "", "l0": 16 * math.sqrt(2),
         "normalized_mse": 0.1},
        {"layer": 15, "seed": 0, "activation": "afa_band", "k": "", "l0": 64.0,
         "normalized_mse": 0.1},
    ]  # fmt: skip
    # halfway between 16 and 32 in log L0: halfway between 0.2 and 0.1 in log nMSE, 0.1 * sqrt 2;
    # the seed-1 TopK is a replicate, not part of the frontier
    assert rp.topk_frontier(rows, 15, 16 * math.sqrt(2)) == pytest.approx(0.1 * math.sqrt(2))
    assert rp.topk_frontier(rows, 15, 64.0) is None  # no extrapolation
    assert rp.topk_frontier(rows, 12, 20.0) is None
    rp.add_frontier_ratios(rows)
    assert rows[3]["vs_topk"] == pytest.approx(1 / math.sqrt(2), abs=1e-3)
    assert rows[4]["vs_topk"] == "" and rows[0]["vs_topk"] == ""
