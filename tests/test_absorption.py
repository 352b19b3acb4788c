"""The decoder's absorbed directions: found where rows share one, nowhere else."""

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.sae.absorption import (
    FoldedView,
    UnfoldedView,
    chance_coherence,
    connected_groups,
    doubled_atoms,
    exclusive_views,
    group_hubs,
    nested_pairs,
    parent_atoms,
    star_groups,
    triangle_coherence,
    unabsorbed_among,
    unabsorbed_directions,
    unfolded_by_levels,
)


def top1_reading_rows(W_dec: torch.Tensor) -> SparseAutoencoder:
    """A TopK k = 1 SAE with decoder ``W_dec`` whose encoder reads each row's direction."""
    h, d = W_dec.shape
    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=h, activation="topk", k=1,
                                      input_normalization="none"))  # fmt: skip
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(torch.nn.functional.normalize(W_dec, dim=-1).T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


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
    stricter = unabsorbed_directions(W_dec, level=0.99)  # an explicit level overrides chance
    assert int(stricter.changed.sum()) == 0


def test_a_duplicated_row_keeps_its_direction():
    basis = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(2)))[0].T
    W_dec = torch.cat([basis[:1], basis[:1], basis[1:4]])
    found = unabsorbed_directions(W_dec, level=0.5)
    assert torch.isfinite(found.directions).all()
    torch.testing.assert_close(found.directions[:2], basis[:1].expand(2, -1))


def test_connected_groups_number_each_component_by_its_smallest_member():
    adjacency = torch.zeros(6, 6, dtype=torch.bool)
    for i, j in [(0, 3), (3, 5), (1, 4)]:
        adjacency[i, j] = adjacency[j, i] = True
    assert connected_groups(adjacency).tolist() == [0, 1, 2, 0, 1, 0]


def test_a_star_is_one_row_every_other_member_meets_while_they_meet_no_other():
    adjacency = torch.zeros(12, 12, dtype=torch.bool)
    edges = [(2, 0), (2, 5), (2, 7)]  # a star around 2
    edges += [(1, 3), (3, 4), (1, 4)]  # a triangle: everyone a hub, the others meet
    edges += [(6, 8), (8, 9), (9, 10)]  # a path: nobody meets all
    for i, j in edges:
        adjacency[i, j] = adjacency[j, i] = True
    found = star_groups(adjacency)
    assert [(hub, members.tolist()) for hub, members in found] == [(2, [0, 2, 5, 7])]
    pair = torch.zeros(3, 3, dtype=torch.bool)
    pair[0, 1] = pair[1, 0] = True
    assert star_groups(pair) == []  # a parent and a child, or two siblings: no telling


def test_children_leaning_on_their_parents_row_add_no_atom_when_stars_are_looked_for():
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(7)))[0].T
    held, leaning = basis[0], basis[1:4]  # a parent with a row of its own, and its children
    lacking, absorbing = basis[7], basis[4:7]  # a parent without one, and its children
    # leaning children meet their parent's row at 0.62 and each other at 0.39; absorbing ones
    # meet each other at 0.69; the chance level of 37 rows in 64 dims is 0.47
    W_dec = torch.cat([held[None], leaning + 0.8 * held, absorbing + 1.5 * lacking, basis[8:38]])
    assert chance_coherence(37, 64) == pytest.approx(0.475, abs=1e-3)
    plain, found = unabsorbed_directions(W_dec), unabsorbed_directions(W_dec, stars=True)
    assert found.in_star.tolist() == [True] * 4 + [False] * 33 and plain.in_star is None
    assert found.grouped.tolist() == [False] * 4 + [True] * 3 + [False] * 30
    torch.testing.assert_close(found.directions[0], held)  # the hub is the parent itself
    assert ((found.directions[1:4] * leaning).sum(-1) > 0.99).all()  # leaves lose the parent
    assert parent_atoms(plain).directions.shape[0] == 2
    atoms = parent_atoms(found)
    assert atoms.directions.shape[0] == 1 and float(atoms.directions[0] @ lacking) > 0.9
    sae = top1_reading_rows(W_dec)
    assert unfolded_by_levels(sae).added == 2
    view = unfolded_by_levels(sae, stars=True).eval()
    assert view.added == 1 and view.W_dec.shape == (38, 64)
    x = torch.stack([W_dec[2], W_dec[5]])  # a leaning child; an absorbing one
    fired = [row.nonzero().squeeze(-1).tolist() for row in view(x).feature_acts]
    assert fired == [[2], [5, 37]]  # the held parent is not counted again; the lacking one is


