"""The SAE family as a transformers model: top-AFA and its baselines share one class."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from . import activations
from .afa import afa_norm, scaled_feature_norm
from .configuration_sae import SAEConfig


@dataclass
class SAEOutput(ModelOutput):
    """What one forward pass of an SAE returns.

    Losses are normalized by the batch's total squared input norm (sum over tokens of ||x||^2,
    in the SAE's normalized space), so coefficients mean the same thing at every model scale;
    ``mse_loss`` is therefore the batch's fraction of squared norm left unexplained.
    """

    loss: torch.Tensor | None = None
    """mse_loss + afa_coef * afa_loss + aux_coef * aux_loss + sparsity_loss."""
    reconstruction: torch.Tensor | None = None
    """x_hat in the input's own space (input normalization undone), shaped like the input."""
    feature_acts: torch.Tensor | None = None
    """Dense feature activations [..., d_sae], zero where a feature is inactive."""
    l0: torch.Tensor | None = None
    """Number of non-zero features per token (float)."""
    k: torch.Tensor | None = None
    """Top-AFA: features kept per token; TopK: k; None for the other rules."""
    mse_loss: torch.Tensor | None = None
    """sum ||x - x_hat||^2 / sum ||x||^2."""
    afa_loss: torch.Tensor | None = None
    """Norm matching: sum (||f~|| - ||x||)^2 / sum ||x||^2, f~ as in the ZF plot (with ||b_dec||)."""
    aux_loss: torch.Tensor | None = None
    """Aux-k: how well the top aux_k dead features model the residual, normalized by its norm."""
    sparsity_loss: torch.Tensor | None = None
    """L1 (relu) or L0 (jumprelu) penalty, already weighted by its coefficient."""


