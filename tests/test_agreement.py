"""Agreement between two dictionaries: the truth-free MCC that seed agreement reads."""

import pytest
import torch

from hf_topafa.evaluation.agreement import dictionary_agreement, matched_cosines


def test_a_dictionary_agrees_fully_with_itself_shuffled_flipped_and_rescaled():
    torch.manual_seed(0)
    w = torch.randn(64, 16)
    other = -3.0 * w[torch.randperm(64)]
    out = dictionary_agreement(w, other)
    assert out["mcc"] == pytest.approx(1.0, abs=1e-5)
    assert out["above_0.9"] == 1.0


def test_the_matching_is_one_to_one_and_found_where_rows_are_shared():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 32))[0]
    a = basis[:8]
    b = torch.cat([basis[4:8], basis[8:12]])  # shares half of a's rows, orthogonal to the rest
    match, similarity = matched_cosines(a, b)
    assert match[4:].tolist() == [0, 1, 2, 3]
    assert similarity[4:].tolist() == pytest.approx([1.0] * 4, abs=1e-5)
    assert similarity[:4].max() < 1e-5
    assert len(set(match.tolist())) == 8  # no row of b used twice
    assert dictionary_agreement(a, b)["mcc"] == pytest.approx(0.5, abs=1e-5)


def test_random_dictionaries_agree_little_and_less_in_more_dimensions():
    torch.manual_seed(0)
    low = dictionary_agreement(torch.randn(128, 256), torch.randn(128, 256))["mcc"]
    high = dictionary_agreement(torch.randn(128, 16), torch.randn(128, 16))["mcc"]
    assert low < 0.3 < high < 0.9


def test_a_wider_second_dictionary_leaves_no_first_row_unmatched():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    match, similarity = matched_cosines(w, torch.cat([torch.randn(24, 16), w]))
    assert match.tolist() == list(range(24, 32))
    assert similarity.min() > 0.9999


def test_rows_in_different_spaces_are_refused_with_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 8\) and \(4, 9\)"):
        dictionary_agreement(torch.randn(4, 8), torch.randn(4, 9))


def saved_sae(folder, seed: int, with_seed_record: bool = True):
    import json

    from hf_topafa import SAEConfig, SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=32, activation="topk", k=4))
    sae.reset_parameters(seed=seed)
    sae.save_pretrained(folder)
    if with_seed_record:
        (folder / "training_config.json").write_text(json.dumps({"optim": {"seed": seed}}))
    return folder


def test_the_command_matches_every_pair_and_says_when_two_share_their_start(tmp_path, capsys):
    import json

    from hf_topafa.cli import cli

    a, b, c = (saved_sae(tmp_path / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    out = tmp_path / "pairs.json"
    capsys.readouterr()
    assert cli.main(["agreement", str(a), str(b), str(c), "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert "both started from seed 0" in lines[0] and "seed" not in lines[1] + lines[2]
    pairs = json.loads(out.read_text())["pairs"]
    assert pairs[0]["mcc"] == pytest.approx(1.0, abs=1e-5) and pairs[0]["same_initialization_seed"]
    assert pairs[1]["mcc"] < 0.9 and not pairs[1]["same_initialization_seed"]


def test_the_command_refuses_one_sae_and_a_missing_one_in_one_line(tmp_path, capsys):
    from hf_topafa.cli import cli

    a = saved_sae(tmp_path / "a", 0, with_seed_record=False)
    capsys.readouterr()
    assert cli.main(["agreement", str(a)]) == 2
    assert capsys.readouterr().err.strip() == "error: agreement needs at least two SAEs, got 1"
    assert cli.main(["agreement", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after the first SAE's loading bar
    assert last.startswith("error:") and "missing" in last


def test_from_start_says_how_far_training_moved_each_sae_and_what_chance_gives(tmp_path, capsys):
    import json

    from hf_topafa.cli import cli

    a, b = saved_sae(tmp_path / "a", 3), saved_sae(tmp_path / "b", 4)  # never trained
    out = tmp_path / "pairs.json"
    capsys.readouterr()
    assert cli.main(["agreement", str(a), str(b), "--from-start", "--json", str(out)]) == 0
    starts = json.loads(out.read_text())["starts"]
    assert [s["seed"] for s in starts] == [3, 4]
    assert all(s["from_start"] == pytest.approx(1.0, abs=1e-5) for s in starts)
    assert all(s["chance"] < 0.9 for s in starts)
    unrecorded = saved_sae(tmp_path / "c", 0, with_seed_record=False)
    capsys.readouterr()
    assert cli.main(["agreement", str(a), str(unrecorded), "--from-start"]) == 2
    assert "records no initialization seed" in capsys.readouterr().err.strip().splitlines()[-1]