def test_an_unfolded_view_gives_absorbed_parents_latents_that_fire_with_their_children():
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(3)))[0].T
    parents, children = basis[:2], basis[2:10]  # two parents, four children each
    absorbed = (2 * parents.repeat_interleave(4, 0) + children) / math.sqrt(5)
    W_dec = torch.cat([absorbed, basis[10:40]])
    found = unabsorbed_directions(W_dec)
    atoms = parent_atoms(found)
    assert atoms.group.tolist() == [0] * 4 + [1] * 4 + [-1] * 30
    assert ((atoms.directions * parents).sum(-1) > 0.95).all()  # one atom per parent
    sae = SparseAutoencoder(SAEConfig(d_in=64, d_sae=38, activation="topk", k=2,
                                      input_normalization="none"))  # fmt: skip
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    view = UnfoldedView(sae).eval()
    assert view.config.d_sae == 40 and sae.config.d_sae == 38 and view.W_dec.shape == (40, 64)
    x = torch.stack([3 * absorbed[1] + 4 * basis[20], 2 * basis[20] + 3 * basis[30]])
    out, own = view(x), sae(x)
    torch.testing.assert_close(out.reconstruction, own.reconstruction)
    assert out.feature_acts.shape == (2, 40)
    fired = [row.nonzero().squeeze(-1).tolist() for row in out.feature_acts]
    assert fired == [[1, 18, 38], [18, 28]]  # the child, the other row, the child's parent
    assert out.feature_acts[0, 38] > 0 and out.feature_acts[0, 39] == 0
    torch.testing.assert_close(out.feature_acts[:, :38], own.feature_acts)


def test_unfolding_by_levels_finds_the_grandparent_that_the_parents_atoms_share():
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(5)))[0].T
    grandparent, parents, children = basis[0], basis[1:5], basis[5:21]
    # each child's row holds its parent and, less, the grandparent: siblings meet above chance
    # (0.79 > 0.49), cousins do not (0.31), and the four parents' atoms share the grandparent
    absorbed = 1.2 * grandparent + 1.5 * parents.repeat_interleave(4, 0) + children
    W_dec = torch.cat([absorbed, basis[21:51]])
    sae = top1_reading_rows(W_dec)
    assert UnfoldedView(sae).added == 4  # one atom per parent
    view = unfolded_by_levels(sae).eval()
    assert view.added == 1 and view.config.d_sae == 51 and view.W_dec.shape == (51, 64)
    nearest = (view.W_dec[46:] @ basis.T).abs().argmax(-1)
    assert nearest.tolist() == [1, 2, 3, 4, 0]  # the parents, then the grandparent
    x = 3 * torch.nn.functional.normalize(absorbed[9], dim=0).unsqueeze(0)  # the third parent's
    out = view(x)
    assert out.feature_acts[0].nonzero().squeeze(-1).tolist() == [9, 48, 50]
    torch.testing.assert_close(out.reconstruction, sae(x).reconstruction)
    # the parents' atoms meet at 0.37: above the chance level of four atoms (0.29), under the
    # first level's (0.49), so a held level stops after the parents
    atoms = torch.nn.functional.normalize(UnfoldedView(sae).W_dec[46:], dim=-1)
    meet = (atoms @ atoms.T)[0, 1:]
    assert (meet > chance_coherence(4, 64)).all() and (meet < chance_coherence(46, 64)).all()
    held = unfolded_by_levels(sae, held=True)
    assert held.added == 4 and held.level == pytest.approx(chance_coherence(46, 64))
    # siblings and the parents' atoms meet each other, not one hub: no star at any level
    assert unfolded_by_levels(sae, stars=True).W_dec.shape == (51, 64)


def test_nested_pairs_are_those_whose_rarer_latent_fires_with_the_other_at_least_half_the_time():
    fires = torch.zeros(10, 5)
    fires[:8, 0] = 1  # a parent
    fires[:3, 1] = 2.5  # its child: always with it
    fires[3:6, 2] = 0.1  # another child: never with the first
    fires[7:9, 4] = 1  # with the parent in one of its two firings: half
    nested = nested_pairs(fires)  # latent 3 never fires
    pairs = {tuple(p) for p in torch.triu(nested).nonzero().tolist()}
    assert pairs == {(0, 1), (0, 2), (0, 4)}
    assert torch.equal(nested, nested.T) and not nested.diagonal().any()


