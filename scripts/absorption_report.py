"""How much of a trained SAE's decoder has absorbed a shared direction, read from the decoder alone.

No data and no truth: rows whose cosine with another row exceeds what random directions reach by
chance (``absorption.chance_coherence``) share a direction; on the synthetic worlds that direction
is an ancestor's in the hierarchy for 59–88% of plain TopK's changed rows
(``synth_reread.py --unfold``).
Prints the level, how many rows have such neighbours, the groups they form (one parent atom
each), the group sizes, how much of each changed row the shared direction is, and how many atoms
unfolding by levels adds (``absorption.unfolded_by_levels``: the ancestors the atoms share too),
how many of the first level's groups are stars (``absorption.star_groups``: one row every other
member meets, the others meeting none of each other) and how many atoms unfolding by levels adds
without them.

    python scripts/absorption_report.py runs/smollm2-topafa runs/smollm2-topk32 --json out.json
"""

from __future__ import annotations

import argparse
import json


def absorption_report(sae) -> dict:
    """The decoder's absorption figures (see the module docstring)."""
    import torch

    from hf_topafa.sae.absorption import (
        parent_atoms,
        star_groups,
        unabsorbed_directions,
        unfolded_by_levels,
    )

    found = unabsorbed_directions(sae.W_dec)
    atoms = parent_atoms(found)
    changed = found.changed
    sizes = torch.bincount(atoms.group[changed]).float() if changed.any() else torch.zeros(1)
    shares = found.shared_cosine[changed] if changed.any() else torch.zeros(1)
    quartiles = torch.tensor([0.25, 0.5, 0.75])
    return {
        "d_sae": found.directions.shape[0],
        "d_in": found.directions.shape[1],
        "level": found.level,
        "rows_changed": int(changed.sum()),
        "rows_changed_share": float(changed.float().mean()),
        "groups": int(atoms.directions.shape[0]),
        "group_size_quartiles": torch.quantile(sizes, quartiles).tolist(),
        "largest_group": int(sizes.max()),
        "shared_cosine_quartiles": torch.quantile(shares, quartiles).tolist(),
        "atoms_by_levels": unfolded_by_levels(sae, found).atoms,
        "star_groups": len(star_groups(found.adjacency)),
        "atoms_by_levels_stars": unfolded_by_levels(sae, found, stars=True).atoms,
    }


def rounded(value):
    """Floats, and lists of them, to three places for printing."""
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return round(value, 3) if isinstance(value, float) else value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", help="trained SAE folders or Hub ids")
    p.add_argument("--json", default=None, help="also write the reports, with the command, here")
    args = p.parse_args()
    from hf_topafa.evaluation.evaluate import load_sae
    from hf_topafa.helpers import script_command, write_json

    reports = []
    for run in args.runs:
        try:
            sae, _ = load_sae(run)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"cannot load an SAE from {run!r}: {exc}") from None
        report = {"sae": run, "activation": sae.config.activation, **absorption_report(sae)}
        print(json.dumps({key: rounded(value) for key, value in report.items()}))
        reports.append(report)
    if args.json:
        write_json(args.json, {"command": script_command(), "reports": reports})


if __name__ == "__main__":
    main()
