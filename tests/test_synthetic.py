"""Synthetic worlds (SAELens's SynthSAEBench) as a data source, and scoring SAEs against their
known features: presets, caches in the harvest format, training from them, the ground-truth
evaluation (SAELens's own evaluator through our adapter) and its command line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("sae_lens.synthetic", reason="synthetic worlds need sae-lens (the synth extra)")

from hf_topafa import SAEConfig, SparseAutoencoder  # noqa: E402
from hf_topafa.cli import main as cli  # noqa: E402
from hf_topafa.data import synthetic  # noqa: E402
from hf_topafa.data.harvest import ActivationCache  # noqa: E402
from hf_topafa.data.synthetic_cache import write_synthetic_cache  # noqa: E402
from hf_topafa.evaluation.ground_truth import (  # noqa: E402
    SAELensView,
    TruthSet,
    codes_of,
    firing_codes,
    hierarchy_depths,
    kurtosis_reading_of_truth,
    matched_features,
    most_frequent,
    nearest_features,
    oracle_sae,
    relative_on,
    score_against_truth,
)
from hf_topafa.sae.absorption import (  # noqa: E402
    UnfoldedView,
    chance_coherence,
    unabsorbed_directions,
    unfolded_by_levels,
    unfolded_further,
)
from hf_topafa.sae.kfree import confident_energy  # noqa: E402
from hf_topafa.sae.reading import read_with  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from kurtosis_count import l0_and_error, read_count  # noqa: E402
from reader_prices import main as reader_prices_main  # noqa: E402
from risk_level import main as risk_level_main  # noqa: E402
from risk_level import risk_level  # noqa: E402
from synth_balance_fit import main as balance_fit_main  # noqa: E402
from synth_bench import (  # noqa: E402
    FINISHED_AT,
    REPO,
    build_parser,
    commit_record,
    head_commit,
    plan_of,
    record_name,
    recorded_command,
    train_ours,
)
from synth_bench import main as synth_bench_main  # noqa: E402
from synth_calibration import TRUTH_FREE, rank_correlation  # noqa: E402
from synth_calibration import main as calibration_main  # noqa: E402
from synth_compare_readers import main as compare_readers_main  # noqa: E402
from synth_device import samples_that_fit  # noqa: E402
from synth_energy import empty_token_detections, energy_readings  # noqa: E402
from synth_energy_trace import fano_energy, trace  # noqa: E402
from synth_false_positives import false_positive_sources  # noqa: E402
from synth_latent_noise import latent_levels, token_noise_check  # noqa: E402
from synth_missed_by_level import (  # noqa: E402
    by_place,
    depths,
    detections,
    frequency_quarters,
    kept_ancestor,
    kept_descendant,
    missed_by_latent,
    noise_levels,
    places,
    unmatched_in_decoder,
)
from synth_missed_by_level import main as missed_by_level_main  # noqa: E402
from synth_price_sweep import crossing_price  # noqa: E402
from synth_price_sweep import main as price_sweep_main  # noqa: E402
from synth_readings_plot import count_ratios  # noqa: E402
from synth_readings_plot import main as readings_plot_main  # noqa: E402
from synth_records_again import main as records_again_main  # noqa: E402
from synth_recovery_ceiling import main as recovery_main  # noqa: E402
from synth_reread import kept_true_and_false  # noqa: E402
from synth_reread import main as reread_main  # noqa: E402
from synth_right_price import (  # noqa: E402
    balance_or_end,
    estimated_count,
    gaussian_balance_price,
    unfolding_factor,
)
from synth_right_price import main as right_price_main  # noqa: E402
from synth_spikes_table import main as spikes_table_main  # noqa: E402
from synth_spikes_table import ranks, spearman  # noqa: E402
from synth_switch_table import main as switch_table_main  # noqa: E402
from synth_tail_sources import main as tail_sources_main  # noqa: E402
from synth_unfold_levels import (  # noqa: E402
    doubled_by_members,
    first_level_groups,
    level_sizes,
    sources_by_level,
)
from synth_unfold_levels import main as unfold_levels_main  # noqa: E402
from synth_unheld_spikes import main as unheld_spikes_main  # noqa: E402
from synth_unheld_spikes import spike_count  # noqa: E402
from synth_woken_refit import main as woken_refit_main  # noqa: E402

TINY = {
    "num_features": 48,
    "hidden_dim": 24,
    "firing_probability": {
        "generator_name": "zipfian", "exponent": 0.5, "max_prob": 0.3, "min_prob": 0.02,
    },
    "mean_firing_magnitudes": {"generator_name": "linear", "start": 5.0, "end": 4.0},
    "std_firing_magnitudes": 0.5,
    "bias": 0.5,
    "seed": 3,
}  # fmt: skip


@pytest.fixture
def world_json(tmp_path, monkeypatch):
    """A tiny world config (48 features in 24 dims, no hierarchy), cached under tmp_path."""
    monkeypatch.setenv("HF_TOPAFA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture
def oracle_run(world_json, tmp_path):
    """The tiny world's own features saved as a TopK k = 8 SAE folder."""
    run = tmp_path / "oracle"
    world = synthetic.load_world(str(world_json), progress=False)
    oracle_sae(world, activation="topk", k=8).save_pretrained(run)
    return run


def test_presets_are_the_published_configs():
    from sae_lens.synthetic import SyntheticModelConfig

    big = SyntheticModelConfig.from_dict(synthetic.PRESETS["synthsaebench-16k"])
    assert (big.num_features, big.hidden_dim, big.seed, big.bias) == (16384, 768, 42, 0.5)
    fp = big.firing_probability
    assert (fp.exponent, fp.max_prob, fp.min_prob) == (0.5, 0.4, 5e-4)
    h = big.hierarchy
    assert (h.total_root_nodes, h.branching_factor, h.max_depth) == (128, 4, 3)
    assert h.mutually_exclusive_portion == 1.0 and h.compensate_probabilities
    assert h.scale_children_by_parent
    assert (big.orthogonalization.num_steps, big.orthogonalization.lr) == (100, 3e-4)
    assert (big.correlation.rank, big.correlation.correlation_scale) == (25, 0.1)
    assert (big.mean_firing_magnitudes.start, big.mean_firing_magnitudes.end) == (5.0, 4.0)
    assert (big.std_firing_magnitudes.mean, big.std_firing_magnitudes.std) == (0.5, 0.5)
    small = SyntheticModelConfig.from_dict(synthetic.PRESETS["synthsaebench-4k"])
    assert (small.num_features, small.hidden_dim, small.hierarchy.total_root_nodes) == (
        4096, 192, 32)  # fmt: skip
    assert small.correlation == big.correlation and small.firing_probability == fp


def test_unknown_worlds_are_refused_with_what_is_valid(tmp_path):
    with pytest.raises(synthetic.WorldError, match="give a preset .*synthsaebench-4k"):
        synthetic.resolve_world("synthsaebench-9k")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(synthetic.WorldError, match="a world config is a JSON object"):
        synthetic.resolve_world(str(bad))
    (tmp_path / "folder").mkdir()
    with pytest.raises(synthetic.WorldError, match="written by SyntheticModel.save"):
        synthetic.resolve_world(str(tmp_path / "folder"))
    bad.write_text(json.dumps({"num_features": 4}))
    with pytest.raises(synthetic.WorldError, match="not a valid SyntheticModelConfig"):
        synthetic.load_world(str(bad), progress=False)


def test_without_saelens_one_line_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens.synthetic", None)
    with pytest.raises(synthetic.WorldError, match=r'pip install -e "\.\[synth\]"'):
        synthetic.import_synthetic()


def test_a_world_is_built_once_and_cached(world_json):
    name, folder = synthetic.world_folder(str(world_json), progress=False)
    assert name == "tiny" and (folder / "build.json").is_file()
    stamp = (folder / "build.json").stat().st_mtime_ns
    again = synthetic.world_folder(str(world_json), progress=False)[1]
    assert again == folder and (folder / "build.json").stat().st_mtime_ns == stamp
    assert json.loads((folder / "build.json").read_text())["device"] == "cpu"  # no GPU here
    world = synthetic.load_world(str(folder), progress=False)  # a saved folder names it too
    assert world.cfg.num_features == 48 and world.cfg.hidden_dim == 24


def test_harvest_synthetic_writes_a_cache_whose_truth_replays(world_json, tmp_path, capsys):
    out = tmp_path / "syn"
    argv = ["harvest", "--synthetic", str(world_json), "--max-tokens", "700"]
    argv += ["--shard-tokens", "300", "--output", str(out)]
    assert cli(argv) == 0
    assert "wrote 700 samples x 24 of the world tiny" in capsys.readouterr().out
    cache = ActivationCache(out)
    man = cache.manifest
    assert man["model"] == "synthetic:tiny" and man["synthetic"]["with_truth"]
    assert man["synthetic"]["config"]["num_features"] == 48
    assert [s["num_tokens"] for s in man["shards"]] == [300, 300, 100]
    world = synthetic.load_world(str(world_json), progress=False)
    truth = TruthSet.from_cache(cache, 48)
    x = torch.cat([b for b in cache.iter_batches(1000, shuffle=False)])
    torch.testing.assert_close(world.feature_dict(truth.rows(0, 700)), x)
    from safetensors.torch import load_file

    stored_l0 = torch.cat([load_file(str(p))["true_l0"] for p in cache.shard_paths]).float()
    assert torch.equal(stored_l0, (truth.rows(0, 700) != 0).sum(-1).float())
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert cli(argv) == 0 and (out / "manifest.json").stat().st_mtime_ns == stamp  # reused
    assert cli([*argv, "--sample-seed", "9"]) == 2  # another draw: refused, not overwritten
    assert "already holds another activation cache" in capsys.readouterr().err


def test_training_reads_a_synthetic_cache_with_its_provenance(world_json, tmp_path):
    from hf_topafa.training.train import TrainConfig, train

    cache = write_synthetic_cache(str(world_json), tmp_path / "c", 3000, progress=False)
    config = TrainConfig.from_flat(
        activation="topk", k=4, d_sae=64, batch_size=256, max_tokens=2048, eval_tokens=256,
        output=str(tmp_path / "run"), progress=False, log_with="none", checkpoint_every=0,
        input_normalization="none",
    )  # fmt: skip
    run = train(config, data=cache)
    saved = json.loads((run / "config.json").read_text())
    assert saved["base_model"] == "synthetic:tiny" and saved["layer"] is None
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["held_out"] is True and metrics["normalized_mse"] < 1.0


def test_training_can_draw_its_samples_from_the_world_while_it_trains(world_json, tmp_path):
    from hf_topafa.training.train import TrainConfig, train

    config = TrainConfig.from_flat(
        synthetic=str(world_json), activation="topk", k=4, d_sae=64, batch_size=256,
        max_tokens=2048, eval_tokens=256, output=str(tmp_path / "run"), progress=False,
        log_with="none", checkpoint_every=0, input_normalization="none",
    )  # fmt: skip
    run = train(config)
    saved = json.loads((run / "config.json").read_text())
    assert saved["base_model"] == "synthetic:tiny" and saved["dataset"] == "synthetic:tiny"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["held_out"] is True and metrics["normalized_mse"] < 1.0
    with pytest.raises(ValueError, match="not both"):
        TrainConfig.from_flat(synthetic=str(world_json), activation_cache=str(tmp_path))


