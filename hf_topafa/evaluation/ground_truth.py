"""Scoring an SAE against a synthetic world's known features.

SAELens's own ``eval_sae_on_synthetic_data`` gives the field's numbers (MCC, uniqueness, per-latent
precision / recall / F1, explained variance, shrinkage, dead latents, L0). It calls
``sae.encode`` / ``sae.decode`` and reads ``sae.W_dec``; ``SAELensView`` gives it our SAE with a
reconstruction in the input's own space, whatever the SAE's input normalization.

What only this package measures is added beside it:
- the paper's approximation on the truth: ‖x − bias‖ against ‖f_true‖ (world bias, unit features);
- the SAE's decoder-scaled code norm ‖f̃‖ (input scale, without b_dec) against ‖f_true‖;
- per-sample L0 (or top-AFA's k) against the true per-sample L0: correlation and ratio quantiles;
- the true L0 over the ``d_sae`` most frequent features, the most a width-``d_sae`` SAE can find.

Samples come from a stored truth set (a synthetic cache written ``with_truth``), so that every SAE
of a comparison is scored on the same rows, or are drawn fresh from the world.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..sae.absorption import (
    NESTED_SAMPLES,
    UnfoldedView,
    exclusive_views,
    folded_view,
    unabsorbed_directions,
    unfolded_by_levels,
    unfolded_further,
)
from ..sae.afa import quantiles
from .agreement import matched_cosines
from .unfolded_l0 import EXCLUSIVE_LABEL, EXCLUSIVE_READINGS


class SAELensView(nn.Module):
    """Our SAE as SAELens's evaluator sees one: ``encode``, ``decode`` in x's space, ``W_dec``.

    ``decode`` must receive the very tensor the last ``encode`` returned (SAELens's evaluator
    always does); its reconstruction is the SAE's own ``SAEOutput.reconstruction``.
    """

    def __init__(self, sae, directions: torch.Tensor | None = None):
        super().__init__()
        self.sae = sae
        self.directions = directions
        self.last = None

    @property
    def W_dec(self) -> torch.Tensor:
        """The decoder rows, or the feature directions given in their place (what the evaluator
        matches to the true features; the reconstruction stays the SAE's)."""
        return self.sae.W_dec if self.directions is None else self.directions

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sae(x)
        self.last = (out.feature_acts, out.reconstruction)
        return out.feature_acts

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        if self.last is None or f is not self.last[0]:
            raise ValueError("SAELensView.decode takes the activations its last encode returned")
        return self.last[1]


class TruthSet:
    """Stored samples' true codes, replayed in order as SAELens's activation generator would."""

    def __init__(self, indices: torch.Tensor, values: torch.Tensor, num_samples: int, width: int):
        order = torch.argsort(indices[:, 0].long(), stable=True)
        self.indices, self.values = indices[order].long(), values[order]
        self.num_samples, self.width = num_samples, width
        self.row_starts = torch.searchsorted(
            self.indices[:, 0].contiguous(), torch.arange(num_samples + 1)
        )
        self.cursor = 0

    @classmethod
    def drawn_from(cls, world, num_samples: int, seed: int = 0, batch: int = 1024) -> TruthSet:
        """Fresh samples of ``world``, seeded (SAELens samples from torch's global generator)."""
        from ..data.synthetic_cache import sparse_code

        torch.manual_seed(seed)
        parts = [
            sparse_code(world.activation_generator.sample(min(batch, num_samples - start)), start)
            for start in range(0, num_samples, batch)
        ]
        indices, values = (torch.cat(side) for side in zip(*parts, strict=True))
        return cls(indices, values, num_samples, world.cfg.num_features)

    @classmethod
    def from_cache(cls, cache, width: int, limit: int | None = None) -> TruthSet:
        """The truth stored in a synthetic activation cache written with ``with_truth``."""
        from safetensors import safe_open

        idx, vals, offset = [], [], 0
        for shard, path in zip(cache.manifest["shards"], cache.shard_paths, strict=True):
            with safe_open(str(path), framework="pt") as f:
                if "truth_indices" not in f.keys():
                    raise ValueError(f"{cache.path} holds no true codes (write it with_truth)")
                i = f.get_tensor("truth_indices").long()
                idx.append(torch.stack([i[:, 0] + offset, i[:, 1]], 1))
                vals.append(f.get_tensor("truth_values"))
            offset += shard["num_tokens"]
        total = offset if limit is None else min(limit, offset)
        indices, values = torch.cat(idx), torch.cat(vals)
        keep = indices[:, 0] < total
        return cls(indices[keep], values[keep], total, width)

    def firings(self, num_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature, magnitude) of every firing in the first ``num_samples`` samples (default:
        all)."""
        stop = self.row_starts[self.num_samples if num_samples is None else num_samples].item()
        return self.indices[:stop, 1], self.values[:stop]

    def feature_counts(self, num_samples: int | None = None) -> torch.Tensor:
        """How often each feature fires in the first ``num_samples`` samples (default: all)."""
        return torch.bincount(self.firings(num_samples)[0], minlength=self.width)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Dense true codes of samples start..stop-1."""
        a, b = self.row_starts[start].item(), self.row_starts[stop].item()
        dense = torch.zeros(stop - start, self.width)
        dense[self.indices[a:b, 0] - start, self.indices[a:b, 1]] = self.values[a:b]
        return dense

    def sample(self, n: int) -> torch.Tensor:
        """The next ``n`` stored codes (the activation-generator interface SAELens calls)."""
        if self.cursor + n > self.num_samples:
            raise ValueError(f"the truth set holds {self.num_samples} samples; asked past its end")
        out = self.rows(self.cursor, self.cursor + n)
        self.cursor += n
        return out


def true_l0_top_width(width: int, num_samples: int, truth: TruthSet) -> float:
    """Mean true L0 counting only the ``width`` features that fire most often in these samples.

    Measured, not read off the world's base probabilities: the hierarchy gates children by their
    parents, so the configured probabilities are not the firing rates.
    """
    counts = truth.feature_counts(num_samples)
    return float(counts[most_frequent(counts, width)].sum()) / num_samples


def most_frequent(counts: torch.Tensor, width: int) -> torch.Tensor:
    """A bool mask [features] of the ``width`` features with the largest firing ``counts``: the
    most a dictionary of that width can hold."""
    held = torch.zeros(counts.shape[-1], dtype=torch.bool)
    held[torch.topk(counts, min(width, counts.shape[-1])).indices] = True
    return held


@torch.no_grad()
def oracle_sae(
    world,
    truth: TruthSet | None = None,
    width: int | None = None,
    encoder: str = "matched",
    activation: str = "relu",
    k: int | None = None,
):
    """An SAE whose dictionary is the world's own features (decoder rows their unit vectors, b_dec
    the world's bias): all of them, or the ``width`` that fire most often in ``truth``. Read by a
    selection rule (``activation``), it shows what that rule does on a perfect dictionary, so that
    a rule's failure can be told from an unfinished dictionary's.

    ``encoder``: "matched" reads each feature by its own direction (encoder = decoder); "whitened"
    by C⁻¹d / dᵀC⁻¹d, C the second moment of x − bias over ``truth``'s samples: the linear
    reading with the least interference (Gaussian model), still reading a lone feature at its
    magnitude; "prior" is "matched" with each feature's prior in its encoder bias, the shift of
    the Bayes level under Gaussian interference: −(σ²/a)·ln((1 − p)/p), p its firing rate in
    ``truth``, a the mean true magnitude, σ² = mean ‖x − bias‖² / d."""
    from ..sae.configuration_sae import SAEConfig
    from ..sae.modeling_sae import SparseAutoencoder

    features = world.feature_dict.feature_vectors.float()
    width = features.shape[0] if width is None else width
    if encoder not in ("matched", "whitened", "prior"):
        raise ValueError(f"oracle encoder must be matched, whitened or prior, not {encoder!r}")
    if not 0 < width <= features.shape[0]:
        raise ValueError(f"oracle width must be 1..{features.shape[0]} (the world's features)")
    if truth is None and (width < features.shape[0] or encoder != "matched"):
        raise ValueError("an oracle narrower than the world, or not matched, needs a truth set")
    if truth is not None:
        counts = truth.feature_counts()
        held = most_frequent(counts, width)
        features = features[held]
    rows = nn.functional.normalize(features, dim=-1)
    config = SAEConfig(d_in=rows.shape[1], d_sae=width, activation=activation, k=k,
                       input_normalization="none", afa_coef=0.0,
                       encoder_bias=encoder == "prior")  # fmt: skip
    sae = SparseAutoencoder(config)
    bias = world.feature_dict.bias.float()
    sae.W_dec.data.copy_(rows)
    sae.b_dec.data.copy_(bias)
    sae.W_enc.data.copy_(rows.T)
    if encoder == "matched":
        return sae.eval()
    z = world.feature_dict(truth.rows(0, min(truth.num_samples, 20000))).float() - bias
    if encoder == "prior":
        p = (counts[held].float() / truth.num_samples).clamp(1e-6, 1 - 1e-6)
        noise = float((z**2).sum(-1).mean()) / z.shape[-1]
        magnitude = float(truth.firings()[1].float().mean())
        sae.b_enc.data.copy_(-(noise / magnitude) * torch.log((1 - p) / p))
    else:
        solved = torch.linalg.solve(z.T @ z / z.shape[0], rows.T)  # C⁻¹d per column
        sae.W_enc.data.copy_(solved / (rows.T * solved).sum(0, keepdim=True))
    return sae.eval()


def kurtosis_reading_of_truth(truth: TruthSet, width: int) -> dict:
    """What ``kfree.kurtosis_count`` reads on a perfect dictionary of the ``width`` most frequent
    features, from the true codes alone, taken apart.

    The AFA's energy counts every feature; the fourth-moment excess only the held ones. So the
    reading is (E Σ a²)² / E Σ_held a⁴ = held L0 · outside² · m₂² / m₄: ``outside`` the energy of
    all features over the held ones' (≥ 1: the features a width cannot hold raise the count),
    m₂² / m₄ the held magnitudes' spread (≤ 1, 1 only when all are equal: it lowers it)."""
    features, values = truth.firings()
    values = values.double()
    held = most_frequent(truth.feature_counts(), width)[features]
    n, kept = truth.num_samples, values[held]
    held_l0 = kept.numel() / n
    energy, held_energy, held_fourth = (v / n for v in (values.pow(2).sum(), kept.pow(2).sum(),
                                                        kept.pow(4).sum()))  # fmt: skip
    spread = float((held_energy / held_l0) ** 2 / (held_fourth / held_l0))
    return {"true_l0": values.numel() / n, "held_l0": held_l0,
            "outside_energy_squared": float((energy / held_energy) ** 2),
            "magnitude_spread": spread, "predicted_reading": float(energy**2 / held_fourth)}  # fmt: skip


@torch.no_grad()
def firings_by_latent(sae, world, truth: TruthSet, match: torch.Tensor, samples=None, batch=4096):
    """(true [latents], false [latents]): over the first ``samples`` stored samples (all by
    default), how often each kept latent's matched feature (``match``, one per latent) was on
    and how often off."""
    samples = truth.num_samples if samples is None else min(samples, truth.num_samples)
    true, false = torch.zeros(len(match)), torch.zeros(len(match))
    for start in range(0, samples, batch):
        codes = truth.rows(start, min(samples, start + batch))
        kept = sae(world.feature_dict(codes)).feature_acts != 0
        on = codes[:, match] > 0
        true += (kept & on).sum(0)
        false += (kept & ~on).sum(0)
    return true, false


@torch.no_grad()
def matched_features(W_dec: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """For each latent (row of ``W_dec``), its true feature under one-to-one matching on |cosine|
    between decoder rows and true feature vectors, as SAELens's MCC matches them."""
    return matched_cosines(W_dec, features)[0]


def nearest_features(W_dec: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """For each latent (row of ``W_dec``), the true feature its row points nearest (|cosine|),
    whichever one the one-to-one matching gives it."""
    unit = torch.nn.functional.normalize
    cos = unit(W_dec.detach().float(), dim=-1) @ unit(features.float(), dim=-1).T
    return cos.abs().argmax(-1)


def hierarchy_parents(world) -> torch.Tensor:
    """Each feature's parent in the world's hierarchy, as a long tensor [features]: -1 for roots
    and for features outside the hierarchy. A world without a hierarchy gives all -1."""
    parents = torch.full((world.cfg.num_features,), -1, dtype=torch.long)
    for node, parent in hierarchy_nodes(world):
        if parent is not None:
            parents[node.feature_index] = parent.feature_index
    return parents


def hierarchy_nodes(world):
    """Each node of the world's hierarchy that is a feature, with the nearest node above it that
    is one (None for a root); a node that is no feature passes its own parent down."""
    hierarchy = getattr(world, "hierarchy", None)
    stack = [(root, None) for root in (hierarchy.roots if hierarchy is not None else [])]
    while stack:
        node, parent = stack.pop()
        if node.feature_index is not None:
            yield node, parent
        below = node if node.feature_index is not None else parent
        stack.extend((child, below) for child in node.children)


def ancestor_steps(parents: torch.Tensor):
    """Each feature's ancestors one level up at a time: per step a long tensor [features] with
    the ancestor that many levels above the feature, -1 where there is none; ends when no
    feature has one."""
    above = parents.clone()
    while (above >= 0).any():
        yield above
        above = torch.where(above >= 0, parents[above.clamp_min(0)], above)


def hierarchy_depths(parents: torch.Tensor) -> torch.Tensor:
    """Each feature's depth below its root (0 for roots and features outside the hierarchy)."""
    depth = torch.zeros_like(parents)
    for above in ancestor_steps(parents):
        depth += above >= 0
    return depth


def active_chains(codes: torch.Tensor, parents: torch.Tensor, held: torch.Tensor | None = None):
    """Per sample, how many active chains of the hierarchy the code holds: its active features
    whose parent is not active (each chain root -> child -> ... counts once).

    ``codes`` [n, features] (true codes), ``parents`` from ``hierarchy_parents``, ``held`` an
    optional bool mask [features] of the features a dictionary can hold (e.g. the width's most
    frequent): then only held features count, and a parent outside it does not join a chain.
    The true L0 counts every level of a chain; a dictionary may learn a chain as one direction,
    so this is the sparsest count a code of the same samples can reach without splitting them.
    """
    on = codes > 0
    if held is None:
        held = torch.ones(codes.shape[-1], dtype=torch.bool)
    has_parent = parents >= 0
    parent_on = on[:, parents.clamp_min(0)] & (has_parent & held[parents.clamp_min(0)])
    return (on & ~parent_on & held).sum(-1)


def relative_on(codes: torch.Tensor, parents: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """[n, latents]: whether the parent or a child of each latent's matched feature is active."""
    on = codes > 0
    child = parents >= 0
    children_on = torch.zeros_like(on, dtype=torch.int32)
    children_on.index_add_(1, parents[child], on[:, child].int())
    parent_on = on[:, parents.clamp_min(0)] & child
    return (parent_on | (children_on > 0))[:, match]


@torch.no_grad()
def score_against_truth(
    sae,
    world,
    truth: TruthSet,
    num_samples: int | None = None,
    batch_size: int = 4096,
    directions: torch.Tensor | None = None,
) -> dict:
    """SAELens's synthetic-data metrics plus this package's AFA and per-sample-L0 checks.
    ``directions`` [h, d]: read each latent as pointing there instead of along its decoder row
    (e.g. ``absorption.unabsorbed_directions``); the code and reconstruction stay the SAE's."""
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    n = truth.num_samples if num_samples is None else min(num_samples, truth.num_samples)
    sae.eval()
    truth.cursor = 0
    result = eval_sae_on_synthetic_data(
        SAELensView(sae, directions),
        world.feature_dict,
        truth,
        num_samples=n,
        batch_size=batch_size,
    )
    row = {
        "true_l0": result.true_l0,
        "l0": result.sae_l0,
        "dead": result.dead_latents,
        "shrinkage": result.shrinkage,
        "explained_variance": result.explained_variance,
        "mcc": result.mcc,
        "uniqueness": result.uniqueness,
        "precision": result.classification.precision,
        "recall": result.classification.recall,
        "f1": result.classification.f1_score,
        "true_l0_top_width": true_l0_top_width(sae.config.d_sae, n, truth),
    }
    per_sample = per_sample_truth(sae, world, truth, n, batch_size)
    row.update(summarize_per_sample(per_sample))
    return {"row": row, "per_sample": per_sample}


@torch.no_grad()
def per_sample_truth(sae, world, truth: TruthSet, n: int, batch_size: int) -> dict:
    """Per-sample norms and counts: ‖f_true‖, ‖x − bias‖, the SAE's ‖f̃‖, true and SAE L0."""
    keys = ("true_norm", "z_norm", "f_norm", "true_l0", "l0", "k")
    parts: dict[str, list] = {key: [] for key in keys}
    row_norms = torch.linalg.vector_norm(sae.W_dec, dim=-1)
    for start in range(0, n, batch_size):
        codes = truth.rows(start, min(n, start + batch_size))
        x = world.feature_dict(codes)
        out = sae(x)
        scale = sae.input_scale(sae.normalize_input(x)[2])  # back to the input's own scale
        parts["true_norm"].append(torch.linalg.vector_norm(codes, dim=-1))
        parts["z_norm"].append(torch.linalg.vector_norm(x - world.feature_dict.bias, dim=-1))
        f_norm = torch.linalg.vector_norm(out.feature_acts * row_norms, dim=-1)
        parts["f_norm"].append(f_norm * scale.reshape(-1))
        parts["true_l0"].append((codes != 0).sum(-1).float())
        parts["l0"].append(out.l0.float())
        parts["k"].append((out.k if out.k is not None else out.l0).float())
    return {key: torch.cat(value) for key, value in parts.items()}


def correlation(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Pearson correlation, or None when either side is constant."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return None if denom == 0 else float((a * b).sum()) / denom


def afa_relative_error(true_norm: torch.Tensor, z_norm: torch.Tensor) -> torch.Tensor:
    """|‖x − bias‖ / ‖f_true‖ − 1| per sample with a nonzero code: the paper's approximation
    checked on the truth."""
    nonempty = true_norm > 0
    return (z_norm[nonempty] / true_norm[nonempty] - 1).abs()


def summarize_per_sample(p: dict) -> dict:
    """The per-sample figures of a summary row."""
    nonempty = p["true_norm"] > 0
    afa_err = afa_relative_error(p["true_norm"], p["z_norm"])
    f_ratio = p["f_norm"][nonempty] / p["true_norm"][nonempty]
    l0_ratio = p["l0"][p["true_l0"] > 0] / p["true_l0"][p["true_l0"] > 0]
    return {
        "l0_corr": correlation(p["l0"], p["true_l0"]),
        "k_corr": correlation(p["k"], p["true_l0"]),
        "l0_ratio_quantiles": quantiles(l0_ratio, (0.05, 0.5, 0.95)),
        "afa_norm_rel_err_median": quantiles(afa_err, (0.5,))[0],
        "f_norm_ratio_quantiles": quantiles(f_ratio, (0.05, 0.5, 0.95)),
    }


# --------------------------------------------------------------------------------------------
# hf-topafa evaluate SAE --synthetic WORLD


def truth_for(spec: str, num_samples: int, seed: int = 1):
    """(world, truth set, where the samples came from) for ``--synthetic``: a synthetic cache
    written by ``harvest --synthetic`` (its stored codes) or a world (fresh samples)."""
    from ..data.harvest import ActivationCache
    from ..data.synthetic import load_world
    from ..data.synthetic_cache import is_synthetic_cache, world_of_cache
    from ..names import MANIFEST

    folder = Path(spec).expanduser()
    if (folder / MANIFEST).is_file():
        cache = ActivationCache(folder)
        if not is_synthetic_cache(cache.manifest):
            raise ValueError(f"{spec} is an activation cache of a language model, not of a world")
        world = world_of_cache(cache.manifest)
        truth = TruthSet.from_cache(cache, world.cfg.num_features, limit=num_samples)
        return world, truth, f"{truth.num_samples} samples stored in {folder}"
    world = load_world(spec)
    truth = TruthSet.drawn_from(world, num_samples, seed=seed)
    return world, truth, f"{num_samples} fresh samples of {spec} (seed {seed})"


def report_lines(label: str, row: dict, source: str) -> list[str]:
    """The printed summary of one SAE scored against the truth."""

    def fmt(value):
        return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else value

    return [
        f"{label} against the truth ({source})",
        f"  L0 {fmt(row['l0'])} (true {fmt(row['true_l0'])}; over the {fmt(row['d_sae'])} most "
        f"frequent features {fmt(row['true_l0_top_width'])}); dead {row['dead']}",
        f"  F1 {fmt(row['f1'])}, precision {fmt(row['precision'])}, recall {fmt(row['recall'])}, "
        f"MCC {fmt(row['mcc'])}, uniqueness {fmt(row['uniqueness'])}",
        f"  explained variance {fmt(row['explained_variance'])}, shrinkage {fmt(row['shrinkage'])}",
        f"  per-sample L0 vs true: correlation {fmt(row['l0_corr'])}, ratio 5/50/95% "
        + " / ".join(fmt(v) for v in row["l0_ratio_quantiles"]),
        f"  AFA: median |‖x − bias‖/‖f_true‖ − 1| = {fmt(row['afa_norm_rel_err_median'])}; SAE "
        "‖f̃‖/‖f_true‖ 5/50/95% " + " / ".join(fmt(v) for v in row["f_norm_ratio_quantiles"]),
    ]


@torch.no_grad()
def codes_of(sae, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """The SAE's own code [n, h] of activations ``x`` [n, d_in], in batches."""
    sae.eval()
    return torch.cat(
        [sae(x[i : i + batch_size]).feature_acts for i in range(0, len(x), batch_size)]
    )


def firing_codes(sae, world, num_samples: int = NESTED_SAMPLES, seed: int = 2) -> torch.Tensor:
    """The SAE's code of fresh samples of ``world``, seeded apart from the ones it is scored on
    (``truth_for`` draws with seed 1), for the exclusive reading."""
    truth = TruthSet.drawn_from(world, num_samples, seed=seed)
    parts = []
    for start in range(0, num_samples, 4096):  # dense true codes are samples x features wide
        with torch.no_grad():
            x = world.feature_dict(truth.rows(start, min(start + 4096, num_samples)))
        parts.append(codes_of(sae, x))
    return torch.cat(parts)


TRIANGLE_LABELS = {None: "", "joined": ", triangles", "lone": ", lone triangles"}


def readings_of(
    sae,
    unabsorbed=None,
    unfold: bool = False,
    stars: bool = False,
    codes=None,
    hubs: bool = False,
    fold: bool = False,
    triangles: str | None = None,
    doubles: bool = False,
    lone: bool = False,
):
    """(label suffix, the SAE or a view of it, directions to match) per reading: the SAE as
    trained; given ``unabsorbed`` (``absorption.unabsorbed_directions`` of its decoder), also
    along those own directions, and with ``unfold`` with its absorbed parents unfolded, one level
    (``absorption.UnfoldedView``) and by levels (``absorption.unfolded_by_levels``); with
    ``stars`` also by levels with no atom for a star group (``absorption.star_groups``), and
    given ``codes`` (the SAE's own code on samples not scored) by levels with no group of latents
    that fire nested (``absorption.nested_pairs``), both at ``unabsorbed``'s level; with
    ``hubs`` that reading once more, each atom silent where its parent's own row fires
    (``absorption.group_hubs``), and with ``fold`` once more with that row folded into the atom
    (``absorption.FoldedView``), and with ``doubles`` once more without the atoms that double
    another latent (``absorption.doubled_atoms``); ``triangles`` ("joined" or "lone"): those
    exclusive readings with rows that meet in threes grouped too
    (``absorption.unabsorbed_directions``, labelled so); ``lone``: given ``codes``, one reading
    more, folded with lone triangles grouped. ``evaluate --unfold`` and ``synth_reread.py`` read
    so."""
    views = [("", sae, None)]
    if unabsorbed is not None:
        views.append((", unabsorbed", sae, unabsorbed.directions))
    if unfold:
        once = UnfoldedView(sae, unabsorbed)
        views.append((", unfolded", once, None))
        views.append((", unfolded by levels", unfolded_further(once), None))
    if unfold and stars:
        stars_view = unfolded_by_levels(sae, unabsorbed, stars=True)
        views.append((", unfolded by levels, stars", stars_view, None))
    if unfold and codes is not None:
        level = None if unabsorbed is None else unabsorbed.level
        tails = [EXCLUSIVE_READINGS[name][1] for name in ("exclusive", "hubs", "folded", "doubles")]
        suffixes = [EXCLUSIVE_LABEL + tail + TRIANGLE_LABELS[triangles] for tail in tails]
        found = exclusive_views(sae, codes, level, hubs, fold, triangles, doubles)
        views += [(suffix, view, None) for suffix, view in zip(suffixes, found, strict=False)]
        if lone:
            view = folded_view(sae, codes, level=level, triangles="lone")
            views.append((EXCLUSIVE_LABEL + EXCLUSIVE_READINGS["lone"][1], view, None))
    return views


def run_command(cfg, outputs, loaded) -> int:
    """``hf-topafa evaluate SAE ... --synthetic WORLD``: SAELens's synthetic-data metrics and the
    AFA checks of each SAE (``loaded``: (SAE, label) pairs as ``evaluate.load_sae`` gives them),
    printed, and written with ``--json`` / ``--plots``."""
    from ..helpers import write_json
    from .plots import save_ground_truth_plot

    world, truth, source = truth_for(outputs.synthetic, cfg.max_tokens)
    results = []
    for sae, label in loaded:
        if sae.config.d_in != world.cfg.hidden_dim:
            raise ValueError(
                f"{label} reads {sae.config.d_in}-dim inputs; the world has hidden_dim "
                f"{world.cfg.hidden_dim}"
            )
        found = codes = None
        if outputs.unfold:
            found, codes = unabsorbed_directions(sae.W_dec), firing_codes(sae, world)
        unfold = outputs.unfold
        for reading, view, directions in readings_of(sae, found, unfold, unfold, codes, unfold,
                                                     unfold, doubles=unfold, lone=unfold):  # fmt: skip
            scored = score_against_truth(view, world, truth, directions=directions)
            name = label + reading
            row = {"sae": name, "d_sae": view.config.d_sae, **scored["row"]}
            print("\n".join(report_lines(name, row, source)))
            if outputs.plots is not None:
                slug = reading.strip(", ").replace(" ", "_")
                stem = f"ground_truth_{Path(label).name}" + (f"_{slug}" if slug else "")
                path = Path(outputs.plots) / f"{stem}.png"
                save_ground_truth_plot(scored["per_sample"], path, f"{name} against {source}")
                print(f"  wrote {path}")
            results.append(row)
    if outputs.json is not None:
        payload = results[0] if len(results) == 1 else {"results": results}
        print(f"wrote {write_json(outputs.json, {**payload, 'synthetic': source})}")
    return 0
