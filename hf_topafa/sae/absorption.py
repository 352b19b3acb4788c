"""Absorption read from a trained decoder alone, and the feature directions without it.

Where features form a hierarchy (a child fires only with its parent), a TopK latent for a child
learns the child's direction plus its parent's (feature absorption), and so does each sibling's.
The siblings' rows then meet at cosines far above what quasi-orthogonal directions reach by
chance, and the direction they share is the parent's. ``unabsorbed_directions`` finds each
row's above-chance neighbours, takes the normalized sum of their rows as the shared direction,
and returns the row with that direction projected out: an estimate of the latent's own feature
direction. No truth and no tuned coefficient: the level is ``chance_coherence``.

The encoder, the code and the reconstruction are untouched; only what a latent is read to point
at changes (what SAELens's evaluator matches to the true features). ``parent_atoms`` and
``UnfoldedView`` go one step further: each group of rows that share a direction gets that
direction as a latent of its own, firing whenever one of the group fires, so a code read from
the SAE counts the parents it had absorbed. ``unfolded_by_levels`` repeats that over the atoms
themselves, for the ancestors above the parents; with ``stars`` a group whose rows all lean on
one of them (``star_groups``) is read as that row's, with no atom; given the SAE's codes on some
samples, two rows that fire nested (``nested_pairs``) are not grouped at all, and with ``hubs``
a group's member that is its parent's own row (``group_hubs``) silences the atom where it
fires, or with ``fold`` gives the atom its firings and leaves the reading (``FoldedView``), and
an atom that is most of another latent's firings and fires inside them is left out as its
double (``doubled_atoms``). On the synthetic worlds these are measured in
``results/synthbench`` ("Absorbed parents", "Ancestors unfolded by levels", "Star groups",
"Exclusive groups", "Parents counted twice", "Hubs folded into their atoms").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn


def chance_coherence(d_sae: int, d_in: int) -> float:
    """The largest |cosine| two of ``d_sae`` random unit vectors in ``d_in`` dimensions reach by
    chance: sqrt(2 ln(d_sae²) / d_in), a Gaussian tail bound over the d_sae² pairs. A cosine above
    it says two rows share a direction."""
    if d_sae < 2 or d_in < 1:
        raise ValueError(f"need at least 2 rows and 1 dimension, not {d_sae} x {d_in}")
    return math.sqrt(2.0 * math.log(d_sae**2) / d_in)


TRIANGLES = (None, "joined", "lone")
"""How ``unabsorbed_directions`` may group rows that meet in threes: not, joined to the pairs'
groups, or only among rows that meet no other above the pair level."""


def triangle_coherence(d_sae: int, d_in: int) -> float:
    """The |cosine| above which three of ``d_sae`` random unit vectors in ``d_in`` dimensions
    all meet pairwise about once by chance: sqrt(2 ln(d_sae³ / 6) / (3 d_in)), the tail bound of
    ``chance_coherence`` over the triples. Lower than the pairwise level (0.26 against 0.38 at
    1,024 rows in 192 dimensions): a parent absorbed thinly into three children's rows makes
    them meet each other under the pairwise level, but rarely three random rows at all."""
    if d_sae < 3 or d_in < 1:
        raise ValueError(f"need at least 3 rows and 1 dimension, not {d_sae} x {d_in}")
    return math.sqrt(2.0 * math.log(d_sae**3 / 6) / (3 * d_in))


@dataclass
class UnabsorbedDirections:
    """Per decoder row: its direction without the shared one (unit rows [h, d]), the shared
    direction (unit, zero where the row has no above-chance neighbour), how much of the row it
    was (the cosine between them), and how many neighbours the row has."""

    directions: torch.Tensor
    shared: torch.Tensor
    shared_cosine: torch.Tensor
    neighbours: torch.Tensor
    level: float
    adjacency: torch.Tensor
    """[h, h] bool: which rows are each other's above-chance neighbours."""
    in_star: torch.Tensor | None = None
    """[h] bool: rows of a star group (see ``star_groups``), when asked for: the direction they
    share is the hub's own row, so it gets no atom. None: stars were not looked for."""
    nested: torch.Tensor | None = None
    """[h, h] bool: pairs above the level left ungrouped because they fire nested
    (``nested_pairs``). None: no codes were given to look at."""

    @property
    def changed(self) -> torch.Tensor:
        """[h] bool: rows that had an above-chance neighbour."""
        return self.neighbours > 0

    @property
    def grouped(self) -> torch.Tensor:
        """[h] bool: rows whose shared direction is a parent the dictionary lacks (an atom's)."""
        return self.changed if self.in_star is None else self.changed & ~self.in_star