def parent_row_beside_its_children() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the parent's direction, a decoder [40, 64] whose row 0 is the parent's own and rows 1-4
    its four children with the parent absorbed, codes [100, 40]): the parent's row fires alone
    on the first 40 samples, each child's on 5 of the next 20, nothing on the last 40."""
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(4)))[0].T
    parent, children = basis[0], basis[1:5]
    W_dec = torch.cat([parent[None], (2 * parent + children) / math.sqrt(5), basis[5:40]])
    codes = torch.zeros(100, 40)
    codes[:40, 0] = 1.0
    for child in range(1, 5):
        codes[40 + 5 * child : 45 + 5 * child, child] = 1.0
    return parent, W_dec, codes


def test_a_parents_own_row_in_its_childrens_group_silences_their_atom_where_it_fires():
    parent, W_dec, codes = parent_row_beside_its_children()
    found = unabsorbed_directions(W_dec, codes=codes)
    atoms = parent_atoms(found)
    assert atoms.group.tolist()[:5] == [0] * 5 and float(atoms.directions[0] @ parent) > 0.95
    assert group_hubs(W_dec, atoms, codes).tolist() == [0]
    busy_child = codes.clone()
    busy_child[:, 1] = busy_child[:, 0]  # a child fires as often: no member is both
    busy_child[:40, 0] = 0.0
    busy_child[80:, 0] = 1.0
    assert group_hubs(W_dec, atoms, busy_child).tolist() == [-1]
    pair = parent_atoms(unabsorbed_directions(W_dec[1:3]))
    assert group_hubs(W_dec[1:3], pair, codes[:, 1:3]).tolist() == [-1]  # a pair has no hub
    with pytest.raises(ValueError, match="codes have 39 latents; the decoder 40 rows"):
        group_hubs(W_dec, atoms, codes[:, :39])

    sae = top1_reading_rows(W_dec)
    plain, hubbed = UnfoldedView(sae, found).eval(), UnfoldedView(sae, found, codes).eval()
    assert (plain.hubs, hubbed.hubs) == (0, 1)
    x = torch.stack([3 * parent, 3 * W_dec[2]])  # the parent alone; a child (with its parent)
    assert plain(x).feature_acts[:, 40].gt(0).tolist() == [True, True]  # the parent twice
    assert hubbed(x).feature_acts[:, 40].gt(0).tolist() == [False, True]
    assert (hubbed(x).l0 == torch.tensor([1, 2])).all()
    by_levels = unfolded_by_levels(sae, codes=codes, hubs=True)
    assert by_levels.hubs == 1 and by_levels(x).l0.tolist() == [1, 2]
    with pytest.raises(ValueError, match="hubs are read from the SAE's codes"):
        unfolded_by_levels(sae, hubs=True)


def test_a_hub_folded_into_its_atom_counts_its_parent_once_and_its_grandparent_too():
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(5)))[0].T
    grandparent, parents, children = basis[0], basis[1:5], basis[5:21]
    # four parents' own rows, each beside its four children that absorbed it and, less, the
    # grandparent (as in the grandparent test above); each family fires apart, the parent's
    # row most often
    parent_rows = 1.2 * grandparent + 1.5 * parents
    W_dec = torch.cat([parent_rows, parent_rows.repeat_interleave(4, 0) + children, basis[21:51]])
    codes, start = torch.zeros(228, 50), 0
    for p in range(4):
        codes[start : start + 30 + 10 * p, p] = 1.0
        start += 30 + 10 * p
        for c in range(4):
            codes[start : start + 3, 4 + 4 * p + c] = 1.0
            start += 3
    sae = top1_reading_rows(W_dec)
    plain = unfolded_by_levels(sae, codes=codes).eval()
    hubbed = unfolded_by_levels(sae, codes=codes, hubs=True).eval()
    folded = unfolded_by_levels(sae, codes=codes, hubs=True, fold=True).eval()
    assert (plain.atoms, hubbed.hubs, folded.hubs) == (5, 4, 4)  # four parents, a grandparent
    assert folded.folded.nonzero().squeeze(-1).tolist() == [0, 1, 2, 3]  # the parents' rows
    one = FoldedView(folded)
    assert one.config.d_sae == one.W_dec.shape[0] == 51 and one.atoms == 5
    torch.testing.assert_close(one.W_dec, folded.W_dec[4:])
    unit = torch.nn.functional.normalize
    x = 3 * torch.stack([unit(parent_rows[1], dim=0), unit(W_dec[9], dim=0)])  # a parent; a child
    # the truth: the parent and the grandparent; the child, its parent and the grandparent
    assert plain(x).l0.tolist() == [3, 3]  # the parent twice: its row and its atom
    assert hubbed(x).l0.tolist() == [1, 3]  # the parent once, and the grandparent lost with it
    out = one(x)
    assert out.l0.tolist() == [2, 3]
    assert [row.nonzero().squeeze(-1).tolist() for row in out.feature_acts] == [
        [47, 50],
        [5, 47, 50],
    ]
    torch.testing.assert_close(out.reconstruction, sae(x).reconstruction)
    # without hubs asked for, fold changes nothing
    assert unfolded_by_levels(sae, codes=codes, fold=True)(x).l0.tolist() == [3, 3]