def test_drawn_batches_replay_from_any_position_and_leave_torch_rng_alone(world_json):
    from hf_topafa.training.training_data import SyntheticSource, endless_batches

    world = synthetic.load_world(str(world_json), progress=False)
    source = SyntheticSource(world, local_batch=32, rank=0, seed=7)
    torch.manual_seed(123)
    expected_rng = torch.rand(3)
    torch.manual_seed(123)
    stream = endless_batches(source, [0, 0])
    first = [next(stream) for _ in range(5)]
    assert torch.equal(torch.rand(3), expected_rng)  # drawing did not move the global generator
    assert [position for _, position in first] == [[0, i] for i in range(1, 6)]
    drawn, sample = [], world.sample
    world.sample = lambda n: drawn.append(n) or sample(n)  # counts the draws
    resumed, position = next(endless_batches(source, [0, 3]))  # seeks: batch 4 without 1..3
    assert position == [0, 4] and torch.equal(resumed, first[3][0]) and drawn == [32]
    world.sample = sample
    other_rank = next(SyntheticSource(world, 32, rank=1, seed=7).epoch(0))
    assert not torch.equal(other_rank, first[0][0]) and first[0][0].shape == (32, 24)
    assert not torch.equal(next(source.epoch(1)), first[0][0])  # each pass draws new samples


def test_draws_of_several_batches_replay_the_same_batches_from_any_position(world_json):
    from hf_topafa.training.training_data import SyntheticSource

    world = synthetic.load_world(str(world_json), progress=False)
    assert SyntheticSource(world, 32, rank=0, seed=7).draw_batches == 1  # a CPU: one at a time
    source = SyntheticSource(world, 32, rank=0, seed=7, draw_batches=4)
    drawn, sample = [], world.sample
    world.sample = lambda n: drawn.append(n) or sample(n)
    whole = list(source.epoch(0))
    assert len(whole) == source.PASS_BATCHES and drawn == [128] * (source.PASS_BATCHES // 4)
    drawn.clear()
    resumed = list(source.epoch(0, start=6))  # mid-draw: the draw holding batch 6, then on
    assert drawn[0] == 128 and len(drawn) == (source.PASS_BATCHES - 4) // 4
    assert all(torch.equal(a, b) for a, b in zip(resumed, whole[6:], strict=True))
    world.sample = sample
    assert not torch.equal(whole[0], whole[4])  # each draw is seeded apart


def test_a_device_run_trains_every_sae_on_what_the_slowest_fits():
    assert samples_that_fit([100.0, 50.0], 60.0, 1024, 200_000_000) == 3_070_000  # 3,072,000
    assert samples_that_fit([5000.0], 600.0, 1024, 200_000_000) == 200_000_000  # the cap
    assert samples_that_fit([0.5], 1.0, 1024, 10**9) == 0 and samples_that_fit([9.0], -5, 1, 9) == 0


def test_the_device_shim_lets_saelens_synthetic_import_without_the_packages_it_never_calls():
    import subprocess

    code = (
        "import sae_lens.synthetic, wandb, datasets.arrow_dataset as d\n"
        "try:\n    wandb.init()\nexcept RuntimeError as e:\n    print('refused:', e)\n"
        "print(type(d.Dataset).__name__, sae_lens.synthetic.SyntheticModel.__name__)"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO / "scripts" / "device_site")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    assert "refused: a package left out" in done.stdout and "type SyntheticModel" in done.stdout


def test_text_commands_point_a_synthetic_sae_to_evaluate_synthetic(capsys):
    from hf_topafa.data.synthetic_cache import synthetic_world_hint

    assert synthetic_world_hint("HuggingFaceTB/SmolLM2-135M-Instruct") == ""
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, activation="topk", k=2,
                                      base_model="synthetic:tiny"))  # fmt: skip
    from hf_topafa.evaluation.evaluate import EvalConfig, evaluate_saes

    with pytest.raises(ValueError, match="score it with hf-topafa evaluate SAE --synthetic tiny"):
        evaluate_saes([sae], EvalConfig(max_tokens=8))


def test_a_tensor_records_only_the_provenance_its_caller_gives(tmp_path):
    from hf_topafa.training.train import TrainConfig, train

    x = torch.randn(1500, 8)
    flat = dict(activation="topk", k=2, d_sae=16, batch_size=256, max_tokens=512, eval_tokens=256,
                progress=False, log_with="none", checkpoint_every=0)  # fmt: skip
    run = train(TrainConfig.from_flat(output=str(tmp_path / "a"), **flat), data=x)
    saved = json.loads((run / "config.json").read_text())
    assert saved["base_model"] is None and saved["layer"] is None
    given = {"base_model": "my/model", "layer": 3, "hook_point": "resid_post"}
    run = train(TrainConfig.from_flat(output=str(tmp_path / "b"), **flat), data=x,
                provenance=given)  # fmt: skip
    saved = json.loads((run / "config.json").read_text())
    assert (saved["base_model"], saved["layer"], saved["hook_point"]) == ("my/model", 3,
                                                                          "resid_post")  # fmt: skip
    with pytest.raises(ValueError, match="unknown provenance fields \\['modle'\\]"):
        train(TrainConfig.from_flat(output=str(tmp_path / "c"), **flat), data=x,
              provenance={"modle": "x"})  # fmt: skip


def test_scores_against_the_truth_find_an_oracle_and_reject_noise(world_json):
    world = synthetic.load_world(str(world_json), progress=False)
    truth = TruthSet.drawn_from(world, 2000, seed=4)
    oracle = score_against_truth(oracle_sae(world, activation="topk", k=8), world, truth)["row"]
    assert oracle["mcc"] == pytest.approx(1.0, abs=1e-5) and oracle["uniqueness"] == 1.0
    torch.manual_seed(0)
    noise = SparseAutoencoder(SAEConfig(d_in=24, d_sae=48, activation="topk", k=8,
                                        input_normalization="none"))  # fmt: skip
    random_row = score_against_truth(noise.eval(), world, truth)["row"]
    assert random_row["mcc"] < 0.6 < oracle["mcc"]
    assert oracle["f1"] > random_row["f1"]
    # the AFA on the truth: ||x - bias|| against ||f_true|| with unit features
    assert 0 < oracle["afa_norm_rel_err_median"] < 0.5
    assert oracle["true_l0"] == pytest.approx(len(truth.indices) / 2000)
    assert oracle["true_l0_top_width"] == pytest.approx(oracle["true_l0"])  # width holds them all


def test_directions_replace_the_rows_the_truth_is_matched_to_not_the_reconstruction(world_json):
    world = synthetic.load_world(str(world_json), progress=False)
    truth = TruthSet.drawn_from(world, 1000, seed=5)
    oracle = oracle_sae(world, activation="topk", k=8)
    plain = score_against_truth(oracle, world, truth)["row"]
    elsewhere = torch.randn(48, 24, generator=torch.Generator().manual_seed(0))
    moved = score_against_truth(oracle, world, truth, directions=elsewhere)["row"]
    assert plain["mcc"] == pytest.approx(1.0, abs=1e-5) and moved["mcc"] < 0.6
    assert moved["explained_variance"] == plain["explained_variance"]
    assert moved["l0"] == plain["l0"] and moved["f1"] < plain["f1"]
    view = SAELensView(oracle, elsewhere)
    assert view.W_dec is elsewhere and SAELensView(oracle).W_dec is oracle.W_dec


