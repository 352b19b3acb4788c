"""How far two dictionaries agree: the truth-free side of SAELens's MCC.

SAELens scores a dictionary against a world's true features by matching decoder rows to
features one to one on |cosine| (Hungarian) and averaging the matched cosines (its MCC). The
same matching between two SAEs trained alike from different seeds needs no truth: features that
are in the data come back from any seed, while what a seed makes up does not (Song et al. 2025,
"Mechanistic interpretability should prioritize feature consistency in SAEs"; Paulo & Belrose
2025). So agreement between seeds can judge a setting, such as TopK's k, on a language model's
activations, where no truth exists; ``scripts/synth_seed_agreement.py`` checks it against the
truth on the synthetic worlds.
"""

from __future__ import annotations

import torch


def matched_cosines(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``a`` matched one to one to rows of ``b`` on |cosine| (Hungarian, maximizing the
    sum): (for each row of ``a``, its row of ``b`` or -1 where ``b`` has fewer rows; its |cosine|
    there, 0 where unmatched)."""
    from scipy.optimize import linear_sum_assignment

    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two matrices of rows in one space, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")  # fmt: skip
    a_unit = torch.nn.functional.normalize(a.detach().float(), dim=-1)
    b_unit = torch.nn.functional.normalize(b.detach().float(), dim=-1)
    cos = (a_unit @ b_unit.T).abs()
    rows, cols = (torch.as_tensor(i) for i in linear_sum_assignment(cos.numpy(), maximize=True))
    match = torch.full((a.shape[0],), -1, dtype=torch.long)
    match[rows] = cols
    similarity = torch.zeros(a.shape[0])
    similarity[rows] = cos[rows, cols]
    return match, similarity


def dictionary_agreement(W_a: torch.Tensor, W_b: torch.Tensor) -> dict:
    """Two decoders (rows = latents) matched one to one: ``mcc``, the mean matched |cosine|
    (SAELens's MCC with the second dictionary in the truth's place), and the share of latents
    whose match is near-identical (|cos| > 0.9) or clearly shared (> 0.7)."""
    _, similarity = matched_cosines(W_a, W_b)
    n = min(W_a.shape[0], W_b.shape[0])  # unmatched rows are not counted in the mean
    kept = similarity.sort(descending=True).values[:n]
    return {"mcc": float(kept.mean()), "above_0.9": float((kept > 0.9).float().mean()),
            "above_0.7": float((kept > 0.7).float().mean())}  # fmt: skip
