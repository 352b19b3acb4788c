"""The steps ``hf-topafa bench`` times: this package's training step per activation rule, the
published top-AFA step written plainly, and the six dense products every SAE step needs."""

from __future__ import annotations

import torch

from ..helpers import torch_dtype
from .bench_config import BenchConfig


def dead_mask_for(d_sae: int, fraction: float, device) -> torch.Tensor:
    """Every round(1/fraction)-th feature is dead (none when fraction is 0)."""
    mask = torch.zeros(d_sae, dtype=torch.bool, device=device)
    if fraction > 0:
        mask[:: max(1, round(1 / fraction))] = True
    return mask


def make_optimizer(params, cfg: BenchConfig) -> torch.optim.Optimizer:
    kind = {"fused": {"fused": True}, "foreach": {"foreach": True}}[cfg.adam]
    return torch.optim.Adam(params, lr=cfg.lr, **kind)


class PackageStep:
    """This package's training step for one activation rule: ``train.train_step``, the function
    the trainer calls, with the trainer's default clipping and a constant learning rate."""

    def __init__(self, cfg: BenchConfig, activation: str, d_sae: int, k: int | None = None):
        from ..sae.configuration_sae import SAEConfig
        from ..sae.modeling_sae import SparseAutoencoder
        from ..training.train_config import TrainConfig

        torch.manual_seed(cfg.seed)
        sae_cfg = SAEConfig(d_in=cfg.d_in, d_sae=d_sae, activation=activation, k=k)
        self.sae = SparseAutoencoder(sae_cfg).to(cfg.device, torch_dtype(cfg.dtype)).train()
        with torch.no_grad():
            self.sae.W_enc.mul_(cfg.encoder_scale)
        self.opt = make_optimizer(self.sae.parameters(), cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: 1.0)
        self.train_config = TrainConfig()  # only its step settings are read (max_grad_norm)
        self.accelerator = bench_accelerator(cfg.device)
        self.dead_mask = dead_mask_for(d_sae, cfg.dead_fraction, cfg.device)
        self.last_l0 = float("nan")

    def __call__(self, x: torch.Tensor) -> None:
        from ..training.train import train_step

        out = train_step(
            self.sae,
            self.sae,
            self.opt,
            self.scheduler,
            x,
            self.dead_mask,
            self.train_config,
            self.accelerator,
        )
        self.last_l0 = out.l0.float().mean().item()


_ACCELERATORS: dict[str, object] = {}


def bench_accelerator(device: str):
    """One single-process Accelerator per device (what ``train`` builds, without precision
    casts: the bench sets the dtype itself)."""
    if device not in _ACCELERATORS:
        from accelerate import Accelerator

        _ACCELERATORS[device] = Accelerator(
            cpu=torch.device(device).type == "cpu", mixed_precision="no"
        )
    return _ACCELERATORS[device]