class SparseAutoencoder(PreTrainedModel):
    """A sparse autoencoder x -> f -> x_hat with a choice of sparse activation rule.

    pre = ReLU((x - b_dec) W_enc + b_enc); f = rule(pre); x_hat = f W_dec + b_dec.
    """

    config_class = SAEConfig
    base_model_prefix = "sae"
    main_input_name = "x"

    def __init__(self, config: SAEConfig):
        super().__init__(config)
        d_in, d_sae = config.d_in, config.d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if config.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.empty(d_sae))
        elif config.activation == "batchtopk":
            # Estimated during training (EMA of the smallest kept activation); -1 = not yet.
            self.register_buffer("threshold", torch.empty(d_sae))
        self.reset_parameters()
        self.post_init()

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Unit-norm random decoder rows, encoder tied to the decoder's transpose, zero biases."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(seed)
        if self.W_dec.device.type == "meta":
            return
        w = torch.randn(self.W_dec.shape, generator=generator).to(self.W_dec)
        w /= torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)
        self.b_enc.zero_()
        self.b_dec.zero_()
        if self.config.activation == "jumprelu":
            self.threshold.fill_(self.config.jumprelu_init_threshold)
        elif self.config.activation == "batchtopk":
            self.threshold.fill_(-1.0)

    def _init_weights(self, module):
        # Weights are initialized in reset_parameters; loading overwrites them.
        pass

    # -- the autoencoder ---------------------------------------------------------------------

    def normalize_input(self, x: torch.Tensor):
        """Map x to the SAE's working space; returns (x_n, mean, std) so x = x_n * std + mean."""
        if self.config.input_normalization == "layer_norm":
            mean = x.mean(-1, keepdim=True)
            std = x.std(-1, keepdim=True, unbiased=False).clamp_min(1e-6)
            return (x - mean) / std, mean, std
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return x, one * 0, one

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU((x_n - b_dec) W_enc + b_enc), with x_n the normalized input."""
        x_n, _, _ = self.normalize_input(self._check_input(x))
        return self._pre(x_n)

    def _pre(self, x_n: torch.Tensor) -> torch.Tensor:
        return torch.relu((x_n - self.b_dec) @ self.W_enc + self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations [..., d_sae], zeros where a feature is inactive."""
        x = self._check_input(x)
        x_n, _, _ = self.normalize_input(x)
        acts, _ = self._select(self._pre(x_n).reshape(-1, self.config.d_sae), x_n)
        return acts.reshape(*x.shape[:-1], self.config.d_sae)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """f W_dec + b_dec, in the SAE's normalized input space."""
        if f.shape[-1] != self.config.d_sae:
            raise ValueError(
                f"decode expects feature activations with last dimension d_sae="
                f"{self.config.d_sae}; got shape {tuple(f.shape)}"
            )
        return f @ self.W_dec + self.b_dec

    def _select(self, pre: torch.Tensor, x_n: torch.Tensor):
        """Apply the configured activation rule to pre [N, d_sae]; returns (acts, k or None)."""
        cfg = self.config
        if cfg.activation == "topafa":
            target = afa_norm(x_n.reshape(-1, cfg.d_in) - self.b_dec)
            decoder_norms = torch.linalg.vector_norm(self.W_dec, dim=-1)
            return activations.topafa(pre, decoder_norms, target)
        if cfg.activation == "topk":
            k = torch.full(pre.shape[:1], cfg.k, dtype=torch.long, device=pre.device)
            return activations.topk(pre, cfg.k), k
        if cfg.activation == "batchtopk":
            if self.training or self.threshold[0] < 0:
                acts, smallest = activations.batchtopk(pre, cfg.k)
                if self.training:
                    self._update_batchtopk_threshold(smallest)
                return acts, None
            return activations.threshold_activation(pre, self.threshold), None
        if cfg.activation == "jumprelu":
            return activations.jumprelu(pre, self.threshold, cfg.jumprelu_bandwidth), None
        return pre, None  # relu

    @torch.no_grad()
    def _update_batchtopk_threshold(self, smallest: torch.Tensor) -> None:
        if self.threshold[0] < 0:
            self.threshold.fill_(smallest.item())
        else:
            momentum = self.config.batchtopk_threshold_momentum
            self.threshold.mul_(momentum).add_((1 - momentum) * smallest)

    def forward(
        self,
        x: torch.Tensor,
        dead_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SAEOutput:
        """Encode, decode and compute every loss term.

        Args:
            x: activations [..., d_in].
            dead_mask: optional bool [d_sae] of features the trainer counts as dead; they feed
                the aux-k loss.
        """
        cfg = self.config
        x = self._check_input(x)
        lead_shape = x.shape[:-1]
        x_flat = x.reshape(-1, cfg.d_in)
        x_n, mean, std = self.normalize_input(x_flat)
        pre = self._pre(x_n)
        acts, k = self._select(pre, x_n)
        recon_n = acts @ self.W_dec + self.b_dec

        total_sq = x_n.detach().pow(2).sum().clamp_min(1e-12)
        mse_loss = (recon_n - x_n).pow(2).sum() / total_sq
        f_norm = scaled_feature_norm(acts, self.W_dec, self.b_dec)
        afa_loss = (f_norm - afa_norm(x_n)).pow(2).sum() / total_sq
        aux_loss = self._aux_loss(pre, x_n - recon_n.detach(), dead_mask)
        sparsity_loss = self._sparsity_loss(pre, acts, x_n)
        loss = mse_loss + cfg.afa_coef * afa_loss + cfg.aux_coef * aux_loss + sparsity_loss

        output = SAEOutput(
            loss=loss,
            reconstruction=(recon_n * std + mean).reshape(*lead_shape, cfg.d_in),
            feature_acts=acts.reshape(*lead_shape, cfg.d_sae),
            l0=(acts != 0).sum(-1).to(x.dtype).reshape(lead_shape),
            k=None if k is None else k.reshape(lead_shape),
            mse_loss=mse_loss,
            afa_loss=afa_loss,
            aux_loss=aux_loss,
            sparsity_loss=sparsity_loss,
        )
        return output if return_dict else output.to_tuple()

    def _aux_loss(self, pre, residual, dead_mask) -> torch.Tensor:
        """Aux-k (Gao et al.): let the top dead features reconstruct what the live ones missed."""
        zero = pre.new_zeros(())
        if dead_mask is None or self.config.aux_coef == 0:
            return zero
        n_dead = int(dead_mask.sum())
        if n_dead == 0:
            return zero
        k_aux = min(self.config.aux_k, n_dead)
        dead_pre = pre * dead_mask.to(pre.dtype)
        values, indices = dead_pre.topk(k_aux, dim=-1, sorted=False)
        aux_recon = torch.zeros_like(pre).scatter(-1, indices, values) @ self.W_dec
        residual = residual.detach()
        return (aux_recon - residual).pow(2).sum() / residual.pow(2).sum().clamp_min(1e-12)

    def _sparsity_loss(self, pre, acts, x_n) -> torch.Tensor:
        cfg = self.config
        if cfg.activation == "relu" and cfg.l1_coef > 0:
            decoder_norms = torch.linalg.vector_norm(self.W_dec, dim=-1)
            l1 = (acts * decoder_norms).sum(-1).mean()
            return cfg.l1_coef * l1 / afa_norm(x_n.detach()).mean().clamp_min(1e-12)
        if cfg.activation == "jumprelu" and cfg.l0_coef > 0:
            l0 = activations.jumprelu_l0(pre, self.threshold, cfg.jumprelu_bandwidth)
            return cfg.l0_coef * l0.mean()
        return pre.new_zeros(())

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape [..., {self.config.d_in}]")
        if x.ndim == 0 or x.shape[-1] != self.config.d_in:
            raise ValueError(
                f"expected activations with last dimension d_in={self.config.d_in}; "
                f"got shape {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError("input activations contain NaN or inf; every value must be finite")
        return x.to(self.W_enc.dtype) if not torch.is_autocast_enabled() else x

    # -- decoder geometry ----------------------------------------------------------------------

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        """Rescale each decoder row to unit norm (the paper keeps ||W_dec,i|| = 1)."""
        norms = torch.linalg.vector_norm(self.W_dec, dim=-1, keepdim=True).clamp_min(1e-12)
        self.W_dec.div_(norms)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out the part of each decoder row's gradient that would change its norm."""
        if self.W_dec.grad is None:
            return
        unit = self.W_dec / torch.linalg.vector_norm(self.W_dec, dim=-1, keepdim=True).clamp_min(
            1e-12
        )
        parallel = (self.W_dec.grad * unit).sum(-1, keepdim=True)
        self.W_dec.grad.sub_(parallel * unit)

    # -- loading with clear errors -------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, after checking a local folder's files for readable errors."""
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path):
            check_saved_sae(path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def check_saved_sae(folder: str) -> None:
    """Raise a clear error if a saved SAE folder is missing files, is corrupt, or disagrees with itself."""
    config_path = os.path.join(folder, "config.json")
    weights_path = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{folder} is not a saved SAE: config.json is missing "
            "(a saved SAE folder holds config.json and model.safetensors)"
        )
    try:
        with open(config_path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}); re-save the SAE") from err
    if not isinstance(raw, dict) or raw.get("model_type") != SAEConfig.model_type:
        found = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(
            f"{config_path} has model_type={found!r}; an hf-topafa SAE has "
            f"model_type={SAEConfig.model_type!r}"
        )
    config = SAEConfig.from_dict({k: v for k, v in raw.items() if k != "model_type"})
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"{folder} has no model.safetensors (weights load from safetensors only)"
        )
    try:
        with safe_open(weights_path, framework="pt") as fh:
            shapes = {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_path} is truncated or not a safetensors file ({err})") from err
    expected = {
        "W_enc": (config.d_in, config.d_sae),
        "W_dec": (config.d_sae, config.d_in),
        "b_enc": (config.d_sae,),
        "b_dec": (config.d_in,),
    }
    if config.activation in ("jumprelu", "batchtopk"):
        expected["threshold"] = (config.d_sae,)
    for name, shape in expected.items():
        if name not in shapes:
            raise ValueError(
                f"{weights_path} lacks the tensor {name!r} (expected shape {list(shape)})"
            )
        if shapes[name] != shape:
            raise ValueError(
                f"{weights_path}: {name} has shape {list(shapes[name])} but config.json says "
                f"{list(shape)} (d_in={config.d_in}, d_sae={config.d_sae})"
            )
    size = os.path.getsize(weights_path)
    with open(weights_path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise ValueError(
            f"{weights_path} is truncated: its header describes {8 + header_len + end} bytes, "
            f"the file has {size}"
        )
