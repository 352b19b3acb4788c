"""Does this package's top-AFA training land where the paper's published algorithm lands?

Trains two SAEs on the same harvested activations with the same sizes and seed (each its own shuffle):
(a) ``hf_topafa.train.train`` with its defaults (the paper's objective), and (b) an independent
re-statement of the published training loop (SewoongLee/top-afa-sae, training/sae.py and
training.py) written here in plain torch. Both are evaluated on the same held-out activations
(per-token normalized MSE, L0). Writes ``results/paper_step_check/check.json``.

    python scripts/paper_step_check.py --activations runs/reproduce/train_activations.safetensors \\
        --eval runs/reproduce/eval_activations.safetensors --layer 15 --tokens 98304 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

REPO = Path(__file__).resolve().parent.parent


class PaperTopAFA(torch.nn.Module):
    """The published TopAFASAE (aux-k included), restated without any hf_topafa code."""

    def __init__(self, d_in, d_sae, seed, afa_coeff, top_k_aux=512, aux_penalty=1 / 32):
        super().__init__()
        torch.manual_seed(seed)
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))  # present, unused by top-AFA
        self.W_enc = torch.nn.Parameter(torch.nn.init.kaiming_uniform_(torch.empty(d_in, d_sae)))
        W_dec = self.W_enc.detach().t().clone()
        self.W_dec = torch.nn.Parameter(W_dec / W_dec.norm(dim=-1, keepdim=True))
        self.afa_coeff, self.top_k_aux, self.aux_penalty = afa_coeff, top_k_aux, aux_penalty
        self.register_buffer("inactive", torch.zeros(d_sae))

    def forward(self, x, n_batches_to_dead=5):
        x_mean = x.mean(-1, keepdim=True)
        x = x - x_mean
        x_std = x.std(-1, keepdim=True)
        x = x / (x_std + 1e-5)
        x_cent = x - self.b_dec
        acts = torch.relu(x_cent @ self.W_enc)
        afa = torch.norm(x_cent, dim=1, keepdim=True)
        scaled = (acts * torch.norm(self.W_dec, dim=-1)).pow(2)
        order = torch.argsort(scaled, dim=-1, descending=True)
        cumulative = torch.cumsum(torch.gather(scaled, -1, order), dim=-1)
        cumulative[..., -1] = 1e8
        k = torch.abs(cumulative.sqrt() - afa).argmin(dim=-1) + 1
        rank_mask = torch.arange(acts.shape[1]).unsqueeze(0) < k.unsqueeze(1)
        mask = torch.zeros_like(acts, dtype=torch.bool).scatter_(1, order, rank_mask)
        kept = acts * mask
        recon = kept @ self.W_dec + self.b_dec
        with torch.no_grad():
            fired = kept.sum(0) > 0
            self.inactive += (~fired).float()
            self.inactive[fired] = 0
        l2 = (recon - x).pow(2).mean()
        afa_loss = self.afa_coeff * (kept.norm(dim=-1) - x.norm(dim=-1)).pow(2).mean()
        dead = self.inactive >= n_batches_to_dead
        aux = x.new_zeros(())
        if dead.any():
            top = torch.topk(acts[:, dead], min(self.top_k_aux, int(dead.sum())), dim=-1)
            aux_acts = torch.zeros_like(acts[:, dead]).scatter(-1, top.indices, top.values)
            aux = self.aux_penalty * (aux_acts @ self.W_dec[dead] - (x - recon)).pow(2).mean()
        return l2 + afa_loss + aux, kept, recon * x_std + x_mean

    @torch.no_grad()
    def unit_norm_step(self):
        normed = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        self.W_dec.grad -= (self.W_dec.grad * normed).sum(-1, keepdim=True) * normed
        self.W_dec.data = normed


def train_paper(x, d_sae, seed, afa_coef, batch, lr):
    sae = PaperTopAFA(x.shape[1], d_sae, seed, afa_coef)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.99))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(x) - batch + 1, batch):
        loss, _, _ = sae(x[order[start : start + batch]])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 100000)
        sae.unit_norm_step()
        opt.step()
        opt.zero_grad()
    return sae


@torch.no_grad()
def held_out(forward, x):
    """Per-token normalized MSE ||x - x_hat||^2 / ||x||^2 (averaged) and mean L0."""
    recon, kept = forward(x)
    nmse = ((recon - x).pow(2).sum(-1) / x.pow(2).sum(-1)).mean().item()
    return {"l0": (kept != 0).sum(-1).float().mean().item(), "normalized_mse": nmse}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--activations", required=True, help="safetensors with L<layer> [N, d] tensors")
    p.add_argument("--eval", required=True, help="held-out activations, same layout")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--tokens", type=int, default=98304)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--d-sae", type=int, default=2304)
    p.add_argument("--afa-coef", type=float, default=1 / 32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default=str(REPO / "results" / "paper_step_check" / "check.json"))
    args = p.parse_args()

    from hf_topafa import SparseAutoencoder
    from hf_topafa.training.train import TrainConfig, train

    with safe_open(args.activations, framework="pt") as fh:
        x = fh.get_tensor(f"L{args.layer}")[: args.tokens].float()
    with safe_open(args.eval, framework="pt") as fh:
        ev = fh.get_tensor(f"L{args.layer}")[: args.eval_tokens].float()
    results = []
    for seed in args.seeds:
        t = time.perf_counter()
        paper = train_paper(x, args.d_sae, seed, args.afa_coef, args.batch_size, args.lr).eval()
        row = {"seed": seed, "paper_seconds": round(time.perf_counter() - t, 1)}
        row["paper"] = held_out(lambda v, m=paper: m(v)[2:0:-1], ev)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            config = TrainConfig.from_flat(
                activation="topafa", d_sae=args.d_sae, afa_coef=args.afa_coef,
                batch_size=args.batch_size, lr=args.lr, seed=seed, max_tokens=len(x),
                eval_tokens=min(1024, len(ev)), output=tmp, overwrite=True, log_with="none",
                progress=False, checkpoint_every=0,
            )  # fmt: skip
            ours = SparseAutoencoder.from_pretrained(train(config, data=x, eval_data=ev)).eval()
            row["ours_seconds"] = round(time.perf_counter() - t, 1)
            row["ours"] = held_out(lambda v, m=ours: (m(v).reconstruction, m(v).feature_acts), ev)
        print(json.dumps(row), flush=True)
        results.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
