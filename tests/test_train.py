"""The trainer on real SmolLM2 activations: learning, saving, kill-and-resume, DDP, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_topafa import SparseAutoencoder
from hf_topafa.data import harvest
from hf_topafa.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from hf_topafa.training.train import TrainConfig, cli_main, lr_factor, parse_config, train

REPO = Path(__file__).resolve().parent.parent
LAYER = 3  # a shallow block: the truncated forward runs 4 of 30 blocks, so harvesting is quick
SMALL = dict(  # a small, fast run: 512 features on 576-wide activations
    d_sae=512,
    batch_size=256,
    eval_tokens=512,
    log_with="none",
    progress=False,
    checkpoint_every=0,
)


@pytest.fixture(scope="session")
def caches(tmp_path_factory, smollm2):
    """Real SmolLM2 activations (layer 3, bundled sample): a train cache and a held-out cache."""
    root = tmp_path_factory.mktemp("train_activations")
    base = dict(layer=LAYER, context_length=64, batch_windows=16, shuffle_buffer=0)
    train_dir = harvest.write_cache(
        harvest.HarvestConfig(**base, holdout="train", max_tokens=8192),
        root / "train",
        shard_tokens=2048,
        progress=False,
    )
    eval_dir = harvest.write_cache(
        harvest.HarvestConfig(**base, holdout="eval", max_tokens=512),
        root / "eval",
        progress=False,
    )
    return train_dir, eval_dir


@pytest.fixture(scope="session")
def acts(caches) -> torch.Tensor:
    """All rows of the train cache, in harvest order, as one tensor."""
    cache = harvest.ActivationCache(caches[0])
    return torch.cat([chunk.acts for chunk in cache.iter_with_tokens()])


def _params(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


# --------------------------------------------------------------------------------------------
# A real run


def test_real_run_lowers_the_loss_and_writes_a_loadable_model(caches, tmp_path):
    train_dir, eval_dir = caches
    config = TrainConfig.from_flat(
        activation_cache=str(train_dir),
        eval_cache=str(eval_dir),
        max_tokens=8192,
        output=str(tmp_path / "run"),
        **{**SMALL, "checkpoint_every": 16},
    )
    run = train(config)

    names = {p.name for p in run.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json", "training_config.json"} <= names
    assert (run / "zf_plot.png").stat().st_size > 1000
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["step_0000016", "step_0000032"]

    from transformers import AutoModel

    sae = AutoModel.from_pretrained(run)
    assert isinstance(sae, SparseAutoencoder)
    assert sae.config.layer == LAYER and sae.config.hook_point == "resid_post"
    assert sae.config.context_length == 64 and sae.config.base_model
    assert sae.config.d_sae == 512 and sae.config.activation == "topafa"

    # Held-out loss of the trained SAE against the same SAE before training (same seed, b_dec 0).
    held_out = torch.cat([c.acts for c in harvest.ActivationCache(eval_dir).iter_with_tokens()])
    fresh = SparseAutoencoder(sae.config)
    fresh.reset_parameters(seed=config.optim.seed)
    with torch.no_grad():
        before = fresh(held_out).mse_loss.item()
        after = sae(held_out).mse_loss.item()
        recon = sae(held_out).reconstruction
    assert after < 0.7 * before, (before, after)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tokens_trained"] == 8192 and metrics["steps"] == 32
    assert metrics["held_out"] is True and metrics["eval_tokens"] == 512
    # total_normalized_mse is sum/sum over tokens in the activations' own space
    total = ((recon - held_out).pow(2).sum() / held_out.pow(2).sum()).item()
    assert abs(metrics["total_normalized_mse"] - total) < 1e-3
    assert 0 < metrics["normalized_mse"] < 1  # the paper's per-token mean
    assert 0 < metrics["fvu"] < 1
    assert 0 < metrics["l0_mean"] < 512
    q25, q50, q75 = metrics["eps_lbo_quartiles"]
    assert 0 <= q25 <= q50 <= q75
    assert set(metrics["k_quantiles"]) >= {"q25", "q50", "q75"}
    assert 0 <= metrics["dead_features"] <= 512

    resolved = json.loads((run / "training_config.json").read_text())
    assert resolved["sae"]["d_sae"] == 512
    assert resolved["sae"]["dead_tokens_threshold"] == 5 * 256  # 5 batches


@pytest.mark.parametrize(
    "activation,extra",
    [
        ("topk", {"k": 16}),
        # six steps: a fast threshold EMA, so the inference threshold has caught up by the end
        ("batchtopk", {"k": 16, "batchtopk_threshold_momentum": 0.5}),
        ("relu", {}),
        ("jumprelu", {}),
    ],
)
def test_every_activation_trains(acts, tmp_path, activation, extra):
    config = TrainConfig.from_flat(
        activation=activation,
        max_tokens=1536,
        output=str(tmp_path / activation),
        dead_tokens_threshold=256,  # features die within the run, so aux-k is exercised
        lr=2e-3,  # six constant-lr steps from b_dec = 0: a larger step than the paper's 3e-4
        **{**SMALL, "d_sae": 256},
        **extra,
    )
    run = train(config, data=acts)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6
    assert torch.isfinite(torch.tensor(metrics["normalized_mse"]))
    assert metrics["normalized_mse"] < 1.0
    sae = SparseAutoencoder.from_pretrained(run)
    assert sae.config.activation == activation
    if activation in ("topk", "batchtopk"):
        assert metrics["l0_mean"] <= 16 * 1.5


# --------------------------------------------------------------------------------------------
# Kill and resume


def test_killed_run_resumes_to_the_same_parameters(caches, tmp_path):
    train_dir, eval_dir = caches
    common = dict(
        activation_cache=str(train_dir),
        eval_cache=str(eval_dir),
        max_tokens=256 * 24,
        dead_tokens_threshold=1024,
        **{**SMALL, "checkpoint_every": 4},
    )
    killed = tmp_path / "killed"
    # The child reads one batch per 50 ms so that the kill lands mid-run, after a checkpoint.
    script = textwrap.dedent(
        f"""
        import time
        from hf_topafa.training import train as t
        slow = t.CacheSource.epoch
        def epoch(self, index, start=0):
            for batch in slow(self, index, start):
                time.sleep(0.05)
                yield batch
        t.CacheSource.epoch = epoch
        t.train(t.TrainConfig.from_flat(output={str(killed)!r}, **{common!r}))
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 90
    while latest_checkpoint(killed) is None and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not (killed / "model.safetensors").exists()
    checkpoint = latest_checkpoint(killed)
    assert checkpoint is not None
    _, _, _, state = load_checkpoint(checkpoint)  # the latest checkpoint is whole
    assert 4 <= state["step"] < 24

    resumed = train(TrainConfig.from_flat(output=str(killed), resume=True, **common))
    straight = train(TrainConfig.from_flat(output=str(tmp_path / "straight"), **common))
    a, b = _params(resumed), _params(straight)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["steps"] == 24


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    weights = {"w": torch.arange(6.0)}
    optim = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(6)}},
        "param_groups": [],
    }
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, weights, optim, {}, {"positions": [[0, step]]}, keep=2)
    # A write that died half-way leaves a hidden temporary folder, never a step_* folder.
    (tmp_path / "checkpoints" / ".tmp-step_0000040-x").mkdir()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [".tmp-step_0000040-x", "step_0000020", "step_0000030"]
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_0000030"
    model_state, optim_state, _, state = load_checkpoint(latest)
    assert torch.equal(model_state["w"], weights["w"])
    assert torch.equal(optim_state["state"][0]["exp_avg"], torch.ones(6))
    assert state["step"] == 30 and state["positions"] == [[0, 30]]


