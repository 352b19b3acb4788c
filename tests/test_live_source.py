"""The live-harvest data path that a plain `hf-topafa train` takes (training_data.LiveSource)."""

import dataclasses
import json

import torch

from hf_topafa.data.harvest import HarvestConfig, Harvester
from hf_topafa.training.train import TrainConfig, train
from hf_topafa.training.training_data import LiveSource


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows in a fixed order (by a random projection), to compare multisets of activations."""
    proj = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    return x[torch.argsort(x @ proj)]


def test_live_source_harvests_then_replays_the_same_tokens(tiny_lm_dir):
    cfg = HarvestConfig(model=str(tiny_lm_dir), layer=1, hook_point="resid_post",
                        context_length=32, holdout="train", max_tokens=640)  # fmt: skip
    source = LiveSource(Harvester(cfg), 64, memory_tokens=10_000, seed=0, progress=False)
    first = torch.cat(list(source.epoch(0)))
    second = torch.cat(list(source.epoch(1)))
    assert first.shape == second.shape == (640, 16)
    assert not torch.equal(first, second)  # the replay is reshuffled ...
    torch.testing.assert_close(_sorted_rows(first), _sorted_rows(second), rtol=0, atol=0)
    # ... and both are exactly the activations of the training windows, read without shuffling
    plain = Harvester(dataclasses.replace(cfg, shuffle_buffer=0))
    direct = torch.cat([c.acts for c in plain.iter_with_tokens(progress=False)])[:640]
    torch.testing.assert_close(_sorted_rows(first), _sorted_rows(direct), rtol=0, atol=0)


def test_plain_train_runs_on_live_activations(tiny_lm_dir, tmp_path):
    config = TrainConfig.from_flat(
        model=str(tiny_lm_dir), layer=1, context_length=32, harvest_tokens=512,
        max_tokens=128 * 12, batch_size=128, d_sae=32, eval_tokens=128,
        output=str(tmp_path / "run"), log_with="none", progress=False, checkpoint_every=0,
    )  # fmt: skip
    run = train(config)  # no data and no cache: the live harvester, 3 passes of 512 tokens
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tokens_trained"] == 128 * 12
    assert metrics["held_out"] is True
    saved = json.loads((run / "config.json").read_text())
    assert saved["layer"] == 1 and saved["d_in"] == 16
