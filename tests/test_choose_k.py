"""`hf-topafa choose-k`: a TopK sweep trained from two seeds, k chosen by how far the seeds agree."""

from __future__ import annotations

import json

import pytest
import torch

from hf_topafa.evaluation.agreement import dictionary_agreement
from hf_topafa.training.choose_k import NEAR_TIE, agreement_by_k, choice, parse_command


def test_the_k_whose_seeds_share_their_dictionary_is_chosen():
    torch.manual_seed(0)
    shared = torch.randn(64, 16)
    decoders = {
        4: [torch.randn(64, 16), torch.randn(64, 16)],
        8: [shared, -2.0 * shared[torch.randperm(64)]],  # the same features, reordered
        16: [shared, shared + 0.5 * torch.randn(64, 16)],  # the same, blurred
    }
    rows = agreement_by_k(decoders)
    assert [row["k"] for row in rows] == [4, 8, 16]
    assert rows[1]["agreement"] == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["agreement"] < rows[2]["agreement"] < rows[1]["agreement"]
    assert choice(rows) == {
        "k": 8,
        "agreement": rows[1]["agreement"],
        "near_ties": [],
        "edge": None,
    }
    assert choice(rows[1:])["edge"] == "smallest" and choice(rows[:2])["edge"] == "largest"


def test_three_seeds_average_their_three_pairs_and_near_ties_are_named():
    torch.manual_seed(0)
    a, b, c = (torch.randn(32, 8) for _ in range(3))
    (row,) = agreement_by_k({5: [a, b, c]})
    pairs = [dictionary_agreement(x, y)["mcc"] for x, y in ((a, b), (a, c), (b, c))]
    assert row["agreement"] == pytest.approx(sum(pairs) / 3, abs=1e-6)
    rows = [{"k": 8, "agreement": 0.70}, {"k": 12, "agreement": 0.70 - NEAR_TIE / 2},
            {"k": 16, "agreement": 0.70 - 2 * NEAR_TIE}]  # fmt: skip
    assert choice(rows)["near_ties"] == [12]


def test_options_are_checked_and_the_rest_goes_to_train_with_a_plain_topk_objective():
    args, rest = parse_command(["--k", "8", "16", "--output", "out", "--max-tokens", "100"])
    assert args.k == [8, 16] and args.seeds == [0, 1] and args.activation == "topk"
    assert rest == ["--max-tokens", "100", "--afa-coef", "0"]
    _, rest = parse_command(["--k", "8", "16", "--output", "o", "--afa_coef=0.03125"])
    assert rest == ["--afa_coef=0.03125"]
    for argv, message in (
        (["--k", "8", "--output", "o"], "two or more distinct positive"),
        (["--k", "8", "8", "--output", "o"], "two or more distinct positive"),
        (["--k", "0", "8", "--output", "o"], "two or more distinct positive"),
        (["--k", "8", "16", "--seeds", "3", "--output", "o"], "two or more distinct seeds"),
        (["--k", "8", "16", "--output", "o", "--seed", "3"], "--seed is set by choose-k"),
        (["--k", "8", "16", "--output", "o", "--resume"], "--resume is set by choose-k"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_command(argv)


@pytest.fixture(scope="module")
def tiny_caches(tmp_path_factory, smollm2):
    """Real SmolLM2 activations (layer 3): a small train cache and a held-out cache."""
    from hf_topafa.data import harvest

    root = tmp_path_factory.mktemp("choose_k")
    base = dict(layer=3, context_length=64, batch_windows=16, shuffle_buffer=0)
    return tuple(
        harvest.write_cache(
            harvest.HarvestConfig(**base, holdout=h, max_tokens=n), root / h, progress=False
        )
        for h, n in (("train", 2048), ("eval", 256))
    )


def test_the_command_trains_every_k_and_seed_once_then_reports_the_choice(
    tiny_caches, tmp_path, capsys
):
    from hf_topafa.cli import cli

    train_dir, eval_dir = tiny_caches
    out = tmp_path / "sweep"
    argv = ["choose-k", "--k", "4", "16", "--output", str(out),
            "--activation-cache", str(train_dir), "--eval-cache", str(eval_dir),
            "--max-tokens", "1024", "--batch-size", "256", "--d-sae", "64", "--eval-tokens",
            "256", "--checkpoint-every", "0", "--log-with", "none", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["topk-k16-seed0", "topk-k16-seed1", "topk-k4-seed0", "topk-k4-seed1"]
    result = json.loads((out / "choose_k.json").read_text())
    assert (out / "choose_k.png").stat().st_size > 1000
    assert [row["k"] for row in result["rows"]] == [4, 16]
    from hf_topafa import SparseAutoencoder

    for row in result["rows"]:  # the agreement is the saved decoders' own
        a, b = (SparseAutoencoder.from_pretrained(r["folder"]).W_dec for r in row["runs"])
        assert row["agreement"] == pytest.approx(dictionary_agreement(a, b)["mcc"], abs=1e-6)
        assert [r["l0"] for r in row["runs"]] == [pytest.approx(row["k"])] * 2
        assert 0 < row["from_start"] <= 1
    best = max(result["rows"], key=lambda r: r["agreement"])["k"]
    assert result["chosen"]["k"] == best and f"chosen: k = {best}" in printed
    assert result["chosen"]["edge"] in ("smallest", "largest") and "add a k" in printed  # of two
    config = json.loads((out / "topk-k4-seed1" / "training_config.json").read_text())
    assert config["optim"]["seed"] == 1 and config["sae"]["afa_coef"] == 0.0

    # Again: every run is finished, so none is trained again and the choice is the same.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/model.safetensors")}
    assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/model.safetensors")} == stamps
    assert json.loads((out / "choose_k.json").read_text())["chosen"] == result["chosen"]
    assert "left as it is" in capsys.readouterr().out


def test_a_bad_choose_k_option_is_one_line_naming_what_is_valid(capsys):
    from hf_topafa.cli import cli

    assert cli.main(["choose-k", "--k", "8", "--output", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--k needs two or more distinct positive values" in err