def test_an_atom_that_is_most_of_another_latents_firings_inside_them_is_its_double():
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(7)))[0].T
    # rows 0-3, then atoms 4-6: atom 4 fires inside row 0, in 8 of its 10 firings, and meets it
    # at 0.6 (chance at 7 rows in 64 dims: 0.35); atom 5 inside row 1 too, but in 2 of its 10;
    # atom 6 is as atom 4 to row 2, but points away from it
    rows = torch.stack([basis[0], basis[1], basis[2], basis[3],
                        0.6 * basis[0] + 0.8 * basis[10], 0.6 * basis[1] + 0.8 * basis[11],
                        basis[12]])  # fmt: skip
    codes = torch.zeros(30, 7)
    codes[0:10, 0] = codes[10:20, 1] = codes[20:30, 2] = 1.0
    codes[0:8, 4] = codes[10:12, 5] = codes[20:28, 6] = 1.0
    view = SimpleNamespace(unfold=lambda c: c, W_dec=rows, atoms=3)
    assert chance_coherence(7, 64) < 0.6
    assert doubled_atoms(view, codes).nonzero().squeeze(-1).tolist() == [4]
    codes[8:10, 0] = 0.0  # row 0 now fires only with atom 4, as often: the rarer is the later
    assert doubled_atoms(view, codes).nonzero().squeeze(-1).tolist() == [4]
    codes[0:4, 4] = 0.0  # atom 4 is half of row 0's firings: still its double
    assert doubled_atoms(view, codes).tolist()[4]
    codes[0:6, 4] = 0.0  # under half: not
    assert not doubled_atoms(view, codes).any()
    view.atoms = 2  # row 4 is a row: never a double
    codes[0:8, 4] = 1.0
    assert not doubled_atoms(view, codes).any()


def test_doubles_dropped_leave_the_folded_reading_without_its_doubled_atoms():
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(5)))[0].T
    grandparent, parents, children = basis[0], basis[1:5], basis[5:21]
    parent_rows = 1.2 * grandparent + 1.5 * parents
    W_dec = torch.cat([parent_rows, parent_rows.repeat_interleave(4, 0) + children, basis[21:51]])
    codes = torch.zeros(200, 50)
    codes[:150, 4:8] = torch.eye(4).repeat(38, 1)[:150]  # family 0's children fire most
    for p in range(1, 4):
        codes[150 + 15 * (p - 1) : 150 + 15 * p, 4 + 4 * p] = 1.0
    sae = top1_reading_rows(W_dec)
    views = exclusive_views(sae, codes, doubles=True)
    assert len(views) == 4
    folded, dropped = views[2], views[3]
    # family 0's atom is 150 of the grandparent atom's 195 firings, inside them, but its row
    # (its children's, less the grandparent) meets the grandparent's at 0.30, under chance: a
    # parent of its own, kept
    assert folded.view.atoms == 5 and dropped.doubles == folded.doubles == 0
    unit = torch.nn.functional.normalize(folded.view.W_dec, dim=-1)
    assert float(unit[50] @ unit[54]) < chance_coherence(55, 64)
    torch.testing.assert_close(dropped.W_dec, folded.W_dec)
    x = 3 * torch.nn.functional.normalize(W_dec[4:9], dim=-1)
    torch.testing.assert_close(dropped(x).feature_acts, folded(x).feature_acts)
    # a column dropped by hand leaves the reading
    mask = torch.zeros(55, dtype=torch.bool)
    mask[50] = True
    one_less = FoldedView(folded.view, mask)
    assert one_less.doubles == 1 and one_less.config.d_sae == 54
    torch.testing.assert_close(
        one_less(x).feature_acts, folded(x).feature_acts[:, [*range(50), *range(51, 55)]]
    )