@torch.no_grad()
def unabsorbed_directions(
    W_dec: torch.Tensor,
    level: float | None = None,
    stars: bool = False,
    codes: torch.Tensor | None = None,
    triangles: str | None = None,
) -> UnabsorbedDirections:
    """Each row of ``W_dec`` [h, d] without the direction it shares with the rows whose cosine
    with it exceeds ``level`` (default ``chance_coherence(h, d)``). Rows with no such neighbour
    keep their own direction. ``stars``: a star group's hub keeps its own direction too, and the
    group is marked (``in_star``) so that no atom is added for it (``star_groups``). ``codes``
    [n, h]: the latents' activations on samples (not the ones a reading is scored on); two rows
    that fire nested in them are not neighbours (``nested_pairs``). ``triangles="joined"``: two
    rows are neighbours too where they and a third all meet above ``triangle_coherence``;
    ``"lone"``: only where all three have no neighbour above ``level``, so that a triangle
    makes a group of its own and joins none."""
    if triangles not in TRIANGLES:
        raise ValueError(f"triangles must be one of {TRIANGLES}, not {triangles!r}")
    rows = W_dec.detach().float()
    unit = rows / torch.linalg.vector_norm(rows, dim=-1, keepdim=True).clamp_min(1e-12)
    level = chance_coherence(*unit.shape) if level is None else float(level)
    cosines = unit @ unit.T
    near = cosines > level
    near.fill_diagonal_(False)
    if triangles is not None:
        weak = cosines > triangle_coherence(*unit.shape)
        weak.fill_diagonal_(False)
        if triangles == "lone":
            alone = ~near.any(-1)
            weak &= alone[:, None] & alone[None, :]
        near |= weak & ((weak.float() @ weak.float()) > 0)  # closes a triangle of weak pairs
    nested = None
    if codes is not None:
        if codes.shape[-1] != len(unit):
            raise ValueError(f"codes have {codes.shape[-1]} latents; the decoder {len(unit)} rows")
        nested = near & nested_pairs(codes)
        near &= ~nested
    neighbours = near.sum(-1)
    summed = near.to(unit.dtype) @ unit
    shared = summed / torch.linalg.vector_norm(summed, dim=-1, keepdim=True).clamp_min(1e-12)
    cosine = (unit * shared).sum(-1) * (neighbours > 0)
    own = unit - cosine[:, None] * shared
    left = torch.linalg.vector_norm(own, dim=-1, keepdim=True)
    own = torch.where(left > 1e-6, own / left.clamp_min(1e-12), unit)  # a row that is all shared
    in_star = None
    if stars:
        in_star = torch.zeros(len(unit), dtype=torch.bool)
        for hub, members in star_groups(near):
            own[hub] = unit[hub]  # the parent itself: nothing of another row was absorbed into it
            in_star[members] = True
    return UnabsorbedDirections(own, shared, cosine, neighbours, level, near, in_star, nested)


NESTED_SAMPLES = 20_000
"""How many samples' codes the package's readings look at for nested firing (``nested_pairs``)."""


def nested_pairs(codes: torch.Tensor) -> torch.Tensor:
    """[h, h] bool from ``codes`` [n, h]: the pairs of latents where the rarer one fires with the
    other in at least half of its firings.

    The members of an absorbed parent's group are alternatives: each carries the parent, so two
    firing together would count it twice, and siblings rarely do. Nested firing is a parent's
    row and its child's, or a latent and a double of it: their directions meet for another
    reason than a parent the dictionary lacks. On the 16k world 155 of the 162 pairs of
    first-level atoms that meet above chance fire nested, on the 4k world 5 of 78
    (``results/synthbench``, "Exclusive groups"). Half is where the rarer one fires more often
    with the other than without it."""
    fired = (codes.detach() != 0).float()
    together = fired.T @ fired
    count = fired.sum(0)
    rarer = torch.minimum(count[:, None], count[None, :])
    nested = together >= 0.5 * rarer.clamp_min(1)
    nested.fill_diagonal_(False)
    return nested


