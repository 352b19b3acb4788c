"""Agreement between two dictionaries: the truth-free MCC that seed agreement reads."""

import sys
from pathlib import Path

import pytest
import torch

from hf_topafa.evaluation.agreement import dictionary_agreement, matched_cosines

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))


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


def planted_sae(folder, decoder: torch.Tensor, dead: slice | None = None):
    """A ReLU SAE whose decoder rows are ``decoder``, its encoder their transpose; the latents
    in ``dead`` never fire (encoder bias far below any input's projection)."""
    from hf_topafa import SAEConfig, SparseAutoencoder

    sae = SparseAutoencoder(
        SAEConfig(d_in=decoder.shape[1], d_sae=decoder.shape[0], activation="relu")
    )
    with torch.no_grad():
        sae.W_dec.copy_(decoder)
        sae.W_enc.copy_(decoder.T)
        if dead is not None:
            sae.b_enc[dead] = -1e6
    sae.save_pretrained(folder)
    return str(folder)


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_live_latent_agreement_leaves_out_the_latents_that_never_fire(tmp_path):
    from agreement_live_latents import live_latents, measure_pair

    from hf_topafa import SparseAutoencoder

    shared, own_a, own_b = unit_rows(16, 64, 0), unit_rows(16, 64, 1), unit_rows(16, 64, 2)
    a = planted_sae(tmp_path / "a", torch.cat([shared, own_a]), dead=slice(16, 32))
    b = planted_sae(tmp_path / "b", torch.cat([shared.flip(0), own_b]), dead=slice(16, 32))
    x = torch.randn(512, 64)
    live = live_latents(SparseAutoencoder.from_pretrained(a), x)
    assert live[:16].all() and not live[16:].any()
    row = measure_pair(a, b, x, features=None)
    assert row["live"] == [16, 16] and "truth_mcc_all" not in row
    assert row["agreement_live"] == pytest.approx(1.0, abs=1e-5)
    assert row["agreement_all"] < 0.8  # the dead halves are unrelated random rows


def test_latent_agreement_tells_unlearned_latents_from_other_true_ones(tmp_path):
    from synth_latent_agreement import per_latent

    truth = unit_rows(64, 64, 0)
    noise = unit_rows(32, 64, 5)
    # half learned and shared, half still random: agreement marks the learned half
    a = planted_sae(tmp_path / "a", torch.cat([truth[:16], noise[:16]]))
    b = planted_sae(tmp_path / "b", torch.cat([truth[:16], noise[16:]]))
    row = per_latent(a, b, truth)
    assert row["shared"] == 16 and row["correlation"] > 0.9
    assert row["truth_if_shared"] == pytest.approx(1.0, abs=1e-5) and row["truth_if_not"] < 0.6
    # both fully learned, different features: nothing shared, and every latent is true
    c = planted_sae(tmp_path / "c", truth[:32])
    d = planted_sae(tmp_path / "d", truth[32:])
    row = per_latent(c, d, truth)
    assert row["shared"] == 0 and row["truth_if_shared"] is None
    assert row["truth_if_not"] == pytest.approx(1.0, abs=1e-5)
