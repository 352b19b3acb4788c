"""An SAE's per-token L0 with the ancestors its rows absorbed counted as features of their own
(``hf-topafa evaluate --unfold``), in seven readings of ``sae.absorption``: unfolded by levels,
without star groups' atoms, without groups of latents that fire nested, and that again with each
atom silent where its group's parent's own row fires (hubs), with that row folded into the atom
instead (one latent per parent), folded without the atoms that double another latent, and
folded with the rows that meet no other but close a triangle grouped too (lone triangles).

The last five need the SAE's own firing to tell nested latents apart and to find the hubs, so
they are built on the first ``NESTED_SAMPLES`` tokens, and those tokens are counted once they
are: every token is counted by every reading, in order.
"""

from __future__ import annotations

import torch

from ..sae.absorption import (
    NESTED_SAMPLES,
    UnfoldedView,
    exclusive_views,
    folded_view,
    unfolded_by_levels,
)
from .eval_report import quantiles

EXCLUSIVE_LABEL = ", unfolded by levels, exclusive"
"""What a reading's label says after its rule for procedure D's reading (no nested groups)."""

EXCLUSIVE_READINGS = {
    "exclusive": ("_exclusive", ""),
    "hubs": ("_exclusive_hubs", ", hubs"),
    "folded": ("_exclusive_hubs_folded", ", hubs folded"),
    "doubles": ("_exclusive_hubs_folded_doubles", ", hubs folded, doubles dropped"),
    "lone": ("_exclusive_hubs_folded_lone", ", hubs folded, lone triangles"),
}
"""The readings without nested groups, by name (``choose-k --reading``): the suffix of their
sparsity fields and what their label adds after "unfolded by levels, exclusive" (as
``ground_truth.readings_of`` labels them on synthetic data)."""


def l0_of(view: UnfoldedView, codes: torch.Tensor) -> torch.Tensor:
    """Per token, how many of the view's latents fire given the SAE's own ``codes``."""
    return (view.unfold(codes) != 0).sum(-1).float().cpu()


class UnfoldedL0:
    """The seven readings' per-token L0, accumulated batch by batch (``update``)."""

    def __init__(self, sae):
        self.sae = sae
        self.views = {"": unfolded_by_levels(sae).eval(),
                      "_stars": unfolded_by_levels(sae, stars=True).eval()}  # fmt: skip
        self.per_token: dict[str, list[torch.Tensor]] = {
            name: [] for name in ("", "_stars", *(f for f, _ in EXCLUSIVE_READINGS.values()))
        }
        self.early_firing: list[torch.Tensor] = []
        self.nested_tokens = 0

    def update(self, codes: torch.Tensor) -> None:
        """Count one batch of the SAE's codes [N, h]."""
        for name, view in self.views.items():
            self.per_token[name].append(l0_of(view, codes))
        if "_exclusive" not in self.views:
            self.early_firing.append(codes != 0)
            if sum(len(part) for part in self.early_firing) >= NESTED_SAMPLES:
                self.build_exclusive()

    def build_exclusive(self) -> None:
        """Group without nested pairs, and find the groups' hubs, as read on the tokens seen so
        far (up to ``NESTED_SAMPLES``; only which latents fire matters), and count those
        tokens."""
        fired = torch.cat(self.early_firing).float()
        self.early_firing = []
        self.nested_tokens = min(len(fired), NESTED_SAMPLES)
        nesting = fired[:NESTED_SAMPLES]
        views = exclusive_views(self.sae, nesting, doubles=True)
        views.append(folded_view(self.sae, nesting, triangles="lone"))
        names = [suffix for suffix, _ in EXCLUSIVE_READINGS.values()]
        for name, view in zip(names, views, strict=True):
            self.views[name] = view.eval()
            self.per_token[name].append(l0_of(view, fired))

    def sparsity(self) -> dict:
        """Per reading its atoms and its L0's mean and quantiles, and the tokens nesting was
        read on (a report's sparsity fields)."""
        if "_exclusive" not in self.views:  # fewer tokens than NESTED_SAMPLES
            self.build_exclusive()
        fields = {}
        for name, view in self.views.items():
            l0 = torch.cat(self.per_token[name])
            fields[f"atoms_by_levels{name}"] = view.atoms
            fields[f"l0_unfolded_by_levels{name}_mean"] = float(l0.mean())
            fields[f"l0_unfolded_by_levels{name}_quantiles"] = quantiles(l0)
        fields["hubs_by_levels_exclusive"] = self.views["_exclusive_hubs"].hubs
        fields["hubs_by_levels_exclusive_folded"] = self.views["_exclusive_hubs_folded"].hubs
        fields["doubles_by_levels_exclusive"] = self.views["_exclusive_hubs_folded_doubles"].doubles
        fields["nested_tokens"] = self.nested_tokens
        return fields