# --------------------------------------------------------------------------------------------
# Two processes (gloo) against one


def test_two_processes_match_one_process(acts, tmp_path):
    data = tmp_path / "acts.safetensors"
    save_file({"activations": acts.contiguous()}, str(data))
    common = dict(max_tokens=256 * 12, dead_tokens_threshold=512, seed=3, **SMALL)
    two = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "_ddp_worker.py"),
        str(data),
        json.dumps({**common, "output": str(two)}),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["replica_max_abs_diff"] == 0.0  # both processes hold the same parameters

    one = train(TrainConfig.from_flat(output=str(tmp_path / "one"), **common), data=acts)
    a, b = _params(two), _params(one)
    start = _initial_parameters(common["seed"])
    assert a["b_enc"].abs().sum() == 0 == b["b_enc"].abs().sum()  # top-AFA: no encoder bias
    for name in ("W_enc", "W_dec"):
        moved = (b[name] - start[name]).norm()
        gap = (a[name] - b[name]).norm()
        assert gap < 0.05 * moved, (name, gap, moved)  # top-AFA's k amplifies float noise
    torch.testing.assert_close(a["b_dec"], b["b_dec"], rtol=1e-3, atol=1e-3)


def _initial_parameters(seed: int) -> dict[str, torch.Tensor]:
    from hf_topafa import SAEConfig

    sae = SparseAutoencoder(SAEConfig(d_in=576, d_sae=512))
    sae.reset_parameters(seed=seed)
    return {k: v.detach() for k, v in sae.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Configuration and bad input


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("activation: topk\nk: 32\nlr: 1e-3\nmax_tokens: 4096\nbatch_size: 512\n")
    config = parse_config(["--config", str(path), "--max-tokens", "8192", "--output", "x"])
    assert (config.sae.activation, config.sae.k, config.optim.lr) == ("topk", 32, 1e-3)
    assert config.optim.max_tokens == 8192 and config.optim.batch_size == 512
    assert config.run.output == "x"
    assert config.steps == 16

    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps({"activation": "relu", "l1_coef": 0.1}))
    assert parse_config(["--config", str(saved)]).sae.l1_coef == 0.1

    bad = tmp_path / "bad.yaml"
    bad.write_text("activaton: topk\n")
    with pytest.raises(ValueError, match="unknown field.*activaton"):
        parse_config(["--config", str(bad)])