class PaperTopAFAStep:
    """The published top-AFA step, written plainly for comparison (not used for training).

    Per step: pre = ReLU((x - b_dec) W_enc + b_enc); a full descending sort of every token's
    decoder-scaled contributions; cumulative sum; k = argmin |sqrt(cumsum) - ||x - b_dec|||; a
    dense mask; a dense decoder product; MSE + lambda_AFA norm loss + aux-k loss; and
    W_dec W_dec^T (d_sae x d_sae) on every forward to log max / mean |cos| between decoder rows.
    Then backward, Adam, decoder renormalisation.
    """

    def __init__(self, cfg: BenchConfig, d_sae: int, afa_coef=1 / 32, aux_k=512, aux_coef=1 / 32):
        torch.manual_seed(cfg.seed)
        dtype, device = torch_dtype(cfg.dtype), cfg.device
        w = torch.randn(d_sae, cfg.d_in)
        w /= w.norm(dim=-1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w.to(device, dtype))
        self.W_enc = torch.nn.Parameter((w.T * cfg.encoder_scale).contiguous().to(device, dtype))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae, device=device, dtype=dtype))
        self.b_dec = torch.nn.Parameter(torch.zeros(cfg.d_in, device=device, dtype=dtype))
        self.params = [self.W_enc, self.W_dec, self.b_enc, self.b_dec]
        self.opt = make_optimizer(self.params, cfg)
        self.dead_mask = dead_mask_for(d_sae, cfg.dead_fraction, device)
        self.afa_coef, self.aux_k, self.aux_coef = afa_coef, aux_k, aux_coef
        self.stats: dict[str, float] = {}
        self.last_k = None

    def forward(self, x: torch.Tensor):
        centered = x - self.b_dec
        pre = torch.relu(centered @ self.W_enc + self.b_enc)
        norms = self.W_dec.norm(dim=-1)
        contributions = (pre.detach() * norms.detach()) ** 2
        values, order = contributions.sort(dim=-1, descending=True, stable=True)
        cumulative = values.cumsum(-1).sqrt()
        target = centered.detach().norm(dim=-1, keepdim=True)
        k = (cumulative - target).abs().argmin(dim=-1) + 1
        ranks = torch.arange(pre.shape[-1], device=x.device).expand_as(pre)
        mask = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, order, ranks < k.unsqueeze(-1))
        acts = pre * mask
        recon = acts @ self.W_dec + self.b_dec
        total = x.pow(2).sum()
        mse = (recon - x).pow(2).sum() / total
        f_norm = ((acts * norms).pow(2).sum(-1) + self.b_dec.pow(2).sum()).sqrt()
        afa = (f_norm - x.norm(dim=-1)).pow(2).sum() / total
        aux = pre.new_zeros(())
        n_dead = int(self.dead_mask.sum())
        if n_dead:
            dead_pre = pre * self.dead_mask
            top, idx = dead_pre.topk(min(self.aux_k, n_dead), dim=-1)
            aux_recon = torch.zeros_like(pre).scatter(-1, idx, top) @ self.W_dec
            residual = (x - recon).detach()
            aux = (aux_recon - residual).pow(2).sum() / residual.pow(2).sum()
        with torch.no_grad():  # logged every step in the published code
            unit = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
            cos = (unit @ unit.T).abs()
            cos.fill_diagonal_(0)
            n = cos.shape[0]
            self.stats = {
                "max_abs_cos": cos.max().item(),
                "mean_abs_cos": cos.sum().item() / (n * (n - 1)),
            }
        self.last_k = k
        return mse + self.afa_coef * afa + self.aux_coef * aux, acts

    def __call__(self, x: torch.Tensor) -> None:
        loss, _ = self.forward(x)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True)


class DenseFloor:
    """The six dense products of an SAE step: encoder and decoder, forward and backward."""

    def __init__(self, cfg: BenchConfig, d_sae: int):
        dtype, device = torch_dtype(cfg.dtype), cfg.device
        g = torch.Generator(device="cpu").manual_seed(cfg.seed)
        make = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
        self.W_enc, self.W_dec = make(cfg.d_in, d_sae), make(d_sae, cfg.d_in)
        self.x, self.acts = make(cfg.batch, cfg.d_in), make(cfg.batch, d_sae)
        self.grad_pre, self.grad_recon = make(cfg.batch, d_sae), make(cfg.batch, cfg.d_in)

    def __call__(self, x: torch.Tensor) -> None:
        self.x @ self.W_enc  # encoder forward
        self.x.T @ self.grad_pre  # encoder weight gradient
        self.grad_pre @ self.W_enc.T  # encoder input gradient
        self.acts @ self.W_dec  # decoder forward
        self.acts.T @ self.grad_recon  # decoder weight gradient
        self.grad_recon @ self.W_dec.T  # decoder input gradient


def build_variant(name: str, cfg: BenchConfig, d_sae: int, k: int | None):
    if name == "paper_topafa":
        return PaperTopAFAStep(cfg, d_sae)
    if name == "dense_floor":
        return DenseFloor(cfg, d_sae)
    return PackageStep(cfg, name, d_sae, k if name in ("topk", "batchtopk") else None)


def make_batch(cfg: BenchConfig, batch: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    return torch.randn(batch, cfg.d_in, generator=g).to(cfg.device, torch_dtype(cfg.dtype))


def sync_device(device: str) -> None:
    """Wait for the device's queued work, so that a clock reading covers it (CUDA only)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