def star_groups(adjacency: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(hub, members) per group of three or more rows that is a star: one row, the hub, is a
    neighbour of every other member, and no two others are neighbours of each other.

    Children whose rows lean on a parent the dictionary lacks all carry that parent, so they are
    neighbours of each other. Children that lean on a parent the dictionary holds as a row carry
    less of it (that row takes most of the parent's firings), so they meet the row and not each
    other: the hub is the parent, and an atom would count it twice (on the 16k world the second
    level's atoms fire 5.2 times per sample, 4.8 of them with a member that points at the same
    feature; ``results/synthbench``, "Star groups"). The geometry is not unique to a held parent:
    on the 1,024-wide worlds most firings the stars remove doubled nothing. A pair is two
    siblings or a parent and its child, which directions cannot tell apart, so pairs are not
    stars."""
    group = connected_groups(adjacency)
    found = []
    for root in (torch.bincount(group) >= 3).nonzero().squeeze(-1).tolist():
        members = (group == root).nonzero().squeeze(-1)
        degree = adjacency[members][:, members].sum(-1)
        if int(degree.sum()) == 2 * (len(members) - 1) and int(degree.max()) == len(members) - 1:
            found.append((int(members[degree.argmax()]), members))
    return found


@torch.no_grad()
def unabsorbed_among(
    W_dec: torch.Tensor,
    last: int,
    level: float | None = None,
    stars: bool = False,
    codes: torch.Tensor | None = None,
) -> UnabsorbedDirections:
    """``unabsorbed_directions`` where only the last ``last`` rows of ``W_dec`` may share a
    direction, at ``level`` (default: the chance level of ``last`` rows): the atoms one unfolding
    added. The rows before keep their direction and have no neighbour. ``codes`` [n, h]: every
    row's activations (the last ``last`` columns are used)."""
    rows = W_dec.detach().float()
    h, last = rows.shape[0], int(last)
    if not 2 <= last <= h:
        raise ValueError(f"need 2 to {h} last rows to group, not {last}")
    if codes is not None and codes.shape[-1] != h:
        raise ValueError(f"codes have {codes.shape[-1]} latents; the decoder {h} rows")
    found = unabsorbed_directions(
        rows[-last:], level, stars, None if codes is None else codes[:, -last:]
    )
    directions = rows / torch.linalg.vector_norm(rows, dim=-1, keepdim=True).clamp_min(1e-12)
    directions[-last:] = found.directions
    shared, cosine = torch.zeros_like(directions), rows.new_zeros(h)
    shared[-last:], cosine[-last:] = found.shared, found.shared_cosine
    neighbours = torch.zeros(h, dtype=found.neighbours.dtype)
    neighbours[-last:] = found.neighbours
    adjacency = torch.zeros(h, h, dtype=torch.bool)
    adjacency[-last:, -last:] = found.adjacency
    in_star = None
    if stars:
        in_star = torch.zeros(h, dtype=torch.bool)
        in_star[-last:] = found.in_star
    nested = None
    if codes is not None:
        nested = torch.zeros(h, h, dtype=torch.bool)
        nested[-last:, -last:] = found.nested
    return UnabsorbedDirections(directions, shared, cosine, neighbours, found.level, adjacency,
                                in_star, nested)  # fmt: skip


@dataclass
class ParentAtoms:
    """The directions absorbed rows share, one per group of rows that are neighbours (connected
    through above-chance cosines): ``directions`` [G, d] unit rows, and per decoder row the
    group it belongs to (``group`` [h], -1 for rows with no neighbour)."""

    directions: torch.Tensor
    group: torch.Tensor


def parent_atoms(unabsorbed: UnabsorbedDirections) -> ParentAtoms:
    """One atom per connected group of changed rows (``grouped``: stars left out when they were
    looked for): the normalized sum of the group's shared directions (siblings that absorbed one
    parent share it; the group is that parent's)."""
    changed = unabsorbed.grouped
    ids, numbered = connected_groups(unabsorbed.adjacency)[changed].unique(return_inverse=True)
    group = torch.full_like(changed, -1, dtype=torch.long)
    group[changed] = numbered
    summed = torch.zeros(len(ids), unabsorbed.shared.shape[1], dtype=unabsorbed.shared.dtype)
    summed.index_add_(0, numbered, unabsorbed.shared[changed])
    directions = summed / torch.linalg.vector_norm(summed, dim=-1, keepdim=True).clamp_min(1e-12)
    return ParentAtoms(directions, group)


def connected_groups(adjacency: torch.Tensor) -> torch.Tensor:
    """[n] long: each node's connected component of the symmetric bool ``adjacency`` [n, n],
    numbered by its smallest member (a union-find over the edges)."""
    root = list(range(adjacency.shape[0]))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for i, j in adjacency.nonzero().tolist():
        a, b = find(i), find(j)
        if a != b:
            root[max(a, b)] = min(a, b)
    return torch.tensor([find(i) for i in range(len(root))], dtype=torch.long)


def group_hubs(W_dec: torch.Tensor, atoms: ParentAtoms, codes: torch.Tensor) -> torch.Tensor:
    """[G] long: per atom, the member of its group taken for the parent's own row, or -1 where
    none is found: the member whose row is nearest the atom and that fires most often in
    ``codes`` [n, h] (the same member on both counts; pairs have none, as for ``star_groups``).

    A group can hold its parent's own row as well as the children that absorbed it: the row
    meets the children above chance, and they fire apart, not nested. A parent is on whenever
    one of its children is, so its row should fire more often than any child's, and its
    direction is the one the children share. Where that row fires the parent is counted already,
    and the atom would count it twice: on the mix world's TopK k = 6 dictionary 0.89 of the
    atoms' 2.29 firings per sample came with a member of their group that points at the same
    true feature (``results/synthbench``, "Parents counted twice")."""
    if codes.shape[-1] != W_dec.shape[0]:
        raise ValueError(f"codes have {codes.shape[-1]} latents; the decoder {W_dec.shape[0]} rows")
    unit = torch.nn.functional.normalize(W_dec.detach().float(), dim=-1)
    rate = (codes != 0).float().mean(0)
    hubs = torch.full((len(atoms.directions),), -1, dtype=torch.long)
    for g, direction in enumerate(atoms.directions):
        members = (atoms.group == g).nonzero().squeeze(-1)
        if len(members) < 3:
            continue
        nearest = members[(unit[members] @ direction).argmax()]
        if nearest == members[rate[members].argmax()]:
            hubs[g] = nearest
    return hubs


class UnfoldedView(nn.Module):
    """An SAE read with the parents it absorbed as latents of their own, for evaluation.

    The code is the SAE's [.., h] followed by one activation per parent atom [.., G]: the sum,
    over the atom's group, of each firing row's decoder-scaled activation times the cosine of its
    row with the shared direction (the part of it that was the parent's). The rows are the
    unabsorbed directions (at the decoder's norms), then the atoms (unit). The reconstruction
    stays the SAE's own. It answers ``score_against_truth`` as an SAE of width h + G.

    ``hub_codes``: the codes [n, h] of the latents this view reads, on samples it is not scored
    on; each group's parent's own row (``group_hubs``) then silences its atom where it fires.
    ``fold``: instead, the hub's column is emptied and the atom fires wherever the hub or a
    child does, so the parent is counted once and on one latent, the one its direction is read
    on, and the atoms above it count their ancestors on the hub's firings too. The emptied
    columns are listed in ``folded``; ``FoldedView`` leaves them out.
    """

    def __init__(
        self,
        sae,
        unabsorbed: UnabsorbedDirections | None = None,
        hub_codes: torch.Tensor | None = None,
        fold: bool = False,
    ):
        super().__init__()
        self.sae = sae
        unabsorbed = unabsorbed or unabsorbed_directions(sae.W_dec)
        atoms = parent_atoms(unabsorbed)
        norms = torch.linalg.vector_norm(sae.W_dec.detach(), dim=-1)
        self.register_buffer("rows", torch.cat([unabsorbed.directions * norms[:, None],
                                                atoms.directions]))  # fmt: skip
        self.register_buffer("group", atoms.group)
        self.register_buffer("share", unabsorbed.shared_cosine * norms)
        hubs = torch.full((len(atoms.directions),), -1, dtype=torch.long)
        if hub_codes is not None:
            hubs = group_hubs(sae.W_dec, atoms, hub_codes)
        self.register_buffer("hub", hubs)  # -1: the atom has no hub
        self.fold = fold
        inner = (
            sae.folded
            if isinstance(sae, UnfoldedView)
            else torch.zeros(len(norms), dtype=torch.bool)
        )
        folded = torch.cat([inner, torch.zeros(len(atoms.directions), dtype=torch.bool)])
        if fold:
            folded[hubs[hubs >= 0]] = True
        self.register_buffer("folded", folded)
        """[d_sae] bool: the columns this view and the views it reads empty (folded hubs)."""
        self.hubs = int((hubs >= 0).sum()) + getattr(sae, "hubs", 0)
        """How many atoms of this view and the views it reads have a hub (a row of their group
        that silences them where it fires, or that is folded into them)."""
        self.config = copy.copy(sae.config)
        self.config.d_sae = self.rows.shape[0]
        self.added = self.rows.shape[0] - norms.shape[0]
        """How many atoms this view added after the rows it read."""
        self.level = unabsorbed.level
        """The cosine above which this view's rows were grouped."""
        self.nested = 0 if unabsorbed.nested is None else int(unabsorbed.nested.sum()) // 2
        """How many pairs of rows above the level this view left apart as nested."""
        self.pairs = int(unabsorbed.adjacency.sum()) // 2 + self.nested
        """How many pairs of rows met above the level (the nested ones included)."""
        self.atoms = self.added + getattr(sae, "atoms", 0)
        """How many atoms this view and the views it reads added to the SAE's own latents."""

    @property
    def W_dec(self) -> torch.Tensor:
        return self.rows

    def input_scale(self, std: torch.Tensor) -> torch.Tensor:
        return self.sae.input_scale(std)

    def normalize_input(self, x: torch.Tensor, remember: bool = False):
        return self.sae.normalize_input(x, remember)

    def unfold(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """This view's code [..., d_sae] from the SAE's own code [..., h] (the views it reads
        unfold it first), so a caller that has the SAE's code need not run the SAE again."""
        inner = self.sae.unfold(feature_acts) if isinstance(self.sae, UnfoldedView) else None
        return self.with_atoms(feature_acts if inner is None else inner)

    def with_atoms(self, acts: torch.Tensor) -> torch.Tensor:
        """This view's code from the code of the latents it reads [..., d_sae - added]: those,
        then each atom's activation."""
        flat = acts.reshape(-1, self.share.shape[0])
        members = self.group >= 0
        parents = flat.new_zeros(flat.shape[0], self.added)
        parents.index_add_(1, self.group[members], flat[:, members] * self.share[members])
        hubbed = self.hub >= 0
        if hubbed.any() and self.fold:
            flat = flat.clone()
            flat[:, self.hub[hubbed]] = 0  # the atom has taken the hub's firings
        elif hubbed.any():
            parents[:, hubbed] = parents[:, hubbed] * (flat[:, self.hub[hubbed]] == 0)
        return torch.cat([flat, parents], -1).reshape(*acts.shape[:-1], -1)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        sae = self.sae
        while isinstance(sae, UnfoldedView):
            sae = sae.sae
        out = sae(x)
        code = self.unfold(out.feature_acts)
        return SimpleNamespace(feature_acts=code, reconstruction=out.reconstruction,
                               l0=(code != 0).sum(-1), k=None)  # fmt: skip


class FoldedView(nn.Module):
    """A view read with ``fold`` (``UnfoldedView``) without the columns it emptied: one latent
    per parent, so that the evaluator matches the parent to the latent that fires for it. Its
    code and rows are the view's, less those columns; the reconstruction is the SAE's own.
    ``dropped`` [view's d_sae] bool: more columns to leave out (``doubled_atoms``)."""

    def __init__(self, view: UnfoldedView, dropped: torch.Tensor | None = None):
        super().__init__()
        self.view = view
        left_out = view.folded if dropped is None else view.folded | dropped
        self.register_buffer("kept", (~left_out).nonzero().squeeze(-1))
        self.doubles = 0 if dropped is None else int((dropped & ~view.folded).sum())
        """How many atoms were left out as doubles (``doubled_atoms``)."""
        self.config = copy.copy(view.config)
        self.config.d_sae = len(self.kept)
        self.atoms, self.hubs, self.level = view.atoms, view.hubs, view.level

    @property
    def W_dec(self) -> torch.Tensor:
        return self.view.W_dec[self.kept]

    def input_scale(self, std: torch.Tensor) -> torch.Tensor:
        return self.view.input_scale(std)

    def normalize_input(self, x: torch.Tensor, remember: bool = False):
        return self.view.normalize_input(x, remember)

    def unfold(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """This view's code from the SAE's own code (``UnfoldedView.unfold``)."""
        return self.view.unfold(feature_acts)[..., self.kept]

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        out = self.view(x)
        code = out.feature_acts[..., self.kept]
        return SimpleNamespace(feature_acts=code, reconstruction=out.reconstruction,
                               l0=(code != 0).sum(-1), k=None)  # fmt: skip


@torch.no_grad()
def doubled_atoms(view: UnfoldedView, codes: torch.Tensor) -> torch.Tensor:
    """[view's d_sae] bool: the atoms that count a feature another latent of ``view`` counts
    already, from the SAE's own ``codes`` [n, h] on samples: the atom fires with that latent
    in at least half of its firings (nested, as ``nested_pairs`` says), is at least half of
    that latent's firings, and meets its row above chance.

    Each level's atoms fire wherever their members do, so an atom is always nested in the one
    above it. Where it is most of that one's firings too, the two stand for one feature: on
    the sixteen dictionaries of ``results/synthbench/missed/folded/`` an atom fired falsely
    while the feature it points nearest was on, and the latent matched to that feature fired
    too, 0.02 to 0.96 times per sample ("Hubs folded into their atoms"). The rarer of the two
    is the double (the later one on a tie)."""
    code = view.unfold(codes.float())
    count = (code != 0).sum(0)
    index = torch.arange(len(count))
    rarer = (count[:, None] < count[None, :]) | (
        (count[:, None] == count[None, :]) & (index[:, None] > index[None, :])
    )
    most = count[:, None] >= 0.5 * count[None, :]
    unit = torch.nn.functional.normalize(view.W_dec.detach().float(), dim=-1)
    near = (unit @ unit.T).abs() > chance_coherence(*unit.shape)
    double = nested_pairs(code) & rarer & most & near  # nested: the rarer inside the other
    atoms = index >= len(count) - view.atoms
    return atoms & double.any(-1)


def unfolded_by_levels(
    sae,
    unabsorbed: UnabsorbedDirections | None = None,
    held: bool = False,
    stars: bool = False,
    codes: torch.Tensor | None = None,
    hubs: bool = False,
    fold: bool = False,
) -> UnfoldedView:
    """``UnfoldedView`` of ``sae``, then of each view's new atoms among themselves, until they
    share no direction above chance. Sibling rows absorb every ancestor, not only their parent,
    so the atoms of sibling groups under one grandparent share the grandparent's direction: each
    level gives the chains one ancestor more, and the number of atoms falls until none group.
    ``held``: atoms group at the first level's cosine at every level (see ``unfolded_further``).
    ``stars``: a star group adds no atom at any level (``star_groups``). ``codes``: the SAE's
    own code [n, h] on samples; rows or atoms that fire nested are not grouped at any level
    (``nested_pairs``); with ``hubs`` too, at every level a group's parent's own row silences
    its atom where it fires (``group_hubs``), or with ``fold`` gives the atom its firings (the
    hubs' columns emptied: ``FoldedView`` drops them). An ``unabsorbed`` found without stars or
    codes is found again at its level with them."""
    if hubs and codes is None:
        raise ValueError("hubs are read from the SAE's codes on samples: pass codes")
    if (
        unabsorbed is None
        or (stars and unabsorbed.in_star is None)
        or (codes is not None and unabsorbed.nested is None)
    ):
        level = None if unabsorbed is None else unabsorbed.level
        unabsorbed = unabsorbed_directions(sae.W_dec, level, stars, codes)
    first = UnfoldedView(sae, unabsorbed, codes.float() if hubs else None, hubs and fold)
    return unfolded_further(first, held, stars, codes, hubs, fold)


def exclusive_views(
    sae,
    codes: torch.Tensor,
    level: float | None = None,
    hubs: bool = False,
    fold: bool = False,
    triangles: str | None = None,
    doubles: bool = False,
) -> list[UnfoldedView | FoldedView]:
    """Procedure D's reading of ``sae``: unfolded by levels with no group of latents that fire
    nested in ``codes`` (the SAE's own code [n, h] on samples); with ``hubs`` also that same
    grouping read again with each atom silent where its hub fires, and with ``fold`` (which
    reads that one too) once more with each hub folded into its atom (``FoldedView``), and with
    ``doubles`` (which reads all three) once more without the atoms that double another latent
    (``doubled_atoms``). The nested grouping of the decoder is found once for all (at
    ``level``, or chance; with ``triangles`` also the rows that meet in threes, as
    ``unabsorbed_directions`` says)."""
    nested = unabsorbed_directions(sae.W_dec, level, codes=codes, triangles=triangles)
    views = [unfolded_by_levels(sae, nested, codes=codes)]
    if hubs or fold or doubles:
        views.append(unfolded_by_levels(sae, nested, codes=codes, hubs=True))
    if fold or doubles:
        views.append(folded_view(sae, codes, nested))
    if doubles:
        folded = views[-1].view
        views.append(FoldedView(folded, doubled_atoms(folded, codes)))
    return views


def folded_view(
    sae,
    codes: torch.Tensor,
    nested: UnabsorbedDirections | None = None,
    level: float | None = None,
    triangles: str | None = None,
) -> FoldedView:
    """Procedure D's reading with each hub folded into its atom alone (``exclusive_views``'s
    last with ``fold``), without the readings before it: grouped as ``nested`` says, or found
    here from ``codes`` (at ``level``, with ``triangles``, as ``unabsorbed_directions`` says)."""
    if nested is None:
        nested = unabsorbed_directions(sae.W_dec, level, codes=codes, triangles=triangles)
    return FoldedView(unfolded_by_levels(sae, nested, codes=codes, hubs=True, fold=True))


def unfolded_further(
    view: UnfoldedView,
    held: bool = False,
    stars: bool = False,
    codes: torch.Tensor | None = None,
    hubs: bool = False,
    fold: bool = False,
) -> UnfoldedView:
    """``view`` with its newest atoms unfolded among themselves, level by level, until they
    share no direction above chance (``unfolded_by_levels`` after its first level). Each level's
    chance is that of its own number of atoms, unless ``held``: then the first level's, since the
    atoms are sums of the same rows, not fresh random directions (on the 16k world the relaxed
    level's last atoms, of one or two, match no feature and fire 0.8 times per sample).
    ``stars``: star groups of atoms add no atom (``star_groups``). ``codes``: the SAE's own code
    [n, h] on samples, unfolded at each level so that atoms that fire nested are not grouped;
    ``hubs``: and so that each level's groups' hubs are found (``group_hubs``), and with ``fold``
    folded into their atoms."""
    level = view_level(view) if held else None
    unfolded = None if codes is None else view.unfold(codes.float())  # one level on at a time
    while view.added >= 2:
        found = unabsorbed_among(view.W_dec, view.added, level, stars, unfolded)
        if not bool(found.grouped.any()):
            break
        view = UnfoldedView(view, found, unfolded if hubs else None, hubs and fold)
        unfolded = None if unfolded is None else view.with_atoms(unfolded)
    return view


def view_level(view: UnfoldedView) -> float:
    """The cosine at which the innermost view's rows were grouped (its SAE's first level)."""
    while isinstance(view.sae, UnfoldedView):
        view = view.sae
    return view.level