def test_lr_schedule_warms_up_and_decays():
    factors = [lr_factor(s, 100, 0.1, 0.2) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[50] == 1.0
    assert factors[80] == pytest.approx(1.0) and factors[99] == pytest.approx(0.05)


def test_bad_inputs_fail_before_any_work(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        TrainConfig.from_flat(dataset=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="needs --k"):
        TrainConfig.from_flat(activation="topk")
    with pytest.raises(ValueError, match="max_tokens"):
        TrainConfig.from_flat(max_tokens=10, batch_size=1024)
    with pytest.raises(FileNotFoundError, match="no activation cache"):
        TrainConfig.from_flat(activation_cache=str(tmp_path))

    assert cli_main(["--activation", "batchtopk", "--output", str(tmp_path / "o")]) == 2
    assert "needs --k" in capsys.readouterr().err
    assert cli_main(["--dataset", "nope/missing.jsonl", "--output", str(tmp_path / "o")]) == 2
    assert "dataset not found" in capsys.readouterr().err

    # A folder holding something else, or another run, is refused without --overwrite.
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no hf-topafa run"):
        train(
            TrainConfig.from_flat(output=str(stranger), **SMALL, max_tokens=512),
            data=torch.randn(1024, 8),
        )
    assert (stranger / "notes.txt").exists()


def test_output_holding_another_run(acts, tmp_path):
    out = tmp_path / "run"
    x = acts[:1024]
    train(TrainConfig.from_flat(output=str(out), max_tokens=512, **SMALL), data=x)
    with pytest.raises(ValueError, match="holds a different run.*lr"):
        train(TrainConfig.from_flat(output=str(out), max_tokens=512, lr=1e-3, **SMALL), data=x)
    with pytest.raises(ValueError, match="holds a different run"):
        train(
            TrainConfig.from_flat(output=str(out), max_tokens=512, lr=1e-3, resume=True, **SMALL),
            data=x,
        )
    train(
        TrainConfig.from_flat(output=str(out), max_tokens=512, lr=1e-3, overwrite=True, **SMALL),
        data=x,
    )
    assert json.loads((out / "training_config.json").read_text())["optim"]["lr"] == 1e-3


def test_layer_out_of_range(smollm2, tmp_path):
    with pytest.raises(ValueError, match=r"layer 99 is out of range: valid layers are 0\.\.29"):
        train(TrainConfig.from_flat(layer=99, output=str(tmp_path / "run"), **SMALL))
    assert not (tmp_path / "run" / "training_config.json").exists()


def test_a_resumed_latent_noise_run_matches_a_straight_one(acts, tmp_path):
    """latent_noise's running noise estimator is part of the checkpoint: a run resumed from step
    4 (its estimator warm, momentum 0.5) ends where a straight run does, threshold included."""
    common = dict(
        activation="latent_noise",
        afa_coef=0.0,
        batchtopk_threshold_momentum=0.5,
        max_tokens=256 * 10,
        dead_tokens_threshold=1024,
        **{**SMALL, "checkpoint_every": 4, "keep_checkpoints": 5},
    )
    straight = train(TrainConfig.from_flat(output=str(tmp_path / "straight"), **common), acts)
    cut = tmp_path / "cut"
    train(TrainConfig.from_flat(output=str(cut), **common), acts)
    for path in list(cut.iterdir()):  # back to the state of a run killed after step 4
        if path.name not in ("training_config.json", "checkpoints"):
            path.unlink() if path.is_file() else shutil.rmtree(path)
    for step in (8, 10):
        shutil.rmtree(cut / "checkpoints" / f"step_{step:07d}")
    resumed = train(TrainConfig.from_flat(output=str(cut), resume=True, **common), acts)
    a, b = _params(resumed), _params(straight)
    assert "threshold" in a and bool((a["threshold"] > 0).any())
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


# --------------------------------------------------------------------------------------------
# Starting from another run's dictionary


def test_init_from_starts_another_rule_from_a_saved_dictionary(acts, tmp_path):
    x = acts[:1024]
    source = train(
        TrainConfig.from_flat(
            output=str(tmp_path / "topk"), activation="topk", k=8, max_tokens=512, **SMALL
        ),
        data=x,
    )
    run = train(
        TrainConfig.from_flat(
            output=str(tmp_path / "pooled"), activation="risk_pooled", afa_coef=0.0,
            init_from=str(source), max_tokens=256, lr=1e-9, **SMALL,
        ),
        data=x,
    )  # fmt: skip
    before, after = _params(source), _params(run)
    for name in ("W_enc", "b_enc", "b_dec"):  # one step at lr 1e-9 moves nothing
        assert torch.allclose(before[name], after[name], atol=1e-6), name
    # but the step renormalizes the decoder rows (saved within 1e-3 of unit norm)
    assert torch.allclose(before["W_dec"], after["W_dec"], atol=1e-3)
    assert float(after["threshold"][0]) > 0  # the new rule estimated its own level
    recorded = json.loads((run / "training_config.json").read_text())["optim"]
    assert recorded["init_from"] == str(source)
    fresh = train(
        TrainConfig.from_flat(output=str(tmp_path / "fresh"), activation="risk_pooled",
                              afa_coef=0.0, max_tokens=256, lr=1e-9, **SMALL),
        data=x,
    )  # fmt: skip
    assert not torch.allclose(_params(fresh)["W_dec"], before["W_dec"])


def test_init_from_refuses_what_does_not_fit(acts, tmp_path, capsys):
    x = acts[:1024]
    source = train(
        TrainConfig.from_flat(output=str(tmp_path / "src"), max_tokens=256, **SMALL), data=x
    )
    with pytest.raises(ValueError, match="has d_sae=512, this run 256; they must match"):
        train(
            TrainConfig.from_flat(output=str(tmp_path / "narrow"), init_from=str(source),
                                  max_tokens=256, **{**SMALL, "d_sae": 256}),
            data=x,
        )  # fmt: skip
    with pytest.raises(ValueError, match="decoder_bias_init mean would overwrite"):
        TrainConfig.from_flat(init_from=str(source), decoder_bias_init="mean")
    capsys.readouterr()
    code = cli_main(["--init-from", str(tmp_path / "nowhere"), "--max-tokens", "512",
                     "--output", str(tmp_path / "x"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "nowhere" in err