def test_three_rows_that_meet_under_the_pair_level_group_as_a_triangle():
    assert triangle_coherence(1024, 192) == pytest.approx(0.257, abs=1e-3)
    assert triangle_coherence(1024, 192) < chance_coherence(1024, 192)
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(6)))[0].T
    parent, children = basis[0], basis[1:4]
    # three children hold a thin parent: they meet at 0.36, over the triangle level (0.31) and
    # under the pair level (0.48); two more rows meet at 0.36 with no third
    pair = 0.6 * basis[10] + 0.8 * basis[11:13]
    W_dec = torch.cat([0.6 * parent + 0.8 * children, pair, basis[13:48]])
    assert triangle_coherence(40, 64) < 0.36 < chance_coherence(40, 64)
    assert not unabsorbed_directions(W_dec).changed.any()
    found = unabsorbed_directions(W_dec, triangles="joined")
    assert found.changed.nonzero().squeeze(-1).tolist() == [0, 1, 2]  # the pair stays apart
    atoms = parent_atoms(found)
    # the atom sums three rows: the parent, with what of the children three do not cancel
    assert len(atoms.directions) == 1 and float(atoms.directions[0] @ parent) > 0.75
    assert int((basis @ atoms.directions[0]).abs().argmax()) == 0
    # joined, a row that closes a triangle with a pair's group joins it; lone, it does not
    held = 0.8 * basis[50] + 0.6 * basis[51:53]  # a pair that meets at 0.64, over the pair level
    W_more = torch.cat([W_dec, held, (0.45 * basis[50] + 0.893 * basis[53])[None]])  # 0.36 to both
    joined = unabsorbed_directions(W_more, triangles="joined").changed
    lone = unabsorbed_directions(W_more, triangles="lone").changed
    assert joined.nonzero().squeeze(-1).tolist() == [0, 1, 2, 40, 41, 42]
    assert lone.nonzero().squeeze(-1).tolist() == [0, 1, 2, 40, 41]
    with pytest.raises(ValueError, match="triangles must be one of"):
        unabsorbed_directions(W_dec, triangles="all")
    with pytest.raises(ValueError, match="need at least 3 rows"):
        triangle_coherence(2, 64)


def test_siblings_that_fire_together_share_no_absorbed_parent():
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(3)))[0].T
    parents, children = basis[:2], basis[2:10]  # two parents, four children each
    W_dec = torch.cat(
        [(2 * parents.repeat_interleave(4, 0) + children) / math.sqrt(5), basis[10:40]]
    )
    alone = torch.eye(38)  # each latent fires alone
    together = alone.clone()
    together[:, :4] += alone[:, :4].sum(-1, keepdim=True)  # the first four always fire together
    assert unabsorbed_directions(W_dec).nested is None
    found = unabsorbed_directions(W_dec, codes=alone)
    assert not found.nested.any() and parent_atoms(found).directions.shape[0] == 2
    found = unabsorbed_directions(W_dec, codes=together)
    assert int(found.nested.sum()) == 12 and not found.changed[:4].any()
    atoms = parent_atoms(found)
    assert atoms.directions.shape[0] == 1 and float(atoms.directions[0] @ parents[1]) > 0.95
    view = UnfoldedView(top1_reading_rows(W_dec), found)
    assert view.added == 1 and view.pairs == 12 and view.nested == 6  # two groups of four
    with pytest.raises(ValueError, match="codes have 37 latents; the decoder 38 rows"):
        unabsorbed_directions(W_dec, codes=alone[:, :37])


