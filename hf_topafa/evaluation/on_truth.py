"""A trained dictionary beside a world's stored truth, as the diagnosis scripts read it: which
features its width can hold, which feature each latent matched, and which are on per sample."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..helpers import script_command, write_json
from .agreement import matched_cosines
from .ground_truth import TruthSet, most_frequent


@dataclass
class DictionaryOnTruth:
    """A trained dictionary beside the first samples of a world's stored truth: what a diagnosis
    of how it is read needs. ``world_name`` as the cache names it, ``codes`` [n, features] the
    true codes, ``x`` their inputs, ``held`` the features its width can hold (the most
    frequent), ``match`` each latent's one-to-one matched feature (-1 where none) and
    ``cosine`` its |cosine| with it, ``on`` [n, latents] whether that feature is on."""

    sae: nn.Module
    world: object
    world_name: str
    codes: torch.Tensor
    x: torch.Tensor
    held: torch.Tensor
    match: torch.Tensor
    cosine: torch.Tensor
    on: torch.Tensor

    def firings(self, held: bool = True) -> torch.Tensor:
        """Per sample [n], how many true features fire that the width holds (or, with
        ``held=False``, that it cannot hold)."""
        return (self.codes[:, self.held if held else ~self.held] > 0).sum(-1)

    def activations(self) -> torch.Tensor:
        """The encoder's activations after its ReLU [n, latents]: what the readers rank."""
        return torch.relu(self.sae.pre_activations(self.x))

    def centered(self) -> torch.Tensor:
        """z = x_n - b_dec [n, d]: the inputs as the dictionary's readers see them."""
        from ..sae.kfree import centered_input

        return centered_input(self.sae, self.sae.normalize_input(self.x)[0])


@torch.no_grad()
def dictionary_on_truth(run: str, cache_path: str, samples: int) -> DictionaryOnTruth:
    """The SAE folder ``run`` and the first ``samples`` (at most 20,000) of the synthetic cache
    ``cache_path``, written ``with_truth``, as a ``DictionaryOnTruth``."""
    from ..data.harvest import ActivationCache
    from ..data.synthetic_cache import world_of_cache
    from ..sae.modeling_sae import SparseAutoencoder

    cache = ActivationCache(cache_path)
    world = world_of_cache(cache.manifest)
    truth = TruthSet.from_cache(cache, world.cfg.num_features, limit=20000)
    codes = truth.rows(0, min(samples, truth.num_samples))
    sae = SparseAutoencoder.from_pretrained(run).eval()
    held = most_frequent(truth.feature_counts(), sae.config.d_sae)
    match, cosine = matched_cosines(sae.W_dec, world.feature_dict.feature_vectors)
    on = (codes[:, match.clamp_min(0)] > 0) & (match >= 0)
    name = cache.manifest["synthetic"]["world"]
    x = world.feature_dict(codes)
    return DictionaryOnTruth(sae, world, name, codes, x, held, match, cosine, on)


def dictionary_on_truth_from_command_line(description: str):
    """(``DictionaryOnTruth``, args) for a diagnosis script whose command line names a trained
    SAE folder and a world's held-out cache written with truth, with ``--samples`` (4,096) and
    ``--json``; one torch thread, as the diagnoses run beside training."""
    import argparse

    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run", help="a trained TopK SAE folder")
    parser.add_argument("cache", help="the world's held-out synthetic cache (with true codes)")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    return dictionary_on_truth(args.run, args.cache, args.samples), args


def run_cache_pairs_from_command_line(description: str, add_options=None):
    """(``[(run, cache), ...]``, args) for a diagnosis script whose command line names trained
    SAE folders each with its world's held-out cache (``RUN CACHE``, repeated), with
    ``--json`` and whatever ``add_options(parser)`` adds; one torch thread, as the diagnoses
    run beside training. An odd count is a one-line error."""
    import argparse

    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--json", default=None)
    if add_options is not None:
        add_options(parser)
    parser.add_argument("pairs", nargs="+", help="RUN CACHE, repeated")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if len(args.pairs) % 2:
        raise SystemExit("give each run folder with its held-out activation cache: RUN CACHE ...")
    return list(zip(args.pairs[::2], args.pairs[1::2], strict=True)), args


def report_rows(rows: list[dict], describe, json_path: str | None, **extra) -> None:
    """Print each of a diagnosis script's rows as ``describe(row)`` words it, then write them,
    the command that made them and ``extra`` to ``json_path`` where one is given."""
    for row in rows:
        print(describe(row))
    if json_path:
        write_json(json_path, {"command": script_command(), "rows": rows, **extra})
