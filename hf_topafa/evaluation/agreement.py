"""How far two dictionaries agree: the truth-free side of SAELens's MCC.

SAELens scores a dictionary against a world's true features by matching decoder rows to
features one to one on |cosine| (Hungarian) and averaging the matched cosines (its MCC). The
same matching between two SAEs trained alike from different seeds needs no truth: features that
are in the data come back from any seed, while what a seed makes up does not (Song et al. 2025,
"Mechanistic interpretability should prioritize feature consistency in SAEs"; Paulo & Belrose
2025). So agreement between seeds can judge a setting, such as TopK's k, on a language model's
activations, where no truth exists; ``scripts/synth_seed_agreement.py`` checks it against the
truth on the synthetic worlds. Every latent is matched, dead ones included: leaving them out
would have chosen too small a k on three worlds of five
(``scripts/agreement_live_latents.py``).
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


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="hf-topafa agreement",
        description="How far SAEs agree, dictionary to dictionary: decoder rows matched one to one "
        "on |cosine|, as SAELens's MCC matches them to true features. Trained alike from "
        "different seeds, SAEs that agree found what is in the data, not what a seed made up; "
        "compare settings (TopK's k, rules) by how far their seeds agree.",
    )
    parser.add_argument("saes", nargs="+", metavar="SAE",
                        help="two or more SAEs: run folders, Hub ids or FORMAT:SOURCE (as "
                             "`evaluate` takes them); every pair is matched")  # fmt: skip
    parser.add_argument("--from-start", action="store_true",
                        help="also match each run folder's SAE to the decoder it started from "
                             "(how far training moved it) and two fresh starts of its shape to "
                             "each other (what chance gives)")  # fmt: skip
    parser.add_argument("--json", default=None, help="also write the pairs here")
    return parser


def starting_decoder(sae, seed: int) -> torch.Tensor:
    """The decoder ``sae`` started from: its configuration, initialized from ``seed``."""
    from ..sae.modeling_sae import SparseAutoencoder

    fresh = SparseAutoencoder(sae.config)
    fresh.reset_parameters(seed=seed)
    return fresh.W_dec


def moved_from_start(name: str, sae, seed: int | None) -> dict:
    """How far training moved a run folder's SAE: its decoder against the one it started from,
    and two fresh starts of its shape against each other (chance)."""
    if seed is None:
        raise ValueError(f"{name} records no initialization seed (training_config.json): its "
                         "start is unknown; --from-start needs run folders written by train")  # fmt: skip
    start, other = starting_decoder(sae, seed), starting_decoder(sae, seed + 1)
    return {"sae": name, "seed": seed, "from_start": dictionary_agreement(sae.W_dec, start)["mcc"],
            "chance": dictionary_agreement(start, other)["mcc"]}  # fmt: skip


def cli_main(argv: list[str]) -> int:
    from ..helpers import write_json
    from ..interop.sae_loading import load_sae

    args = build_parser().parse_args(argv)
    if len(args.saes) < 2:
        raise ValueError(f"agreement needs at least two SAEs, got {len(args.saes)}")
    saes = {name: load_sae(name) for name in args.saes}
    seeds = {name: initialization_seed(name) for name in args.saes}
    starts = []
    for name in args.saes if args.from_start else ():
        starts.append(moved_from_start(name, saes[name], seeds[name]))
        print(f"{name}: matched |cos| to its own start {starts[-1]['from_start']:.3f} (seed "
              f"{seeds[name]}; two fresh starts of its shape: {starts[-1]['chance']:.3f})")  # fmt: skip
    pairs = []
    for i, first in enumerate(args.saes):
        for second in args.saes[i + 1 :]:
            pair = {"first": first, "second": second,
                    **dictionary_agreement(saes[first].W_dec, saes[second].W_dec)}  # fmt: skip
            shared = seeds[first] is not None and seeds[first] == seeds[second]
            pair["same_initialization_seed"] = shared
            print(f"{first} ~ {second}: matched |cos| {pair['mcc']:.3f}; latents above 0.9 "
                  f"{pair['above_0.9']:.1%}, above 0.7 {pair['above_0.7']:.1%}"
                  + (f" (both started from seed {seeds[first]}: the agreement includes their "
                     "common start)" if shared else ""))  # fmt: skip
            pairs.append(pair)
    if args.json:
        write_json(args.json, {"pairs": pairs, **({"starts": starts} if starts else {})})
    return 0


def initialization_seed(name: str) -> int | None:
    """The seed a run folder's SAE was initialized from (its training_config.json), or None
    where that is not recorded (Hub ids, foreign formats). Short runs stay near their start, so
    two SAEs from one seed agree by their common start as well as by the data."""
    import json
    from pathlib import Path

    path = Path(name) / "training_config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("optim", {}).get("seed")