def test_atoms_that_fire_nested_are_not_grouped_at_the_next_level():
    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(5)))[0].T
    grandparent, parents, children = basis[0], basis[1:5], basis[5:21]
    absorbed = 1.2 * grandparent + 1.5 * parents.repeat_interleave(4, 0) + children
    sae = top1_reading_rows(torch.cat([absorbed, basis[21:51]]))
    one_child = torch.eye(46)  # each sample one latent: the parents' atoms never meet
    assert unfolded_by_levels(sae, codes=one_child).W_dec.shape == (51, 64)  # the grandparent
    four_cousins = torch.zeros(4, 46)  # each sample one child of every parent
    for sample in range(4):
        four_cousins[sample, sample::4][:4] = 1
    view = unfolded_by_levels(sae, codes=four_cousins)
    assert view.added == 4 and view.W_dec.shape == (50, 64)  # siblings still group; no grandparent
    assert view.pairs == 24 and view.nested == 0  # siblings never fire together
    plain = unfolded_by_levels(sae)
    assert plain.W_dec.shape == (51, 64) and plain.pairs == 6  # the parents' atoms all meet
    again = unfolded_by_levels(sae, unabsorbed_directions(sae.W_dec), codes=four_cousins)
    assert again.W_dec.shape == (50, 64)  # directions found without codes are found again


def test_only_the_last_rows_group_when_unabsorbing_among_them():
    basis = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(6)))[0].T
    near = torch.stack([basis[0] + basis[1], basis[0] + basis[2]])  # cosine 0.5
    W_dec = torch.cat([near, basis[3:6], near])
    found = unabsorbed_among(W_dec, 2)
    assert found.changed.tolist() == [False] * 5 + [True, True]
    assert not found.adjacency[:5].any()
    unit = torch.nn.functional.normalize(near, dim=-1)
    torch.testing.assert_close(found.directions[:2], unit)  # the rows before keep theirs
    torch.testing.assert_close(found.shared[5:], unit.flip(0))  # each one's neighbour
    with pytest.raises(ValueError, match="need 2 to 7 last rows"):
        unabsorbed_among(W_dec, 1)


def test_the_absorption_report_reads_a_saved_sae_and_says_what_it_cannot_load(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "scripts"))
    from absorption_report import main as report_main

    basis = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(4)))[0].T
    absorbed = (2 * basis[:2].repeat_interleave(4, 0) + basis[2:10]) / math.sqrt(5)
    sae = SparseAutoencoder(SAEConfig(d_in=64, d_sae=38, activation="topk", k=2))
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([absorbed, basis[10:40]]))
    sae.save_pretrained(tmp_path / "run")
    out = tmp_path / "report.json"
    monkeypatch.setattr(
        sys, "argv", ["absorption_report.py", str(tmp_path / "run"), "--json", str(out)]
    )
    report_main()
    report = json.loads(out.read_text())["reports"][0]
    assert (report["rows_changed"], report["groups"], report["largest_group"]) == (8, 2, 4)
    assert report["group_size_quartiles"] == [4.0, 4.0, 4.0]
    assert report["atoms_by_levels"] == 2  # the two parents share nothing above them
    assert report["star_groups"] == 0 and report["atoms_by_levels_stars"] == 2  # siblings meet
    assert 0.7 < report["shared_cosine_quartiles"][1] < 0.95
    assert '"rows_changed": 8' in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["absorption_report.py", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="cannot load an SAE from"):
        report_main()


def test_the_text_paths_hubs_readings_count_a_parent_alone_once():
    from hf_topafa.evaluation.unfolded_l0 import UnfoldedL0

    _, W_dec, codes = parent_row_beside_its_children()
    counted = UnfoldedL0(top1_reading_rows(W_dec))
    counted.update(codes[:60])  # fewer than NESTED_SAMPLES: built when the sparsity is asked for
    counted.update(codes[60:])
    spa = counted.sparsity()
    assert spa["nested_tokens"] == 100 and spa["hubs_by_levels_exclusive"] == 1
    assert spa["atoms_by_levels_exclusive_hubs"] == spa["atoms_by_levels_exclusive"] == 1
    # the parent alone: 2 without hubs (its row and the atom), 1 with; a child: 2 either way
    assert spa["l0_unfolded_by_levels_exclusive_mean"] == pytest.approx((40 * 2 + 20 * 2) / 100)
    assert spa["l0_unfolded_by_levels_exclusive_hubs_mean"] == pytest.approx((40 + 20 * 2) / 100)
    # folded: the parent alone on its atom, once; a child and the atom
    assert spa["hubs_by_levels_exclusive_folded"] == 1
    assert spa["l0_unfolded_by_levels_exclusive_hubs_folded_mean"] == pytest.approx(0.8)
