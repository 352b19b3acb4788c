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