def test_reread_unabsorb_scores_each_reading_twice_and_leaves_a_clean_dictionary_be(
    world_json, oracle_run, tmp_path, monkeypatch, capsys
):
    run = oracle_run
    cache = write_synthetic_cache(str(world_json), tmp_path / "c", 400, seed=2, with_truth=True,
                                  progress=False)  # fmt: skip
    out = tmp_path / "r.json"
    argv = ["synth_reread.py", str(run), str(cache), "topk:8", "--unabsorb", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    reread_main()
    assert '"rows_changed": 0' in capsys.readouterr().out  # the world's features: no absorption
    written = json.loads(out.read_text())
    rows = written["rows"]
    assert written["unabsorb"]["shared_is_ancestor"] is None  # nothing changed to judge
    assert [r["rule"] for r in rows] == ["topk:8", "topk:8, unabsorbed"]
    assert rows[0]["mcc"] == pytest.approx(rows[1]["mcc"]) == pytest.approx(1.0, abs=1e-5)
    below_chance = [*argv, "--unabsorb-level", "0.2", "--unfold"]  # rows that move, and atoms
    monkeypatch.setattr(sys, "argv", below_chance)
    reread_main()
    assert '"rows_changed": 0' not in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["unabsorb"]["shared_is_ancestor"] == 0.0  # a world with no hierarchy
    assert written["unabsorb"]["parent_atoms"] > 0
    assert written["unabsorb"]["atoms_by_levels"] >= written["unabsorb"]["parent_atoms"]
    rows = written["rows"]
    assert [r["rule"] for r in rows] == [
        "topk:8", "topk:8, unabsorbed", "topk:8, unfolded", "topk:8, unfolded by levels"
    ]  # fmt: skip
    assert rows[1]["mcc"] < rows[0]["mcc"] == pytest.approx(1.0, abs=1e-5)
    assert rows[3]["l0"] >= rows[2]["l0"] > rows[0]["l0"]  # the atoms fire with their groups
    assert rows[3]["explained_variance"] == rows[2]["explained_variance"]
    assert rows[2]["explained_variance"] == rows[0]["explained_variance"]
    monkeypatch.setattr(sys, "argv", [*argv[:-3], "--unabsorb-level", "0.2", "--stars", *argv[-2:]])
    reread_main()  # --stars implies --unfold and adds the reading without stars' atoms
    written = json.loads(out.read_text())
    assert written["rows"][:4] == rows
    assert written["rows"][4]["rule"] == "topk:8, unfolded by levels, stars"
    found = written["unabsorb"]
    assert found["atoms_by_levels_stars"] <= found["atoms_by_levels"]
    assert written["rows"][4]["explained_variance"] == rows[0]["explained_variance"]
    firing = write_synthetic_cache(str(world_json), tmp_path / "f", 300, seed=3, progress=False)
    exclusive = [*argv[:-3], "--unabsorb-level", "0.2", "--exclusive", str(firing), *argv[-2:]]
    monkeypatch.setattr(sys, "argv", exclusive)
    reread_main()  # --exclusive implies --unfold and adds the reading without nested groups
    written = json.loads(out.read_text())
    assert written["rows"][:4] == rows
    assert written["rows"][4]["rule"] == "topk:8, unfolded by levels, exclusive"
    found = written["unabsorb"]
    assert found["firing"] == {"cache": str(firing), "samples": 300}
    exclusive_label = "topk:8, unfolded by levels, exclusive"
    assert found["atoms_by_levels_exclusive"][exclusive_label] <= found["atoms_by_levels"]
    assert rows[0]["l0"] <= written["rows"][4]["l0"] <= rows[3]["l0"]
    unhubbed = written["rows"][4]
    monkeypatch.setattr(sys, "argv", [*exclusive, "--hubs", "--last-only"])
    reread_main()  # --hubs adds the exclusive reading with hubs, last; --last-only scores it alone
    written = json.loads(out.read_text())
    (hubbed,) = written["rows"]
    assert hubbed["rule"] == "topk:8, unfolded by levels, exclusive, hubs"
    assert written["unabsorb"]["hubs"][hubbed["rule"]] >= 0
    assert rows[0]["l0"] <= hubbed["l0"] <= unhubbed["l0"]  # a hub only silences its atom
    monkeypatch.setattr(sys, "argv", [*exclusive, "--fold", "--last-only"])
    reread_main()  # --fold implies --hubs and adds the reading with each hub folded, last
    written = json.loads(out.read_text())
    (folded,) = written["rows"]
    assert folded["rule"] == "topk:8, unfolded by levels, exclusive, hubs folded"
    assert written["unabsorb"]["hubs"][folded["rule"]] >= 0
    assert rows[0]["l0"] <= folded["l0"] <= unhubbed["l0"]  # the parent once, on the atom
    assert folded["explained_variance"] == unhubbed["explained_variance"]
    monkeypatch.setattr(sys, "argv", [*exclusive, "--fold", "--triangles", "--last-only"])
    reread_main()  # rows that meet in threes grouped too
    written = json.loads(out.read_text())
    (thrice,) = written["rows"]
    assert thrice["rule"] == "topk:8, unfolded by levels, exclusive, hubs folded, triangles"
    assert thrice["explained_variance"] == unhubbed["explained_variance"]
    monkeypatch.setattr(sys, "argv", [*exclusive, "--fold", "--lone-triangles", "--last-only"])
    reread_main()
    (lone,) = json.loads(out.read_text())["rows"]
    assert lone["rule"] == "topk:8, unfolded by levels, exclusive, hubs folded, lone triangles"
    monkeypatch.setattr(sys, "argv", [*exclusive, "--doubles"])
    reread_main()  # --doubles implies --fold and adds the folded reading without doubles, last
    written = json.loads(out.read_text())
    assert [r["rule"] for r in written["rows"][-2:]] == [
        "topk:8, unfolded by levels, exclusive, hubs folded",
        "topk:8, unfolded by levels, exclusive, hubs folded, doubles dropped",
    ]
    found = written["unabsorb"]  # every reading keeps its own groups, not the last one's
    labels = [r["rule"] for r in written["rows"] if ", exclusive" in r["rule"]]
    assert list(found["atoms_by_levels_exclusive"]) == labels and len(labels) == 4
    assert list(found["hubs"]) == labels[1:]
    doubled = found["doubles"][labels[-1]]
    assert written["rows"][-2] == folded and doubled >= 0
    assert written["rows"][-1]["l0"] <= folded["l0"]  # a double's firings are another's
    assert written["rows"][-1]["explained_variance"] == folded["explained_variance"]
    for option, says in (("--hubs", "reads the hubs from the codes of --exclusive"),
                         ("--fold", "reads the hubs from the codes of --exclusive"),
                         ("--doubles", "reads the hubs from the codes of --exclusive"),
                         ("--triangles", "groups the exclusive readings"),
                         ("--lone-triangles", "groups the exclusive readings")):  # fmt: skip
        monkeypatch.setattr(sys, "argv", [*argv, option])
        with pytest.raises(SystemExit, match=f"{option} {says}"):
            reread_main()


def test_risk_level_reports_the_pooled_level_and_what_pays_it(
    world_json, oracle_run, tmp_path, monkeypatch
):
    cache = write_synthetic_cache(str(world_json), tmp_path / "c", 400, seed=2, progress=False)
    out = tmp_path / "level.json"
    argv = ["risk_level.py", str(oracle_run), "--cache", str(cache), "--samples", "300",
            "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    risk_level_main()
    found = json.loads(out.read_text())["runs"][str(oracle_run)]
    assert found["samples"] == 300 and found["pooled_noise"] > 0
    assert found["price"] == pytest.approx(2 * math.log(48) * found["pooled_noise"])
    assert 0 < found["kept_floor"] <= found["kept_pooled"] <= found["positive_pre"]
    sq = found["contribution_sq_median"]
    assert sq["1"] >= sq["5"] >= sq["10"] >= 0
    sae = read_with(SparseAutoencoder.from_pretrained(oracle_run), "risk_floor").eval()
    x = ActivationCache(cache).first_activations(300)
    with torch.no_grad():  # the floor's count is the rule's own L0 on the same samples
        assert found["kept_floor"] == pytest.approx(float(sae(x).l0.float().mean()))
    assert risk_level(sae, x) == found


def test_readings_plot_draws_each_readings_count_over_what_the_width_holds(tmp_path, monkeypatch):
    rows = [{"rule": "risk_floor", "l0": 6.0, "true_l0_top_width": 12.0},
            {"rule": "risk_floor, unfolded by levels", "l0": 13.2, "true_l0_top_width": 12.0}]  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps({"rows": rows}))
    (tmp_path / "b.json").write_text(json.dumps({"rows": rows[:1]}))
    assert count_ratios(tmp_path) == {
        "a": {"as read": 0.5, "unfolded by levels": pytest.approx(1.1)}, "b": {"as read": 0.5}
    }  # fmt: skip
    out = tmp_path / "plot" / "counts.png"
    monkeypatch.setattr(sys, "argv", ["synth_readings_plot.py", str(tmp_path), "--out", str(out)])
    readings_plot_main()
    assert out.stat().st_size > 10_000
    (tmp_path / "c.json").write_text(json.dumps({"run": "x"}))
    with pytest.raises(SystemExit, match="holds no rows"):
        count_ratios(tmp_path)
    with pytest.raises(SystemExit, match="no synth_reread.py JSON"):
        count_ratios(tmp_path / "plot")


def test_unfold_levels_script_reads_each_way_and_records_where_nesting_was_read(
    world_json, oracle_run, tmp_path, monkeypatch
):
    cache = write_synthetic_cache(str(world_json), tmp_path / "c", 300, seed=2, with_truth=True,
                                  progress=False)  # fmt: skip
    firing = write_synthetic_cache(str(world_json), tmp_path / "f", 200, seed=3, progress=False)
    out = tmp_path / "levels.json"
    argv = ["synth_unfold_levels.py", str(oracle_run), str(cache), "topk:8", "--samples", "300",
            "--exclusive", str(firing), "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    unfold_levels_main()
    written = json.loads(out.read_text())
    assert written["firing_cache"] == str(firing) and written["samples"] == 300
    readings = [written[name] for name in ("relaxed", "held", "stars", "exclusive")]
    assert all(len(r["levels"]) == 1 for r in readings)  # the world's features: nothing groups
    assert len({r["l0"] for r in readings}) == 1 and 0 < readings[0]["l0"] <= 8
    assert "exclusive_hubs" not in written
    monkeypatch.setattr(sys, "argv", [*argv, "--hubs"])
    unfold_levels_main()
    written = json.loads(out.read_text())
    assert written["exclusive_hubs"]["l0"] == readings[0]["l0"]  # no group: no hub to silence
    monkeypatch.setattr(sys, "argv", [*argv[:6], "--hubs"])
    with pytest.raises(SystemExit, match="--hubs reads the hubs from the codes of --exclusive"):
        unfold_levels_main()


def test_unfold_levels_sources_split_each_levels_firings_into_true_and_false(
    world_json, oracle_run
):
    world = synthetic.load_world(str(world_json), progress=False)
    truth = TruthSet.drawn_from(world, 300, seed=4)
    sae = read_with(SparseAutoencoder.from_pretrained(oracle_run), "topk:8")
    assert level_sizes(unfolded_by_levels(sae)) == [48]  # no two features meet above chance
    once = UnfoldedView(sae, unabsorbed_directions(sae.W_dec, 0.2))
    view = unfolded_further(once)
    rows = sources_by_level(view, world, truth, 300, batch=128)
    own = rows[0]  # the world's own features, read by TopK
    codes = truth.rows(0, 300)
    with torch.no_grad():
        l0 = float(sae(world.feature_dict(codes)).l0.float().mean())
    assert own["latents"] == 48 and own["fire"] == pytest.approx(l0, abs=1e-3) and l0 <= 8
    true_l0 = float((codes > 0).sum(-1).float().mean())  # k = 8 finds most, and more
    assert 0.8 * true_l0 < own["true"] <= true_l0 and own["false"] > 0
    assert 0.5 < own["matched_cos_median"] < 1  # the rows less what they share at 0.2
    assert own["matched_outside"] == 48 and own["matched_depths"] == [0, 0, 0, 0]  # no hierarchy
    assert [row["latents"] for row in rows] == level_sizes(view) and sum(level_sizes(view)) > 48
    assert all(row["true"] + row["false"] == pytest.approx(row["fire"], abs=2e-3) for row in rows)
    assert own["doubled"] is None  # the rows have no members
    assert own["pairs"] > 0 and all(row["nested"] in (0, None) for row in rows)  # no codes
    assert rows[-1]["pairs"] is None  # no level follows the last
    assert all(0 <= row["doubled"] <= row["fire"] + 1e-3 for row in rows[1:])
    # the doubled firings counted one sample, atom and member at a time
    unit = torch.nn.functional.normalize(view.W_dec.detach(), dim=-1)
    features = torch.nn.functional.normalize(world.feature_dict.feature_vectors.detach(), dim=-1)
    nearest = (unit @ features.T).abs().argmax(-1).tolist()
    with torch.no_grad():
        fired = (view(world.feature_dict(codes)).feature_acts != 0).tolist()
    inner, by_level = view, []
    while isinstance(inner, UnfoldedView):
        base, count = inner.W_dec.shape[0] - inner.added, 0
        for atom in range(inner.added):
            members = [m for m in (inner.group == atom).nonzero().squeeze(-1).tolist()
                       if nearest[m] == nearest[base + atom]]  # fmt: skip
            count += sum(row[base + atom] and any(row[m] for m in members) for row in fired)
        by_level = [count / 300, *by_level] if inner.added else by_level
        inner = inner.sae
    assert doubled_by_members(view, world, truth, 300, 128) == [round(c, 3) for c in by_level]
    assert sum(by_level) > 0  # some atom here shares its nearest feature with a member
    assert hierarchy_depths(torch.tensor([-1, 0, 1, 1, -1])).tolist() == [0, 1, 2, 2, 0]
    bands = first_level_groups(once, world, truth, 300, 128)
    assert sum(band["atoms"] for band in bands) == level_sizes(view)[1]
    assert sum(band["fire"] for band in bands) == pytest.approx(rows[1]["fire"], abs=2e-3)
    assert all(band["one_parent_share"] in (None, 0.0) for band in bands)  # no parents here
    assert all(band["parent_has_own_row_share"] is None for band in bands)
    assert first_level_groups(UnfoldedView(sae), world, truth, 300, 128) == []  # none at chance


def test_an_oracle_holds_the_widths_most_frequent_features_and_reads_a_lone_one_exactly(world_json):
    world = synthetic.load_world(str(world_json), progress=False)
    truth = TruthSet.drawn_from(world, 3000, seed=6)
    counts = torch.bincount(truth.indices[:, 1], minlength=48)
    unit = torch.nn.functional.normalize(world.feature_dict.feature_vectors.float(), dim=-1)
    matched = oracle_sae(world, truth, 16)
    whitened = oracle_sae(world, truth, 16, encoder="whitened")
    assert torch.allclose(matched.W_dec, unit[most_frequent(counts, 16)])
    assert torch.allclose(whitened.W_dec, matched.W_dec)
    lone = 3.0 * matched.W_dec + world.feature_dict.bias  # each held feature alone, magnitude 3
    for sae in (matched, whitened):
        reading = (lone - sae.b_dec) @ sae.W_enc
        assert torch.allclose(reading.diagonal(), torch.full((16,), 3.0), atol=1e-4)
    # the whitened reading carries less of the other features (same gain on its own)
    z = world.feature_dict(truth.rows(0, 3000)) - world.feature_dict.bias
    energy = {name: ((z @ sae.W_enc) ** 2).mean(0) for name, sae in
              (("matched", matched), ("whitened", whitened))}  # fmt: skip
    assert bool((energy["whitened"] <= energy["matched"] + 1e-4).all())
    assert bool((energy["whitened"] < energy["matched"] - 1e-3).any())
    # the prior: a frequent feature's level sits lower than a rare one's (encoder bias higher)
    prior = oracle_sae(world, truth, 16, encoder="prior")
    rates = counts[most_frequent(counts, 16)].float()
    assert torch.allclose(prior.W_enc, matched.W_enc)
    more = rates[:, None] > rates[None, :]  # [i, j]: i fires more often than j
    assert more.any() and bool((prior.b_enc[:, None] > prior.b_enc[None, :])[more].all())
    # every latent of a full oracle is matched to its own feature; kept = true + false
    full = oracle_sae(world, activation="topk", k=4)
    match = matched_features(full.W_dec, world.feature_dict.feature_vectors)
    assert torch.equal(match, torch.arange(48))
    kept = kept_true_and_false(full, world, truth, match)
    row = score_against_truth(full, world, truth)["row"]
    assert kept["true_pos"] + kept["false_pos"] == pytest.approx(row["l0"], rel=1e-6)
    assert 0 < kept["true_pos"] <= row["true_l0"]
    for bad, message in (({"width": 0}, "oracle width must be 1..48"),
                         ({"width": 16}, "needs a truth set"),
                         ({"encoder": "prior"}, "needs a truth set"),
                         ({"encoder": "pinv"}, "matched, whitened or prior")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            oracle_sae(world, **bad)


def test_a_dictionary_of_the_features_reads_a_kurtosis_count_a_random_one_reads_its_cap(
    world_json,
):
    world = synthetic.load_world(str(world_json), progress=False)
    truth = TruthSet.drawn_from(world, 4000, seed=2)
    x = world.feature_dict(truth.rows(0, 4000))
    torch.manual_seed(0)
    random = SparseAutoencoder(SAEConfig(d_in=24, d_sae=48, activation="topk", k=4,
                                         input_normalization="layer_norm"))  # fmt: skip
    assert read_count(random.eval(), x)["kurtosis_count"] == pytest.approx(12.0, rel=0.05)
    oracle = read_count(oracle_sae(world), x)
    assert oracle["cap"] == 12.0 and 1.0 < oracle["kurtosis_count"] < 9.0
    # read by afa_kurtosis, the tokens keep the count between them, and leave out interference
    # that the ReLU reading of the same dictionary adds to its reconstruction
    read = l0_and_error(read_with(oracle_sae(world), "afa_kurtosis"), x)
    assert read["l0"] == pytest.approx(oracle["kurtosis_count"], rel=1e-3)
    assert read["normalized_mse"] < oracle["normalized_mse"]
    assert oracle["l0"] == pytest.approx(
        float((oracle_sae(world)(x).feature_acts > 0).sum(-1).float().mean())
    )


def test_the_kurtosis_reading_of_the_truth_counts_unheld_energy_and_magnitude_spread():
    # 4 samples: feature 0 fires 3 times, feature 1 twice (all at 2), feature 2 once (at 1)
    indices = torch.tensor([[0, 0], [0, 1], [1, 0], [2, 2], [3, 0], [3, 1]])
    values = torch.tensor([2.0, 2.0, 2.0, 1.0, 2.0, 2.0])
    held = kurtosis_reading_of_truth(TruthSet(indices, values, 4, 3), width=2)
    # (E Σ a²)² / E Σ_held a⁴ = (21/4)² / 20; the held magnitudes are equal: no spread
    assert held["predicted_reading"] == pytest.approx((21 / 4) ** 2 / 20)
    assert held["true_l0"] == 1.5 and held["held_l0"] == 1.25
    assert held["outside_energy_squared"] == pytest.approx((21 / 20) ** 2)
    assert held["magnitude_spread"] == pytest.approx(1.0)
    assert held["predicted_reading"] == pytest.approx(
        held["held_l0"] * held["outside_energy_squared"] * held["magnitude_spread"]
    )
    # every feature held, magnitudes 1 and 3: the reading is the L0 times m₂²/m₄ = 25/41
    spread = kurtosis_reading_of_truth(
        TruthSet(torch.tensor([[0, 0], [1, 1]]), torch.tensor([1.0, 3.0]), 2, 2), width=2
    )
    assert spread["outside_energy_squared"] == 1.0
    assert spread["predicted_reading"] == pytest.approx(25 / 41)


def test_per_sample_counts_follow_an_adaptive_rule(world_json):
    world = synthetic.load_world(str(world_json), progress=False)
    truth = TruthSet.drawn_from(world, 2000, seed=5)
    from hf_topafa.evaluation.ground_truth import correlation

    row = score_against_truth(oracle_sae(world), world, truth)["row"]
    assert row["l0_corr"] is not None and 0 < row["l0_corr"] <= 1
    assert row["l0_ratio_quantiles"][0] <= row["l0_ratio_quantiles"][1]
    assert correlation(torch.full((5,), 3.0), torch.arange(5.0)) is None  # TopK's constant L0


def test_chains_count_each_active_root_to_leaf_path_once():
    from sae_lens.synthetic.hierarchy import Hierarchy, HierarchyNode

    from hf_topafa.evaluation.ground_truth import active_chains, hierarchy_parents

    # 0 -> {1 -> {3}, 2}; 4 has no parent; 5 -> {6} under a node that holds no feature
    tree = HierarchyNode(0, [HierarchyNode(1, [HierarchyNode(3)]), HierarchyNode(2)])
    other = HierarchyNode(None, [HierarchyNode(5, [HierarchyNode(6)])])
    world = SimpleNamespace(cfg=SimpleNamespace(num_features=7),
                            hierarchy=Hierarchy([tree, other], None))  # fmt: skip
    parents = hierarchy_parents(world)
    assert parents.tolist() == [-1, 0, 0, 1, -1, -1, 5]
    codes = torch.tensor([[1.0, 1, 0, 1, 1, 0, 0],  # 0 -> 1 -> 3, and 4: two chains
                          [0.0, 1, 0, 1, 0, 1, 1],  # 1 -> 3 (its parent off), 5 -> 6
                          [0.0, 0, 0, 0, 0, 0, 0]])  # fmt: skip
    assert active_chains(codes, parents).tolist() == [2, 2, 0]
    # a dictionary that holds only features 0, 3 and 4: 3's parent is not held, so 3 starts a chain
    held = torch.tensor([True, False, False, True, True, False, False])
    assert active_chains(codes, parents, held).tolist() == [3, 1, 0]
    assert (hierarchy_parents(SimpleNamespace(cfg=world.cfg, hierarchy=None)) == -1).all()


def test_matching_pairs_each_latent_with_its_feature_one_to_one_whatever_the_sign():
    from hf_topafa.evaluation.ground_truth import matched_features

    features = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))[0]
    order = torch.tensor([3, 0, 5, 1])
    W_dec = 2.0 * features[order] * torch.tensor([[1.0], [-1.0], [1.0], [1.0]])
    W_dec = W_dec.requires_grad_()  # a trained decoder: matching must not need detaching
    assert matched_features(W_dec, features).tolist() == order.tolist()


def test_per_latent_crossing_finds_gaussian_noise_and_its_planted_signal():
    gen = torch.Generator().manual_seed(0)
    n = 20000
    raw = torch.randn(n, 3, generator=gen) * torch.tensor([1.0, 0.5, 2.0]) - 0.3
    on = torch.rand(n, 3, generator=gen) < 0.02
    raw = torch.where(on, 12.0 + torch.randn(n, 3, generator=gen), raw)
    found = latent_levels(raw, on)
    assert 0.95 < found["sigma_over_noise_sd"] < 1.05
    assert 0.0005 < found["noise_tail_above_3_sigma"] < 0.0025
    for reading in ("free", "mirror", "oracle"):
        levels = found[reading]
        # above the noise (a few sigma over -0.3) and below the planted signal's bulk (about 12)
        assert ((levels > -0.3 + 2.5 * torch.tensor([1.0, 0.5, 2.0])) & (levels < 10)).all()
        kept = raw > levels
        assert (kept & on).sum() / on.sum() > 0.97 and (kept & ~on).sum() < 0.002 * n * 3


def test_mirror_reading_holds_where_the_noise_is_a_spike_with_tails_and_the_gaussian_does_not():
    gen = torch.Generator().manual_seed(1)
    n = 20000
    # most samples put no interference on the latent (a spike at 0.2), the rest a wide symmetric tail
    raw = torch.where(torch.rand(n, 2, generator=gen) < 0.6, torch.tensor(0.2),
                      0.2 + 1.5 * torch.randn(n, 2, generator=gen))  # fmt: skip
    on = torch.rand(n, 2, generator=gen) < 0.02
    raw = torch.where(on, 12.0 + torch.randn(n, 2, generator=gen), raw)
    found = latent_levels(raw, on)
    assert found["sigma_over_noise_sd"] < 0.1  # the Gaussian fit sees only the spike
    assert ((raw > found["free"]) & ~on).sum() > 0.05 * n  # and keeps tails of noise
    mirror = found["mirror"]
    assert ((mirror > 2.0) & (mirror < 10)).all()
    kept = raw > mirror
    assert (kept & on).sum() / on.sum() > 0.97 and (kept & ~on).sum() < 0.002 * n * 2


def test_saelens_view_reconstructs_in_the_input_space():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, activation="topk", k=4))  # standardized
    x = torch.randn(16, 8) * 7 + 3
    view = SAELensView(sae)
    f = view.encode(x)
    torch.testing.assert_close(view.decode(f), sae(x).reconstruction)
    with pytest.raises(ValueError, match="takes the activations its last encode returned"):
        view.decode(f.clone())


