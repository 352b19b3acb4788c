"""The decoder's absorbed directions: found where rows share one, nowhere else."""

import math

import pytest
import torch

from hf_topafa.sae.absorption import chance_coherence, unabsorbed_directions


def test_chance_coherence_is_the_pairwise_tail_bound():
    assert chance_coherence(1024, 192) == pytest.approx(math.sqrt(2 * math.log(1024**2) / 192))
    assert chance_coherence(1024, 192) == pytest.approx(0.380, abs=1e-3)
    assert chance_coherence(4096, 768) < chance_coherence(1024, 192)  # more room, less chance
    with pytest.raises(ValueError, match="at least 2 rows"):
        chance_coherence(1, 192)


def test_random_rows_have_no_neighbour_above_chance():
    rows = torch.randn(1024, 192, generator=torch.Generator().manual_seed(0))
    found = unabsorbed_directions(rows)
    assert int(found.changed.sum()) == 0
    torch.testing.assert_close(found.directions, torch.nn.functional.normalize(rows, dim=-1))


def test_siblings_that_absorbed_their_parent_get_their_own_direction_back():
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(1)))[0].T
    parent, children, others = basis[0], basis[1:5], basis[5:40]
    absorbed = (2 * parent + children) / math.sqrt(5)  # each child's row holds the parent
    W_dec = torch.cat([absorbed, others]) * 3.0  # row norms do not matter
    found = unabsorbed_directions(W_dec)
    assert found.changed.tolist() == [True] * 4 + [False] * 35
    assert (found.neighbours[:4] == 3).all()
    assert ((found.shared[:4] @ parent) > 0.95).all()  # what they share is the parent
    before = (torch.nn.functional.normalize(absorbed, dim=-1) * children).sum(-1)
    after = (found.directions[:4] * children).sum(-1)
    assert (before < 0.45).all() and (after > 0.85).all()
    torch.testing.assert_close(found.directions[4:], others)  # untouched: no neighbour
    assert found.shared[4:].abs().max() == 0 and found.shared_cosine[4:].abs().max() == 0
    lower = unabsorbed_directions(W_dec, level=0.99)  # an explicit level overrides chance
    assert int(lower.changed.sum()) == 0


def test_a_duplicated_row_keeps_its_direction():
    basis = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(2)))[0].T
    W_dec = torch.cat([basis[:1], basis[:1], basis[1:4]])
    found = unabsorbed_directions(W_dec, level=0.5)
    assert torch.isfinite(found.directions).all()
    torch.testing.assert_close(found.directions[:2], basis[:1].expand(2, -1))