def test_evaluate_synthetic_reads_the_dictionary_with_another_rule(
    world_json, oracle_run, tmp_path
):
    run = oracle_run
    out = tmp_path / "gt.json"
    argv = ["evaluate", str(run), "--synthetic", str(world_json), "--max-tokens", "400"]
    assert cli([*argv, "--read-with", "topk:2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["sae"] == "oracle read by topk:2" and 1.5 < data["l0"] <= 2  # k 2, not its 8


def test_firing_codes_are_the_saes_code_of_fresh_samples_apart_from_the_scored_ones(
    world_json, oracle_run
):
    world = synthetic.load_world(str(world_json), progress=False)
    sae = SparseAutoencoder.from_pretrained(oracle_run)
    codes = firing_codes(sae, world, 5000)  # two batches of samples
    assert codes.shape == (5000, 48) and torch.equal(codes, firing_codes(sae, world, 5000))
    drawn = TruthSet.drawn_from(world, 5000, seed=2)
    with torch.no_grad():
        x = world.feature_dict(drawn.rows(0, 5000))
    torch.testing.assert_close(codes, codes_of(sae, x, batch_size=1000))
    scored = TruthSet.drawn_from(world, 300, seed=1)  # what evaluate --synthetic scores
    assert not torch.equal(drawn.rows(0, 300), scored.rows(0, 300))


def test_evaluate_synthetic_unfold_scores_own_directions_and_parents(
    world_json, oracle_run, tmp_path, capsys
):
    run = oracle_run
    out = tmp_path / "gt.json"
    argv = ["evaluate", str(run), "--synthetic", str(world_json), "--max-tokens", "400"]
    assert cli([*argv, "--unfold", "--json", str(out), "--plots", str(tmp_path / "p")]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["sae"] for r in rows] == [
        "oracle", "oracle, unabsorbed", "oracle, unfolded", "oracle, unfolded by levels",
        "oracle, unfolded by levels, stars", "oracle, unfolded by levels, exclusive",
        "oracle, unfolded by levels, exclusive, hubs",
        "oracle, unfolded by levels, exclusive, hubs folded",
        "oracle, unfolded by levels, exclusive, hubs folded, doubles dropped",
        "oracle, unfolded by levels, exclusive, hubs folded, lone triangles",
    ]  # fmt: skip
    assert rows[0]["mcc"] == pytest.approx(rows[1]["mcc"]) == pytest.approx(1.0, abs=1e-5)
    for unfolded in rows[2:]:  # no row to unfold
        assert unfolded["d_sae"] == 48 and unfolded["l0"] == rows[0]["l0"]
    assert len(list((tmp_path / "p").glob("ground_truth_oracle*.png"))) == 10


def test_evaluate_synthetic_command(world_json, oracle_run, tmp_path, capsys):
    run = oracle_run
    out = tmp_path / "gt.json"
    argv = ["evaluate", str(run), "--synthetic", str(world_json), "--max-tokens", "800"]
    assert cli([*argv, "--json", str(out), "--plots", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out
    assert "against the truth (800 fresh samples of" in printed and "MCC 1" in printed
    data = json.loads(out.read_text())
    assert data["mcc"] == pytest.approx(1.0, abs=1e-5) and data["l0"] <= 8
    assert (tmp_path / "plots" / "ground_truth_oracle.png").stat().st_size > 10_000
    cache = write_synthetic_cache(str(world_json), tmp_path / "c", 600, seed=2, with_truth=True,
                                  progress=False)  # fmt: skip
    assert cli(["evaluate", str(run), "--synthetic", str(cache)]) == 0
    assert "600 samples stored in" in capsys.readouterr().out
    assert cli(["evaluate", str(run), "--synthetic", "synthsaebench-2k"]) == 2
    assert "unknown synthetic world" in capsys.readouterr().err


def test_relative_on_marks_a_latent_whose_features_parent_or_child_is_active():
    parents = torch.tensor([-1, 0, 0, 1])  # 1 and 2 are 0's children, 3 is 1's
    codes = torch.tensor([[2.0, 0, 0, 0], [0, 0, 0, 3.0]])
    expected = [[False, True, True, False], [False, True, False, False]]
    assert relative_on(codes, parents, torch.arange(4)).tolist() == expected
    # latents in another order read their own matched feature's relatives
    assert relative_on(codes, parents, torch.tensor([2, 0])).tolist() == [
        [True, False],
        [False, False],
    ]


def test_the_noise_floors_model_holds_on_gaussian_interference_and_fails_on_a_spike():
    torch.manual_seed(0)
    n, h = 400, 2000
    on = torch.zeros(n, h, dtype=torch.bool)
    on[:, :5] = True  # five signals per sample, far above the interference
    gaussian = torch.randn(n, h) + on * 20.0
    check = token_noise_check(gaussian, on)
    assert abs(check["sample_sigma_over_noise_sd"] - 1) < 0.05
    assert abs(check["sample_noise_mean_over_sd"]) < 0.05
    assert 0.5 < check["sample_false_pos"] / check["sample_false_pos_allowed"] < 2
    assert check["sample_true_pos"] == check["sample_matched_on"] == 5
    # shifted interference: the positives-only scale is a tail's; the centred reading is not
    shifted = torch.randn(n, h) - 1.0 + on * 20.0
    check = token_noise_check(shifted, on)
    assert check["sample_sigma_over_noise_sd"] < 0.8
    assert abs(check["centred_spread_over_noise_sd"] - 1) < 0.05
    assert 0.25 < check["centred_false_pos"] / check["centred_false_pos_allowed"] < 4
    assert check["centred_true_pos"] == 5
    # a sparse world's interference: mostly exactly nothing, now and then a large term
    spike = torch.randn(n, h) * (torch.rand(n, h) < 0.02) * 3 + on * 20.0
    check = token_noise_check(spike, on)
    assert check["sample_sigma_over_noise_sd"] > 1.5  # its positives are all tail
    assert check["sample_false_pos"] < 0.2 * check["sample_false_pos_allowed"]


def test_an_energy_trace_reads_the_sae_as_it_trains_and_can_start_from_the_data():
    from hf_topafa.training.train import TrainConfig

    # energies 1 and 3: var / mean = 2 / 2, one unit feature's energy when counts are Poisson
    assert fano_energy(torch.tensor([[1.0, 0.0], [1.0, 2**0.5]]), torch.zeros(2)) == 1.0
    torch.manual_seed(0)
    x = torch.randn(512, 8) * torch.linspace(0.5, 2, 8)
    config = TrainConfig.from_flat(activation="afa_energy", afa_coef=0.0, d_sae=32,
                                   max_tokens=6 * 64, batch_size=64,
                                   input_normalization="none")  # fmt: skip
    rows = trace(x, config, every=2)
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    assert all(r["energy"] > 0 and r["batch_energy"] > 0 and r["l0"] > 0 for r in rows)
    start = fano_energy(x[:64], torch.zeros(8))  # b_dec starts at zero (the trainer's default)
    first = trace(x, config, every=2, energy_start="fano")[0]
    momentum = 0.99  # SAEConfig's batchtopk_threshold_momentum: one step folded in
    assert first["energy"] == pytest.approx(momentum * start, rel=0.05)
    topk = TrainConfig.from_flat(activation="topk", k=3, afa_coef=0.0, d_sae=32,
                                 max_tokens=2 * 64, batch_size=64)  # fmt: skip
    assert [r["energy"] for r in trace(x, topk, every=1)] == [None, None]  # no E of its own
    assert trace(x, topk, every=1)[-1]["l0"] == 3.0


def test_energy_readings_tell_a_shrunk_encoder_from_the_decoders_projection():
    torch.manual_seed(0)
    n, h = 300, 1000
    magnitude = torch.zeros(n, h)
    magnitude[:, :4] = 10.0  # four true features of energy 100 per sample
    raw = torch.randn(n, h) + magnitude * 0.6  # the encoder reads them shrunk, to 6.0
    projections = torch.randn(n, h) * 0.1 + magnitude  # the decoder's projection reads 10.0
    input_energy = torch.full((n,), 400.0)  # the AFA's energy of the code: four features
    found = energy_readings(raw, projections, magnitude, input_energy, input_energy * 0.75)
    assert found["detected_true"] == pytest.approx(4, abs=0.05) and found["detected_false"] < 1
    assert found["encoder_over_magnitude"] == pytest.approx(0.6, abs=0.02)
    assert found["projection_over_magnitude"] == pytest.approx(1.0, abs=0.01)
    assert found["count_input_by_projection"] == pytest.approx(4.0, rel=0.05)
    assert found["count_input_by_encoder"] > 8  # shrunk values inflate the count
    assert found["count_reconstruction_by_encoder"] == pytest.approx(
        0.75 * found["count_input_by_encoder"]
    )


def test_samples_with_no_feature_drag_the_confident_energy_to_zero_until_left_out():
    torch.manual_seed(0)
    n, h = 400, 1000
    empty = torch.arange(n) < 120  # 30% of the samples hold no feature
    magnitude = torch.zeros(n, h)
    magnitude[~empty, :3] = 5.0  # the others: three features of energy 25
    bias = torch.full((h,), -0.1)
    bias[100:160] = 0.05  # a few latents whose bias alone is positive
    raw = bias + torch.randn(n, h) * 0.001 + magnitude + (~empty)[:, None] * torch.randn(n, h) * 0.3
    projections = magnitude + torch.randn(n, h) * 0.01  # an empty sample projects on nothing
    input_energy = magnitude.pow(2).sum(-1) + 0.01
    median_all = confident_energy(raw, projections)
    found = empty_token_detections(raw, projections, empty, input_energy)
    assert found["empty_fraction"] == pytest.approx(0.3)
    assert found["detections_per_empty_sample"] > 50  # its level is relative to nothing
    assert median_all < 1  # so they outnumber the true detections and set the median
    assert found["energy_by_projection_without_empty"] == pytest.approx(25, rel=0.05)
    assert found["count_input_by_projection_without_empty"] == pytest.approx(0.7 * 3, rel=0.05)


def test_false_positives_are_split_into_duplicates_active_directions_and_the_hierarchy():
    kept = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    on = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)  # latents 1 and 3: false
    latent_cos = torch.zeros(4, 4)
    latent_cos[1, 0] = latent_cos[0, 1] = 0.9  # latent 1 duplicates sample 0's true latent
    latent_cos[3, 2] = latent_cos[2, 3] = 0.1
    feature_cos = torch.zeros(4, 4)
    feature_cos[1, 0], feature_cos[3, 1], feature_cos[3, 3] = 0.9, 0.7, 0.95  # feature 3: off
    active = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    related = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    found = false_positive_sources(kept, on, latent_cos, feature_cos, active, related)
    assert found["true_pos"] == 1 and found["false_pos"] == 1
    assert found["share_duplicate_above_0.5"] == 0.5
    assert found["active_feature_cos_quantiles"][0] == pytest.approx(0.72)  # 0.7 and 0.9 only
    assert found["share_active_feature_above_0.5"] == 1.0
    assert found["share_hierarchy"] == 0.5


def test_only_names_a_plan_lacks_are_said_not_silently_skipped(capsys):
    args = build_parser().parse_args(
        ["--plan", "matryoshka", "--only", "topk-k32-matryoshka_levels4", "topk-k32"]
    )
    assert [s["k"] for s in plan_of(args)] == [32]  # the one the plan holds runs
    said = capsys.readouterr().out
    assert "plan 'matryoshka' holds no topk-k32 (" in said and "topk-k24-matryoshka_levels4" in said


def test_topk_trains_a_ladder_of_plain_topk_instead_of_a_plan(capsys):
    args = build_parser().parse_args(["--topk", "16", "11", "16", "32", "--only", "topk-k32"])
    assert [(s["activation"], s["k"]) for s in plan_of(args)] == [("topk", 32)]
    args = build_parser().parse_args(["--topk", "16", "11", "16"])
    assert [s["k"] for s in plan_of(args)] == [16, 11]  # once each, in the order given
    assert record_name(plan_of(args)[1]) == "topk-k11"
    with pytest.raises(SystemExit, match="--topk takes positive k and no --plan"):
        synth_bench_main(["--topk", "8", "--plan", "4k"])


def test_a_finished_run_folder_from_other_code_is_reused_with_a_warning(tmp_path, capsys):
    run = tmp_path / "topk-k16"
    run.mkdir()
    (run / "metrics.json").write_text("{}")  # finished: train_ours leaves it as it is
    head = head_commit()
    train_ours(None, {}, tmp_path / "cache", [], run)
    assert ("finished at commit unknown" in capsys.readouterr().out) == (head != "unknown")
    assert head == "unknown" or len(head) == 40
    (run / FINISHED_AT).write_text(f"{head}\n")
    train_ours(None, {}, tmp_path / "cache", [], run)
    assert capsys.readouterr().out == ""  # finished by this very code: nothing to say


def test_a_benchmark_record_names_repository_paths_relative_to_it(tmp_path):
    inside = str(REPO / "results" / "synthbench" / "20m")
    command = recorded_command(["--results", inside, "--work", str(tmp_path), "--only", "a b"])
    assert command == (
        f"python scripts/synth_bench.py --results results/synthbench/20m --work {tmp_path} "
        "--only 'a b'"
    )


def test_a_record_given_by_a_relative_path_is_committed(tmp_path, monkeypatch):
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    record = Path("results") / "records" / "w" / "topk-k4.json"
    (tmp_path / record).parent.mkdir(parents=True)
    (tmp_path / record).write_text("{}")
    monkeypatch.chdir(tmp_path)  # --results was given relative to here
    commit_record(record, "synthbench: w topk-k4")
    assert git("log", "--name-only", "--format=%s").stdout.decode().split() == [
        "synthbench:", "w", "topk-k4", record.as_posix(),
    ]  # fmt: skip


def test_recovery_ceiling_reads_the_worlds_own_features_at_the_noise_the_width_leaves(
    world_json, tmp_path, monkeypatch
):
    cache = write_synthetic_cache(
        str(world_json), tmp_path / "c", 300, seed=2, with_truth=True, progress=False
    )
    out = tmp_path / "recovery.json"
    argv = ["synth_recovery_ceiling.py", str(cache), "--width", "24", "--samples", "200",
            "--steps", "12", "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    recovery_main()
    found = json.loads(out.read_text())
    world = synthetic.load_world(str(world_json), progress=False)
    truth = TruthSet.from_cache(ActivationCache(cache), world.cfg.num_features)
    codes = truth.rows(0, 200)
    held = most_frequent(truth.feature_counts(), 24)  # over all 300 samples, not the 200 read
    assert found["width_holds"] == pytest.approx(float((codes[:, held] > 0).sum(-1).float().mean()))
    assert found["unheld_noise"] == pytest.approx(
        float(codes[:, ~held].pow(2).sum(-1).mean()) / 24, rel=1e-5)  # fmt: skip
    assert 0 < found["clearing"]["l0"] <= found["width_holds"]
    for part in ("lasso", "pursuit"):
        read = found[part]
        assert read["true"] + read["false"] == pytest.approx(read["l0"])
        assert 0 < read["true"] <= found["width_holds"]
    assert (found["samples"], found["held_over"]) == (200, 300)
    assert found["command"].startswith("python scripts/")
    monkeypatch.setattr(sys, "argv", ["synth_recovery_ceiling.py", str(cache), "--steps", "0"])
    with pytest.raises(SystemExit, match="--width and --steps must be at least 1"):
        recovery_main()
    manifest = json.loads((cache / "manifest.json").read_text())
    del manifest["synthetic"]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(sys, "argv", ["synth_recovery_ceiling.py", str(cache)])
    with pytest.raises(SystemExit, match="was not sampled from a synthetic world"):
        recovery_main()


def test_missed_by_level_places_each_feature_and_counts_what_the_reading_keeps():
    from sae_lens.synthetic.hierarchy import HierarchyNode

    def node(i, *children, exclusive=False):
        return HierarchyNode(i, list(children), mutually_exclusive_children=exclusive)

    tree = node(0, node(1, node(3), node(4), exclusive=True), node(2))
    loose = node(None, node(5))  # an organizational node: its child is a root
    world = SimpleNamespace(cfg=SimpleNamespace(num_features=7), feature_dict=lambda codes: codes,
                            hierarchy=SimpleNamespace(roots=[tree, loose]))  # fmt: skip
    assert places(world) == ["root+children", "shared+children", "shared", "exclusive",
                             "exclusive", "root", "outside"]  # fmt: skip
    assert depths(world, places(world)) == ["depth 0", "depth 1", "depth 1", "depth 2", "depth 2",
                                            "depth 0", "outside"]  # fmt: skip

    # three samples: f0 and f1 on; f0 on, weakly; f2 on. Latent 0 is f0's and keeps it only when
    # strong, latent 1 is f2's, latent 2 is matched to nothing.
    truth = TruthSet(torch.tensor([[0, 0], [0, 1], [1, 0], [2, 2]]),
                     torch.tensor([2.0, 1.0, 1.0, 1.0]), 3, 3)  # fmt: skip

    def reading(x):
        acts = torch.stack([x[:, 0] * (x[:, 0] > 1.5), x[:, 2], x[:, 1]], 1)
        return SimpleNamespace(feature_acts=acts)

    small = SimpleNamespace(cfg=SimpleNamespace(num_features=3), feature_dict=lambda codes: codes)
    found = detections(reading, small, truth, torch.tensor([0, 2, -1]))
    assert found["fires"].tolist() == [2, 1, 1] and found["kept"].tolist() == [1, 0, 1]
    assert found["missed_beside_ancestor"].sum() == 0  # no hierarchy: no relatives
    groups = by_place(["root", "root", "leaf"], torch.tensor([True, True, True]), found,
                      torch.tensor([1.0, 0.0, 0.95]), samples=3)  # fmt: skip
    assert groups["root"]["recall"] == pytest.approx(1 / 3)
    # a chain 0 -> 1 -> 2 and a feature 3 outside it: whose relative's latent is kept
    parents = torch.tensor([-1, 0, 1, -1])
    kept = torch.tensor([[True, False, False, False], [False, False, True, False]])
    assert kept_ancestor(kept, parents).tolist() == [[False, True, True, False], [False] * 4]
    below = kept_descendant(kept, parents, hierarchy_depths(parents))
    assert below.tolist() == [[False] * 4, [True, True, False, False]]
    # in the tree above: root 0 and its child 1 on, only the root's latent kept; then the child
    # alone on, its latent kept
    pair = TruthSet(torch.tensor([[0, 0], [0, 1], [1, 1]]), torch.ones(3), 2, 7)

    def roots_only(x):
        return SimpleNamespace(feature_acts=torch.stack([x[:, 0], x[:, 1] * (x[:, 0] == 0)], 1))

    found = detections(roots_only, world, pair, torch.tensor([0, 1]))
    assert found["kept"][:2].tolist() == [1, 1] and found["fires"][:2].tolist() == [1, 2]
    assert found["missed_beside_ancestor"][1] == 1 and found["missed_beside_descendant"].sum() == 0
    assert groups["root"]["firings_per_sample"] == 1.0 and groups["leaf"]["recall"] == 1.0
    assert groups["root"]["matched_cosine_at_least_0.9"] == 0.5
    counts, held = (
        torch.tensor([5, 9, 0, 7, 1, 3, 8, 2]),
        torch.tensor([1, 1, 0, 1, 1, 1, 1, 1]) > 0,
    )
    # seven held, by count: 9, 8 | 7, 5 | 3, 2 | 1
    assert frequency_quarters(counts, held) == ["quarter 2", "quarter 1", "not held", "quarter 2",
                                                "quarter 4", "quarter 3", "quarter 1", "quarter 3"]  # fmt: skip


def test_a_feature_spread_over_rows_that_do_not_meet_is_found_in_the_decoder():
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(3)))[0].T
    parent, children = basis[0], basis[1:4]
    # three rows hold the parent at cosine 0.6 and meet each other at 0.36, under chance (0.48)
    W_dec = torch.cat([0.6 * parent + 0.8 * children, basis[4:41]])
    features = basis[:8]
    unmatched = torch.tensor([True] + [False] * 7)
    rate = torch.full((8,), 0.5)
    parents = torch.tensor([-1, 0, 0, 0, -1, -1, -1, -1])
    found = unmatched_in_decoder(W_dec, features, unmatched, rate, parents)
    assert found["level"] == pytest.approx(chance_coherence(40, 64))
    assert found["features"] == 1 and found["firings_per_sample"] == 0.5
    assert found["nearest_row_cosine"] == pytest.approx(0.6, abs=1e-5)
    assert found["rows_above_level"] == 3 and found["share_in_two_or_more_rows"] == 1
    assert found["cosine_between_those_rows"] == pytest.approx(0.36, abs=1e-5)
    assert found["share_with_children"] == 1
    assert "share_in_one_atom" not in found
    # the three rows grouped into one atom, read as the parent's parent (feature 4): one latent
    # for two features
    group = torch.tensor([0, 0, 0] + [-1] * 37)
    chain = torch.tensor([4, 0, 0, 0, -1, -1, -1, -1])
    found = unmatched_in_decoder(
        W_dec, features, unmatched, rate, chain, (group, torch.tensor([4]))
    )
    assert found["share_in_one_atom"] == found["share_in_an_atom_matched_to_an_ancestor"] == 1
    found = unmatched_in_decoder(
        W_dec, features, unmatched, rate, chain, (group, torch.tensor([5]))
    )
    assert found["share_in_one_atom"] == 1 and found["share_in_an_atom_matched_to_an_ancestor"] == 0
    assert unmatched_in_decoder(W_dec, features, unmatched & False, rate, parents) == {
        "features": 0
    }


def test_missed_by_latent_splits_atoms_false_firings_by_the_feature_they_point_at():
    """Latent 0 is feature 1's row; latent 1 an atom that fires with feature 0 but is matched to
    feature 2 (the matching gave feature 0 to latent 2, which fires only beside feature 1)."""
    codes = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    truth = SimpleNamespace(num_samples=4, rows=lambda start, stop: codes[start:stop])
    world = SimpleNamespace(cfg=SimpleNamespace(num_features=3), feature_dict=lambda c: c)

    def sae(x):
        fires = torch.stack([x[:, 1], x[:, 0], x[:, 0] * x[:, 1]], -1)
        return SimpleNamespace(feature_acts=fires)

    match, atoms = torch.tensor([1, 2, 0]), torch.tensor([False, True, False])
    args = (sae, world, truth, match, torch.ones(3), atoms, torch.ones(3, dtype=torch.bool))
    found = missed_by_latent(*args, nearest=torch.tensor([1, 0, 0]))
    assert found["false_pos"] == found["false_pos_atoms"] == 0.5  # the atom, on samples 0 and 1
    assert found["false_pos_atoms_nearest_on"] == 0.5  # feature 0 is on both times
    assert found["false_pos_atoms_nearest_on_twice"] == 0.25  # latent 2 fires on sample 0 only
    assert found["missed_atom"] == found["missed_row_learned"] == 0.25  # feature 2; feature 0
    found = missed_by_latent(*args, nearest=torch.tensor([1, 2, 0]))  # the atom points at its own
    assert found["false_pos_atoms_nearest_on"] == found["false_pos_atoms_nearest_on_twice"] == 0
    assert "false_pos_atoms_nearest_on" not in missed_by_latent(*args)
    rows = torch.tensor([[0.0, 2.0], [1.0, -0.1]])
    assert nearest_features(rows, torch.tensor([[1.0, 0.0], [0.0, -1.0]])).tolist() == [1, 0]


def test_missed_by_level_on_the_worlds_own_features(world_json, oracle_run, tmp_path, monkeypatch):
    caches = [write_synthetic_cache(str(world_json), tmp_path / name, 300, seed=seed,
                                    with_truth=True, progress=False)
              for name, seed in (("eval", 2), ("train", 3))]  # fmt: skip
    out = tmp_path / "missed.json"
    argv = ["synth_missed_by_level.py", str(oracle_run), *map(str, caches), "--samples", "200",
            "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    missed_by_level_main()
    found = json.loads(out.read_text())
    (group,) = found["readings"]["risk_floor"]["place"].values()  # no hierarchy: all outside
    split = found["readings"]["risk_floor"]["missed_by_latent"]  # the world's own features
    parts = ("no_latent", "atom", "row_learned", "row_poorly_learned")
    assert split["missed"] == pytest.approx(sum(split[f"missed_{part}"] for part in parts))
    assert split["missed_no_latent"] == split["missed_atom"] == split["false_pos_atoms"] == 0
    assert split["missed"] == split["missed_row_learned"] > 0  # every row learned: the rule drops
    assert 0 < split["missed"] < split["fires"]
    assert found["readings"]["risk_floor"]["unmatched_in_decoder"] == {"features": 0}
    assert group["features_held"] == 48 and group["matched_cosine_mean"] == pytest.approx(
        1, abs=1e-5
    )
    assert 0 < group["recall"] <= 1
    bands = found["readings"]["procedure D"]["frequency"]
    assert sorted(bands) == ["quarter 1", "quarter 2", "quarter 3", "quarter 4"]
    assert sum(b["firings_per_sample"] for b in bands.values()) == pytest.approx(
        group["firings_per_sample"], abs=0.01)  # fmt: skip
    noise = found["noise"]  # the width holds every feature: nothing unheld
    assert noise["unheld_noise"] == 0 and noise["ratio"] is None and noise["pooled_level"] > 0
    monkeypatch.setattr(sys, "argv", [*argv, "--rule", "topk:8", "--fold"])
    missed_by_level_main()  # another rule, and procedure D with hubs folded: no hub here
    readings = json.loads(out.read_text())["readings"]
    assert list(readings) == ["topk:8", "procedure D", "procedure D, hubs folded"]
    assert readings["procedure D, hubs folded"] == readings["procedure D"]
    monkeypatch.setattr(sys, "argv", [*argv, "--rule", "nonsense"])
    with pytest.raises(SystemExit, match="nonsense"):
        missed_by_level_main()
    # holding only the 24 most frequent, the rest is noise; a higher level keeps fewer features
    # and leaves more residual
    cache = ActivationCache(caches[0])
    truth = TruthSet.from_cache(cache, 48, limit=200)
    held = most_frequent(truth.feature_counts(), 24)
    sae = SparseAutoencoder.from_pretrained(oracle_run)
    noise = noise_levels(sae, cache, truth, held)
    assert (
        noise["unheld_noise"] > 0
        and noise["ratio"] == noise["pooled_level"] / noise["unheld_noise"]
    )
    steps = list(noise["residual_at_level"].values())
    assert len(steps) == 5 and steps == sorted(steps) and steps[0] < steps[-1]


def test_spike_count_reads_the_rate_of_equal_spikes_at_any_scale():
    torch.manual_seed(0)
    energy = 25.0 * torch.poisson(torch.full((200_000,), 3.0))
    assert spike_count(energy) == pytest.approx(3.0, rel=0.03)
    assert spike_count(7.0 * energy) == pytest.approx(spike_count(energy), rel=1e-9)
    assert spike_count(25.0 * torch.poisson(torch.full((200_000,), 0.5))) < 0.6


def test_unheld_spikes_script_counts_false_latents_by_the_samples_unheld_firings(
    world_json, tmp_path, monkeypatch
):
    cache = write_synthetic_cache(str(world_json), tmp_path / "eval", 400, seed=2,
                                  with_truth=True, progress=False)  # fmt: skip
    world = synthetic.load_world(str(world_json), progress=False)
    truth = TruthSet.from_cache(ActivationCache(cache), world.cfg.num_features)
    run = tmp_path / "narrow"  # the 32 most frequent of the 48 features: 16 are unheld
    oracle_sae(world, truth, width=32, activation="topk", k=8).save_pretrained(run)
    out = tmp_path / "spikes.json"
    argv = ["synth_unheld_spikes.py", str(run), str(cache), "--samples", "300", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    unheld_spikes_main()
    found = json.loads(out.read_text())
    codes = truth.rows(0, 300)
    held = most_frequent(truth.feature_counts(), 32)
    assert found["unheld_per_sample"] == pytest.approx(
        float((codes[:, ~held] > 0).sum(-1).float().mean())
    )
    assert found["unheld_per_sample"] > 0 and found["d"] == world.cfg.hidden_dim
    groups = found["by_unheld_firings"]
    assert sum(group["share"] for group in groups.values()) == pytest.approx(1.0)
    assert set(found["false_per_sample"]) == {"topk", "risk_floor", "risk_refit", "refit_surplus",
                                              "risk_floor_relative", "risk_refit_relative"}  # fmt: skip
    assert found["false_per_sample"]["risk_refit_relative"] == 0  # the tiny world has no hierarchy
    assert found["false_per_sample"]["refit_surplus"] == pytest.approx(
        found["false_per_sample"]["risk_refit"] - found["false_per_sample"]["risk_floor"]
    )
    assert found["kept_per_sample"]["topk"] <= 8
    assert found["spikes_of_unheld_energy"]["per_sample"] > 0
    assert found["missed_energy_per_sample"] == pytest.approx(0.0, abs=1e-4)  # its atoms are exact
    clean = found["no_unheld_firing"]
    assert clean["share"] == pytest.approx(groups["0"]["share"])
    assert clean["refit_false_feature_held"] + clean["refit_false_feature_unheld"] == pytest.approx(
        groups["0"]["false_per_sample"]["risk_refit"], abs=1e-6
    )


def test_spikes_table_ranks_worlds_and_finds_each_dictionarys_readings(tmp_path, monkeypatch):
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [2.5, 0.0, 2.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 25, 90]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    groups = {"0": {"share": 0.995, "false_per_sample": {"refit_surplus": 0.1}},
              "1": {"share": 0.005, "false_per_sample": {"refit_surplus": 3.0}}}  # fmt: skip
    spikes, chosen = [], {"risk_floor": [], "risk_refit": []}
    for i, (unheld, spread, floor, refit) in enumerate([(0.01, 0.008, 1.0, 1.9), (0.03, 0.02, 0.7, 0.9),
                                                        (0.02, 0.015, 0.9, 1.2)]):  # fmt: skip
        spikes.append(tmp_path / f"spikes{i}.json")
        spikes[-1].write_text(json.dumps({
            "world": f"w{i}", "run": f"runs/w{i}", "unheld_per_dimension": unheld,
            "spikes_truth_free": {"per_dimension": spread}, "by_unheld_firings": groups}))  # fmt: skip
        for reader, ratio in (("risk_floor", floor), ("risk_refit", refit)):
            reread = tmp_path / f"{reader}{i}.json"
            reread.write_text(json.dumps({"run": f"runs/w{i}"}))
            chosen[reader].append(
                {"path": str(reread), "rule": f"{reader}, unfolded", "ratio": ratio}
            )
    paths = []
    for reader, readings in chosen.items():
        paths.append(tmp_path / f"choose_{reader}.json")
        paths[-1].write_text(json.dumps({"ladders": [{"readings": readings}]}))
    out = tmp_path / "table.json"
    argv = ["synth_spikes_table.py", *map(str, spikes), "--choose-k", *map(str, paths),
            "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    spikes_table_main()
    table = json.loads(out.read_text())
    assert [row["world"] for row in table["rows"]] == ["w0", "w2", "w1"]
    assert table["rows"][1]["ratio"] == {"risk_floor": 0.9, "risk_refit": 1.2}
    assert table["rows"][1]["refit_surplus_by_unheld"] == {"0": 0.1, "1": None}  # 0.5%: not shown
    assert table["spearman_with_unheld_per_dimension"] == {
        "spikes_per_dimension": pytest.approx(1.0),
        "risk_floor": pytest.approx(-1.0),
        "risk_refit": pytest.approx(-1.0),
    }
    (tmp_path / "other.json").write_text(json.dumps({"run": "runs/w0"}))
    monkeypatch.setattr(sys, "argv", [*argv[:1], str(tmp_path / "other.json"), *argv[4:]])
    with pytest.raises(SystemExit, match="not a synth_unheld_spikes.py JSON"):
        spikes_table_main()


def test_records_again_says_which_records_their_runs_reproduced(tmp_path, monkeypatch):
    row = {
        "f1": 0.61,
        "mcc": 0.77,
        "l0": 6.0,
        "explained_variance": 0.75,
        "dead": 0,
        "l0_corr": None,
    }
    for root, f1 in ((tmp_path / "committed", 0.61), (tmp_path / "again", 0.61)):
        for name in ("topk-k6", "topk-k8"):
            path = root / "mix" / "records" / "world" / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"row": {**row, "f1": f1 if name == "topk-k6" else 0.5}}))
    out = tmp_path / "again.json"
    argv = ["synth_records_again.py", str(tmp_path / "again"), "--committed",
            str(tmp_path / "committed"), "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        records_again_main()
    assert done.value.code == 0 and json.loads(out.read_text())["reproduced"] == 2
    changed = tmp_path / "again" / "mix" / "records" / "world" / "topk-k8.json"
    changed.write_text(json.dumps({"row": {**row, "f1": 0.5002}}))
    with pytest.raises(SystemExit) as done:
        records_again_main()
    assert done.value.code == 1
    assert [r["differs"] for r in json.loads(out.read_text())["rows"]] == [[], ["f1"]]
    changed.unlink()
    (tmp_path / "again" / "mix" / "records" / "world" / "topk-k4.json").write_text("{}")
    with pytest.raises(SystemExit, match="no committed record"):
        records_again_main()


@pytest.fixture
def truth_cache(world_json, tmp_path):
    """1,100 held-out samples of the tiny world written with their true codes (over the 1,024
    a batch's calibrated price is found on)."""
    return write_synthetic_cache(str(world_json), tmp_path / "eval", 1100, seed=2,
                                 with_truth=True, progress=False)  # fmt: skip


def test_calibration_script_reports_where_the_price_settled(oracle_run, truth_cache, tmp_path,
                                                            monkeypatch):  # fmt: skip
    from hf_topafa.sae.risk import calibrated_factor

    cache = truth_cache
    out = tmp_path / "prices.json"
    argv = ["synth_calibration.py", str(oracle_run), str(cache), "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    calibration_main()
    (row,) = json.loads(out.read_text())["rows"]
    assert row["price_over_level"] == pytest.approx(
        calibrated_factor(row["kept_share"], row["signal_to_noise"])
    )
    assert row["kept_per_sample"] == pytest.approx(row["kept_share"] * 48)
    assert 0 < row["kept_per_sample"] <= 24 // 4  # at most d / 4 candidates re-fit
    assert row["level"] > 0 and row["refit_level"] > 0
    assert row["tail_price_over_level"] > 0
    assert 0 < row["residual_share"] < 1  # the oracle explains most of each sample
    assert row["unheld_per_dimension"] == 0  # the oracle holds every feature
    monkeypatch.setattr(sys, "argv", [*argv[:3], *argv[1:3], *argv[1:3], "--json", str(out)])
    calibration_main()  # three rows, but all alike: no rank correlation is defined
    found = json.loads(out.read_text())
    assert len(found["rows"]) == 3
    assert "tail_price_over_level" in TRUTH_FREE
    assert found["spearman_with_unheld_per_dimension"] == dict.fromkeys(TRUTH_FREE)
    assert rank_correlation([1.0, 2.0, 3.0], [0.1, 0.3, 0.2]) == pytest.approx(0.5)
    monkeypatch.setattr(sys, "argv", ["synth_calibration.py", str(oracle_run)])
    with pytest.raises(SystemExit, match="RUN CACHE"):
        calibration_main()


def test_reader_prices_read_the_truth_free_figures_from_any_cache(oracle_run, truth_cache,
                                                                  tmp_path, monkeypatch):  # fmt: skip
    """The truth-free script reads the cache's stored activations and lands where the truth
    script, which rebuilds them from the true codes, does."""
    with_truth, without = tmp_path / "with.json", tmp_path / "without.json"
    monkeypatch.setattr(sys, "argv", ["synth_calibration.py", str(oracle_run), str(truth_cache),
                                      "--json", str(with_truth)])  # fmt: skip
    calibration_main()
    monkeypatch.setattr(sys, "argv", ["reader_prices.py", str(oracle_run), str(truth_cache),
                                      "--json", str(without)])  # fmt: skip
    reader_prices_main()
    (truth_row,) = json.loads(with_truth.read_text())["rows"]
    (row,) = json.loads(without.read_text())["rows"]
    assert row["tokens"] == 1024
    for key in TRUTH_FREE:
        assert row[key] == pytest.approx(truth_row[key], rel=1e-3), key
    assert row["tail_price_over_two_ln_h"] == pytest.approx(
        row["tail_price_over_level"] / row["two_ln_h"]
    )
    monkeypatch.setattr(sys, "argv", ["reader_prices.py", str(oracle_run)])
    with pytest.raises(SystemExit, match="RUN CACHE"):
        reader_prices_main()


def test_price_sweep_reads_one_dictionary_at_a_ladder_of_prices(oracle_run, truth_cache,
                                                                  tmp_path, monkeypatch):  # fmt: skip
    out = tmp_path / "sweep.json"
    argv = ["synth_price_sweep.py", str(oracle_run), str(truth_cache), "--samples", "1100",
            "--ladder", "2", "14", "200", "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    price_sweep_main()
    (row,) = json.loads(out.read_text())["rows"]
    low, mid, high = row["ladder"]
    assert [r["price_over_level"] for r in row["ladder"]] == [2, 14, 200]
    assert low["per_sample"] >= mid["per_sample"] >= high["per_sample"]  # a higher price keeps less
    for r in (low, mid, high, *row["readers"].values()):
        assert r["true_per_sample"] + r["false_per_sample"] == pytest.approx(r["per_sample"])
        assert 0 <= r["share_of_findable_kept"] <= 1
    assert set(row["readers"]) == {"risk_refit", "risk_calibrated", "risk_tail"}
    # the oracle holds every feature: a low price finds nearly all of them
    assert low["share_of_findable_kept"] > 0.5
    for found in ("price_meeting_truth_over_level", "price_balancing_errors_over_level"):
        assert row[found] is None or 2 <= row[found] <= 200
    assert low["missed_findable_per_sample"] <= high["missed_findable_per_sample"]
    monkeypatch.setattr(sys, "argv", [*argv[:6], "14", "2"])
    with pytest.raises(SystemExit, match="positive and rising"):
        price_sweep_main()


def test_crossing_price_interpolates_where_the_gap_crosses_zero():
    rows = [{"price_over_level": 10.0, "count_over_truth": 1.2},
            {"price_over_level": 40.0, "count_over_truth": 0.8}]  # fmt: skip

    def gap(row):
        return row["count_over_truth"] - 1

    assert crossing_price(rows, gap) == pytest.approx(20.0)  # halfway in log price
    assert crossing_price(rows[:1], gap) is None
    assert crossing_price([{**r, "count_over_truth": 0.5} for r in rows], gap) is None


def test_gaussian_balance_price_expects_as_many_false_latents_as_missed_ones():
    p, c = 0.01, 50.0
    t = gaussian_balance_price(p, c)
    false = (1 - p) * math.erfc(math.sqrt(t / 2))
    missed = p * math.erf(math.sqrt(t / (2 * (1 + c))))
    assert false == pytest.approx(missed, rel=1e-6)
    assert gaussian_balance_price(0.001, c) > t  # rarer latents: a higher price
    ladder = [{"price_over_level": 10.0, "unfolded_over_truth": 1.2},
              {"price_over_level": 40.0, "unfolded_over_truth": 0.8}]  # fmt: skip
    assert estimated_count(ladder, 20.0) == pytest.approx(1.0)
    assert estimated_count(ladder, 50.0) is None


def test_unfolding_factor_interpolates_in_log_price_and_holds_beyond():
    points = [(40.0, 2.0), (10.0, 1.0)]  # any order
    assert unfolding_factor(points, 20.0) == pytest.approx(1.5)  # halfway in log price
    assert unfolding_factor(points, 5.0) == 1.0 and unfolding_factor(points, 80.0) == 2.0


def test_right_price_scales_the_sweep_by_the_unfolding_and_finds_the_crossing(tmp_path,
                                                                             monkeypatch):  # fmt: skip
    def reading(price, count):
        return {"price_over_level": price, "count_over_truth": count}

    ladder = [{**reading(p, c), "true_per_sample": 4.0, "false_per_sample": f}
              for p, c, f in ((8, 0.8, 1.0), (16, 0.5, 0.4), (32, 0.25, 0.1))]  # fmt: skip
    readers = {"risk_refit": reading(8, 0.8), "risk_calibrated": reading(16, 0.5),
               "risk_tail": reading(32, 0.25)}  # fmt: skip
    run = "runs/a"
    for r in ladder:
        r["missed_findable_per_sample"] = 0.05  # under the false firings all along the ladder
    sweep = {"rows": [{"run": run, "world": "w", "ladder": ladder, "readers": readers,
                       "price_balancing_errors_over_level": None}]}  # fmt: skip
    # procedure D read twice each reader's count: the count meets the truth at 16 sigma^2
    readings = {"dictionaries": {run: {name: {"ratio": 2 * r["count_over_truth"]}
                                       for name, r in readers.items()}}}  # fmt: skip
    paths = {name: tmp_path / f"{name}.json" for name in ("sweep", "readers", "out")}
    paths["sweep"].write_text(json.dumps(sweep))
    paths["readers"].write_text(json.dumps(readings))
    argv = ["synth_right_price.py", "--sweep", str(paths["sweep"]), "--readers",
            str(paths["readers"]), "--json", str(paths["out"])]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    right_price_main()
    (row,) = json.loads(paths["out"].read_text())["rows"]
    assert row["unfolding_factors"] == {name: pytest.approx(2.0) for name in readers}
    assert row["right_price_over_level"] == pytest.approx(16.0)
    assert row["false_per_true_near_it"] == pytest.approx(0.1)
    assert balance_or_end(sweep["rows"][0]) == 33  # so the balance lies past its last rung
    paths["readers"].write_text(json.dumps({"dictionaries": {"runs/b": {}}}))
    with pytest.raises(SystemExit, match="no row for runs/b"):
        right_price_main()


def test_tail_sources_split_the_tail_into_missed_true_features_and_null_ones(
    oracle_run, truth_cache, tmp_path, monkeypatch
):
    out = tmp_path / "sources.json"
    monkeypatch.setattr(sys, "argv", ["synth_tail_sources.py", str(oracle_run),
                                      str(truth_cache), "--json", str(out)])  # fmt: skip
    tail_sources_main()
    (row,) = json.loads(out.read_text())["rows"]
    assert row["tail_price_over_level"] > 0 and row["null_price_over_level"] > 0
    for share in ("missed_share_of_left_out", "missed_share_above_price"):
        assert 0 <= row[share] <= 1
    assert row["above_price_per_sample"] > 0  # the tail it is read from is not empty
    monkeypatch.setattr(sys, "argv", ["synth_tail_sources.py", str(oracle_run)])
    with pytest.raises(SystemExit, match="RUN CACHE"):
        tail_sources_main()


def test_balance_fit_splits_the_kept_latents_by_the_truth(oracle_run, truth_cache, tmp_path,
                                                          monkeypatch):  # fmt: skip
    right = tmp_path / "right.json"
    ladder = [{"price_over_level": t, "unfolded_over_truth": 0.5 + t / 1e4} for t in (1e-2, 1e4)]
    right.write_text(json.dumps({"rows": [{"run": str(oracle_run), "right_price_over_level": None,
                                           "unfolded_ladder": ladder}]}))  # fmt: skip
    out = tmp_path / "fit.json"
    monkeypatch.setattr(sys, "argv", ["synth_balance_fit.py", "--right-price", str(right),
                                      "--json", str(out), str(oracle_run), str(truth_cache)])  # fmt: skip
    balance_fit_main()
    (row,) = json.loads(out.read_text())["rows"]
    assert row["kept_true_per_sample"] > 1  # the oracle's own features, mostly found
    assert row["kept_false_per_sample"] < row["kept_true_per_sample"]
    assert len(row["kept_true_contribution_quantiles"]) == 5
    assert 0 <= row["missed_fired_per_sample"] <= row["missed_per_sample"]
    assert row["fit_true_kept"][0] > row["cut_over_sigma"]  # true amplitudes far above the cut
    assert row["balance_price_over_level"] > 0 and row["oracle_balance_price_over_level"] > 0
    for name in ("balance", "oracle_balance"):  # the ladder's straight line at each price
        price = row[f"{name}_price_over_level"]
        assert row[f"{name}_estimated_count"] == pytest.approx(
            estimated_count(ladder, price), rel=1e-9
        )
    assert row["balance_estimated_count"] != row["oracle_balance_estimated_count"]


def test_compare_readers_groups_readings_by_dictionary_and_tallies_the_band(tmp_path, monkeypatch,
                                                                           capsys):  # fmt: skip
    def reading(run, reader, l0, f1, extra_rows=()):
        row = {"rule": f"{reader}, unfolded by levels, exclusive", "l0": l0, "true_l0_top_width":
               10.0, "f1": f1, "mcc": 0.7, "l0_corr": 0.9, "true_pos": 5.0, "false_pos": 1.0}  # fmt: skip
        return {"run": run, "rows": [*extra_rows, row]}

    files = []
    for name, data in (("a-floor", reading("runs/a", "risk_floor", 9.5, 0.8, [{"rule": "x"}])),
                       ("a-refit", reading("runs/a", "risk_refit", 12.0, 0.7)),
                       ("b-floor", reading("runs/b", "risk_floor", 7.0, 0.6)),
                       ("b-refit", reading("runs/b", "risk_refit", 10.5, 0.9))):  # fmt: skip
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(data))
    out = tmp_path / "table.json"
    monkeypatch.setattr(sys, "argv", ["synth_compare_readers.py", *map(str, files), "--json",
                                      str(out)])  # fmt: skip
    compare_readers_main()
    table = json.loads(out.read_text())
    assert set(table["dictionaries"]) == {"runs/a", "runs/b"}
    assert table["dictionaries"]["runs/a"]["risk_refit"]["ratio"] == pytest.approx(1.2)
    assert table["readers"]["risk_floor"] == {"dictionaries": 2, "in_band": 1, "best_f1": 1}
    assert table["readers"]["risk_refit"] == {"dictionaries": 2, "in_band": 1, "best_f1": 1}
    assert "| a-floor | 0.950×, F1 0.800" in capsys.readouterr().out
    for name, data in (("a-fixed", reading("runs/a", "risk_tail@2.5", 10.0, 0.75)),
                       ("b-fixed", reading("runs/b", "risk_tail@3.5", 10.0, 0.95))):  # fmt: skip
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(data))
    argv = [
        "synth_compare_readers.py",
        *map(str, files),
        "--fixed-as",
        "balance",
        "--json",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    compare_readers_main()  # one price per dictionary, one column for them all
    table = json.loads(out.read_text())
    assert table["readers"]["balance"] == {"dictionaries": 2, "in_band": 2, "best_f1": 1}
    assert table["dictionaries"]["runs/b"]["balance"]["read_as"] == "risk_tail@3.5"
    files[0].write_text(json.dumps({"run": "runs/a", "rows": [{"rule": "risk_floor"}]}))
    with pytest.raises(SystemExit, match="no procedure D row"):
        compare_readers_main()


def test_woken_refit_script_keeps_within_the_pooled_count(oracle_run, truth_cache, tmp_path,
                                                         monkeypatch):  # fmt: skip
    out = tmp_path / "woken.json"
    argv = ["synth_woken_refit.py", str(oracle_run), str(truth_cache), "--samples", "300",
            "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    woken_refit_main()
    found = json.loads(out.read_text())
    readers, held = found["readers"], found["held_per_sample"]
    assert set(readers) == {"risk_floor", "risk_refit", "refit_within_pooled_count"}
    within = readers["refit_within_pooled_count"]
    assert 0 < within["ratio"] * held <= found["pooled_count_per_sample"] + 1e-9
    for got in readers.values():
        kept = got["true_per_sample"] + got["false_per_sample"]
        assert kept == pytest.approx(got["ratio"] * held)
    past = found["refit_beyond_pooled_count"]
    refit = readers["risk_refit"]
    assert past["true_per_sample"] <= refit["true_per_sample"]
    assert past["false_per_sample"] <= refit["false_per_sample"]


def test_switch_table_takes_the_chosen_readers_reading_and_tallies_the_bars(tmp_path, monkeypatch):
    def reading(name, run):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"run": run}))
        return str(path)

    def scored(path, ratio, bars):
        return {"path": path, "ratio": ratio, "f1": 0.8, "mcc": 0.7, "corr": 0.85,
                "bars": dict(zip(("count", "f1", "mcc", "corr"), bars, strict=True))}  # fmt: skip

    readings = {(reader, run): reading(f"{reader}-{run}", f"runs/{run}")
                for reader in ("balance", "tail") for run in ("sparse", "crowded")}  # fmt: skip
    bars = {}
    for reader, sparse, crowded in (("balance", (1.4, [0, 1, 1, 1]), (1.0, [1, 1, 1, 1])),
                                    ("tail", (0.95, [1, 1, 1, 1]), (0.8, [0, 1, 0, 1]))):  # fmt: skip
        bars[reader] = tmp_path / f"bars-{reader}.json"
        bars[reader].write_text(json.dumps({"ladders": [{"readings": [
            scored(readings[reader, "sparse"], *sparse),
            scored(readings[reader, "crowded"], *crowded)]}]}))  # fmt: skip
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"rows": [
        {"run": "runs/sparse", "balance_misfit": 0.23, "switch_reader": "risk_tail"},
        {"run": "runs/crowded", "balance_misfit": 0.04, "switch_reader": "risk_balance"},
        {"run": "runs/unread", "balance_misfit": 0.05, "switch_reader": "risk_balance"}]}))  # fmt: skip
    out = tmp_path / "table.json"
    monkeypatch.setattr(sys, "argv", [
        "synth_switch_table.py", "--prices", str(prices), "--bars",
        f"risk_balance={bars['balance']}", "--bars", f"risk_tail={bars['tail']}", "--json", str(out)])  # fmt: skip
    switch_table_main()
    table = json.loads(out.read_text())
    sparse, crowded, unread = table["rows"]
    assert sparse["readings"]["risk_switch"]["ratio"] == 0.95  # the tail's reading
    assert crowded["readings"]["risk_switch"]["ratio"] == 1.0  # the balance's
    assert "risk_switch" not in unread["readings"]  # nothing read: nothing taken
    summary = table["summary"]
    assert summary["dictionaries"] == 2
    assert summary["risk_balance"] == {"in_band": 1, "all_four": 1, "bars": 7}
    assert summary["risk_tail"] == {"in_band": 1, "all_four": 1, "bars": 6}
    assert summary["risk_switch"] == {"in_band": 2, "all_four": 2, "bars": 8}
    monkeypatch.setattr(sys, "argv", ["synth_switch_table.py", "--prices", str(prices), "--bars",
                                      f"risk_floor={bars['tail']}", "--json", str(out)])  # fmt: skip
    with pytest.raises(SystemExit, match="2"):
        switch_table_main()
