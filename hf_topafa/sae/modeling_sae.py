"""The SAE family as a transformers model: top-AFA and its baselines share one class."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from . import activations, losses, sparse
from .afa import scaled_feature_norm
from .configuration_sae import SAEConfig
from .rules import get_rule
from .saved import check_saved_sae


@dataclass
class SAEOutput(ModelOutput):
    """What one forward pass of an SAE returns.

    Units follow ``config.loss_convention``. ``"paper"`` (the default) is the paper's code
    (SewoongLee/top-afa-sae, training/sae.py), in the SAE's working space x_n:

        mse_loss = mean over tokens and elements of (x_hat_n - x_n)^2 / s
        afa_loss = mean over tokens of (||f|| - ||x_n||)^2 / s        (f: the kept activations)
        aux_loss = mean over tokens and elements of (x_hat_aux - (x_n - x_hat_n))^2 / s

    with s = 1 when inputs are standardized (``input_normalization="layer_norm"``: exactly the
    paper's numbers) and s = the batch's mean squared element otherwise (so that coefficients mean
    the same at every activation scale). As in the paper, the aux-k residual is not detached.
    ``"hf_topafa_v0.1"``: MSE and norm term over the batch's sum of ||x_n||^2, the norm term on
    ||f~|| (decoder-scaled, with ||b_dec||), aux-k over the residual's squared norm (detached).
    """

    loss: torch.Tensor | None = None
    """mse_loss + afa_coef * afa_loss + aux_coef * aux_loss + sparsity_loss (with Matryoshka
    levels L, mse_loss is replaced by (mse_loss + L * matryoshka_loss) / (L + 1))."""
    reconstruction: torch.Tensor | None = None
    """x_hat in the input's own space (input normalization undone), shaped like the input."""
    feature_acts: torch.Tensor | None = None
    """Dense feature activations [..., d_sae], zero where a feature is inactive."""
    l0: torch.Tensor | None = None
    """Number of non-zero features per token (float)."""
    k: torch.Tensor | None = None
    """Top-AFA: features kept per token; TopK: k; None for the other rules."""
    mse_loss: torch.Tensor | None = None
    """Reconstruction error (units above)."""
    afa_loss: torch.Tensor | None = None
    """Norm matching, before its weight afa_coef (units above)."""
    aux_loss: torch.Tensor | None = None
    """Aux-k: how well the top aux_k dead features model the residual (units above)."""
    sparsity_loss: torch.Tensor | None = None
    """L1 (relu) or L0 (jumprelu) penalty, already weighted by its coefficient."""
    loss_scale: torch.Tensor | None = None
    """The detached divisor of mse_loss and afa_loss (and of aux_loss under "paper"); the trainer
    uses it to make DDP's gradient average equal one process's gradient on the global batch."""
    aux_scale: torch.Tensor | None = None
    """The detached divisor of aux_loss."""
    matryoshka_loss: torch.Tensor | None = None
    """Mean reconstruction error of the Matryoshka prefixes decoding alone (units of mse_loss);
    None when ``matryoshka_levels`` is 0."""


class SparseAutoencoder(PreTrainedModel):
    """A sparse autoencoder x -> f -> x_hat with a choice of sparse activation rule.

    pre = ReLU((x_n - b_dec) W_enc + b_enc); f = rule(pre); x_hat_n = f W_dec + b_dec, where x_n is
    x in the SAE's working space (``normalize_input``: x itself, or x standardized per token).

    x's own space comes back from ``forward(x).reconstruction`` or, as SAELens's and SAEBench's
    evaluators do, ``decode(encode(x))``: ``encode`` remembers its input's standardization until the
    next ``encode`` (as SAELens's ``layer_norm``) and ``decode`` undoes it; ``decode_normalized``
    stays in the working space.
    """

    config_class = SAEConfig
    base_model_prefix = "sae"
    main_input_name = "x"

    def __init__(self, config: SAEConfig):
        super().__init__(config)
        d_in, d_sae = config.d_in, config.d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        # Always a weight and always added (zero unless trained), so converted SAEs keep theirs.
        self.b_enc = nn.Parameter(torch.zeros(d_sae), requires_grad=config.encoder_bias)
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.rule = get_rule(config.activation)
        if self.rule.threshold == "learned":
            self.threshold = nn.Parameter(torch.empty(d_sae))
        elif self.rule.threshold == "estimated":
            # Estimated during training (BatchTopK: EMA of the smallest kept activation).
            self.register_buffer("threshold", torch.empty(d_sae))
        # Top-AFA candidates ranked per token, and the mean k of the last batch (None before
        # one; set by top-AFA, the adaptive kfree rules and latent_noise): adapted to the
        # observed k, for speed only.
        self._topafa_candidates = activations.TOPAFA_CANDIDATES
        self._topafa_mean_k: float | None = None
        # (mean, std) of the input last given to encode, when standardized: decode maps back.
        self._remembered_standardization: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reset_parameters()
        self.post_init()

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Fresh weights as ``config.init`` says; zero biases (the paper starts b_dec at zero).

        kaiming: ``W_enc`` kaiming-uniform over [d_in, d_sae] (torch's defaults, so fan_in = d_sae
        and columns of norm about sqrt(2 d_in / d_sae)), ``W_dec`` = its transpose with unit rows.
        unit_tied: unit-norm Gaussian decoder rows, ``W_enc`` = ``W_dec`` transposed.
        """
        generator = None
        if seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(seed)
        if self.W_dec.device.type == "meta":
            return
        if self.config.init == "kaiming":
            w_enc = torch.empty(self.W_enc.shape)
            nn.init.kaiming_uniform_(w_enc, generator=generator)
            w = w_enc.T.clone()
        else:
            w = torch.randn(self.W_dec.shape, generator=generator)
            w_enc = None
        w /= torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        self.W_dec.copy_(w.to(self.W_dec))
        self.W_enc.copy_((w.T if w_enc is None else w_enc).to(self.W_enc))
        self.b_enc.zero_()
        self.b_dec.zero_()
        if self.rule.threshold is not None:
            self.threshold.fill_(self.rule.threshold_init(self.config))

    def _init_weights(self, module):
        # Weights are initialized in reset_parameters; loading overwrites them.
        pass

    # -- the autoencoder ---------------------------------------------------------------------

    def normalize_input(self, x: torch.Tensor, remember: bool = False):
        """Map x to the SAE's working space; returns (x_n, mean, std) so x = x_n * std + mean.

        ``remember``: keep x's mean and std for ``to_input_space`` (``encode`` does), until the
        next call that remembers.
        """
        mode = self.config.input_normalization
        if mode == "layer_norm":
            # The paper's, and SAELens's layer_norm: divide by torch's unbiased std plus 1e-5,
            # map back with the std alone (so the round trip is exact to about 1e-5 relative).
            mean = x.mean(-1, keepdim=True)
            std = x.std(-1, keepdim=True)
            x_n = (x - mean) / (std + 1e-5)
        elif mode == "layer_norm_biased":  # hf-topafa 0.1
            mean = x.mean(-1, keepdim=True)
            std = x.std(-1, keepdim=True, unbiased=False).clamp_min(1e-6)
            x_n = (x - mean) / std
        else:
            one = torch.ones((), dtype=x.dtype, device=x.device)
            return x, one * 0, one
        if remember:
            self._remembered_standardization = (mean, std)
        return x_n, mean, std

    def to_input_space(self, x_hat_n: torch.Tensor) -> torch.Tensor:
        """Undo the standardization of the input last given to ``encode`` (or to
        ``normalize_input(..., remember=True)``): ``x_hat_n * std + mean`` per token, the map of
        ``SAEOutput.reconstruction``. The identity when inputs are not standardized."""
        if self.config.input_normalization == "none":
            return x_hat_n
        if self._remembered_standardization is None:
            raise ValueError(
                "decode maps back to the space of the input last given to encode, and this SAE "
                f"(input_normalization={self.config.input_normalization}) has encoded nothing yet; "
                "call encode(x) first, or decode_normalized(f) for its standardized space"
            )
        mean, std = self._remembered_standardization
        if x_hat_n.shape[:-1] != mean.shape[:-1]:
            raise ValueError(
                f"decode got features for {tuple(x_hat_n.shape[:-1])} tokens but the last encode "
                f"standardized {tuple(mean.shape[:-1])}; encode those inputs first, or use "
                "decode_normalized(f) for the SAE's standardized space"
            )
        return x_hat_n * std + mean

    def input_scale(self, std: torch.Tensor) -> torch.Tensor:
        """Per token, the factor back to the input's own scale: x - mean = x_n * input_scale(std),
        with (x_n, mean, std) from ``normalize_input`` (std + 1e-5 under the paper's layer_norm)."""
        if self.config.input_normalization == "layer_norm":
            return std + 1e-5
        return std

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU((x_n - b_dec) W_enc + b_enc), with x_n the normalized input."""
        x_n, _, _ = self.normalize_input(self._check_input(x))
        return self._pre(x_n)

    def _pre(self, x_n: torch.Tensor, observe: bool = False) -> torch.Tensor:
        flat = x_n.reshape(-1, self.config.d_in)
        raw = torch.addmm(self.b_enc, flat - self.b_dec, self.W_enc)
        if observe:
            self._observe(raw.detach(), flat)
        return torch.relu(raw).reshape(*x_n.shape[:-1], self.config.d_sae)

    @torch.no_grad()
    def _pre_no_grad(self, x_n: torch.Tensor) -> torch.Tensor:
        """ReLU((x_n - b_dec) W_enc + b_enc) [N, d_sae] for the routes that give the kept values
        their gradient themselves: one product, the ReLU in place."""
        raw = torch.addmm(self.b_enc, x_n - self.b_dec, self.W_enc)
        self._observe(raw, x_n)
        return raw.relu_()

    def _observe(self, raw: torch.Tensor, x_n: torch.Tensor) -> None:
        """While training, show the rule the encoder's product before the ReLU (``Rule.observe``;
        it may move the rule's estimated threshold before the selection reads it)."""
        if self.training and self.rule.observe is not None:
            self.rule.observe(self, raw, x_n)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations [..., d_sae], zeros where a feature is inactive.

        Remembers x's standardization (when inputs are standardized) for ``decode``, until the
        next encode: ``decode(encode(x))`` is a reconstruction of x in x's own space.
        """
        x = self._check_input(x)
        x_n, _, _ = self.normalize_input(x, remember=True)
        acts, _ = self._select(self._pre(x_n).reshape(-1, self.config.d_sae), x_n)
        return acts.reshape(*x.shape[:-1], self.config.d_sae)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """x_hat in the space of the input last given to ``encode``: ``decode_normalized(f)``
        with that input's standardization undone (``to_input_space``), as SAELens decodes. ``f``
        must have that input's leading shape when inputs are standardized."""
        return self.to_input_space(self.decode_normalized(f))

    def decode_normalized(self, f: torch.Tensor) -> torch.Tensor:
        """f W_dec + b_dec, in the SAE's working (normalized) space; the same as ``decode`` when
        inputs are not standardized. Needs no preceding ``encode``."""
        if f.shape[-1] != self.config.d_sae:
            raise ValueError(
                f"decode expects feature activations with last dimension d_sae="
                f"{self.config.d_sae}; got shape {tuple(f.shape)}"
            )
        return f @ self.W_dec + self.b_dec

    def _select(self, pre: torch.Tensor, x_n: torch.Tensor):
        """Apply the configured activation rule to pre [N, d_sae]; returns (acts, k or None)."""
        return self.rule.select(self, pre, x_n)

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
        dead_mask = self._check_dead_mask(dead_mask)
        lead_shape = x.shape[:-1]
        x_n, mean, std = self.normalize_input(x.reshape(-1, cfg.d_in))
        if self._sparse_path_pays():
            parts = self._forward_sparse(x_n, dead_mask)
        elif self.rule.sparse_path:  # a rule keeping a subset of the pre-activations, dense code
            parts = self._forward_masked(x_n, dead_mask)
        else:
            parts = self._forward_dense(x_n, dead_mask)
        recon_n, acts, l0, k, f_norm, aux_recon, sparsity_loss = parts

        paper = cfg.loss_convention == "paper"
        if paper:
            standardized = cfg.input_normalization == "layer_norm"
            terms = losses.paper_losses(x_n, recon_n, f_norm, aux_recon, standardized)
        else:
            terms = losses.v01_losses(x_n, recon_n, f_norm, aux_recon)
        mse_loss, afa_loss, aux_loss, loss_scale, aux_scale = terms
        matryoshka_loss = None
        if cfg.matryoshka_levels:
            matryoshka_loss = losses.matryoshka_loss(
                x_n, acts, self.W_dec, self.b_dec, cfg.matryoshka_prefixes, loss_scale, paper
            )
        recon_loss = losses.reconstruction_loss(mse_loss, matryoshka_loss, cfg.matryoshka_levels)
        loss = recon_loss + cfg.afa_coef * afa_loss + cfg.aux_coef * aux_loss + sparsity_loss

        output = SAEOutput(
            loss=loss,
            reconstruction=(recon_n * std + mean).reshape(*lead_shape, cfg.d_in),
            feature_acts=acts.reshape(*lead_shape, cfg.d_sae),
            l0=l0.to(x.dtype).reshape(lead_shape),
            k=None if k is None else k.reshape(lead_shape),
            mse_loss=mse_loss,
            afa_loss=afa_loss,
            aux_loss=aux_loss,
            sparsity_loss=sparsity_loss,
            loss_scale=loss_scale,
            aux_scale=aux_scale,
            matryoshka_loss=matryoshka_loss,
        )
        return output if return_dict else output.to_tuple()

    def _sparse_path_pays(self) -> bool:
        """Whether the code is sparse enough for row gathers to beat dense products."""
        if not self.rule.sparse_path:
            return False  # e.g. relu and jumprelu: their losses need the dense pre-activations
        return self.rule.kept_per_token(self) <= sparse.MAX_SPARSE_DENSITY * self.config.d_sae

    def _forward_dense(self, x_n: torch.Tensor, dead_mask: torch.Tensor | None):
        """The direct computation: dense activations, dense decoder product."""
        pre = self._pre(x_n, observe=True)
        acts, k = self._select(pre, x_n)
        recon_n = acts @ self.W_dec + self.b_dec
        if self.config.loss_convention == "paper":
            f_norm = torch.linalg.vector_norm(acts, dim=-1)  # the paper's ||f||: kept activations
        else:
            f_norm = scaled_feature_norm(acts, self.W_dec, self.b_dec)
        l0 = (acts != 0).sum(-1)
        aux_recon = None
        plan = self._aux_plan(pre, dead_mask)
        if plan is not None and plan[0] == "pairs":
            _, rows, cols = plan
            values = sparse.encode_pairs(x_n, self.b_dec, self.W_enc, self.b_enc, pre, rows, cols)
            aux_recon = sparse.decode_pairs(rows, cols, values, self.W_dec, pre.shape[0])
        elif plan is not None:
            aux_recon = self._aux_dense(x_n, *plan[1:])
        sparsity_loss = self._sparsity_loss(pre, acts, x_n)
        return recon_n, acts, l0, k, f_norm, aux_recon, sparsity_loss

    def _forward_masked(self, x_n: torch.Tensor, dead_mask: torch.Tensor | None):
        """The dense route for rules that keep a subset of the pre-activations: the encoder
        product and the selection run without autograd, and ``sparse.encode_dense`` gives the
        kept values their gradient with two products instead of autograd's three. The aux-k
        loss's dead columns, when taken as a block, share that gradient product."""
        with torch.no_grad():
            pre = self._pre_no_grad(x_n)
            plan = self._aux_plan(pre, dead_mask)
            block = block_cols = None
            if plan is not None and plan[0] == "dense":
                block_cols = plan[1]
                block = pre.index_select(1, block_cols)
            kept, k = self._select(pre, x_n)
        encoder = (x_n, self.b_dec, self.W_enc, self.b_enc)
        if block is None:
            acts = sparse.encode_dense(*encoder, kept)
        else:
            acts, block = sparse.encode_dense(*encoder, kept, block, block_cols)
        recon_n = acts @ self.W_dec + self.b_dec
        if self.config.loss_convention == "paper":
            f_norm = torch.linalg.vector_norm(acts, dim=-1)  # the paper's ||f||: kept activations
        else:
            f_norm = scaled_feature_norm(acts, self.W_dec, self.b_dec)
        l0 = activations.count_true(kept != 0)
        aux_recon = None
        if plan is not None and plan[0] == "pairs":
            _, rows, cols = plan
            values = sparse.encode_pairs(x_n, self.b_dec, self.W_enc, self.b_enc, pre, rows, cols)
            aux_recon = sparse.decode_pairs(rows, cols, values, self.W_dec, pre.shape[0])
        elif plan is not None:
            k_aux = plan[2]
            if k_aux < block_cols.numel():
                keep = block.detach().topk(k_aux, dim=-1, sorted=False).indices
                block = block * torch.zeros_like(block).scatter_(-1, keep, 1.0)
            aux_recon = block @ self.W_dec.index_select(0, block_cols)
        return recon_n, acts, l0, k, f_norm, aux_recon, pre.new_zeros(())

    def _forward_sparse(self, x_n: torch.Tensor, dead_mask: torch.Tensor | None):
        """Same values and gradients as the dense path, touching only the active features.

        The encoder product runs without autograd; the kept pre-activations are gathered by a
        function whose backward only visits the kept (token, feature) pairs, and the decoder sums
        the kept rows of W_dec with ``embedding_bag``. The aux-k pairs, when gathered, ride in
        the same two calls (as tokens N..2N-1 of the decoder), so each weight gets one gradient.
        """
        n_tokens = x_n.shape[0]
        with torch.no_grad():
            pre = self._pre_no_grad(x_n)  # no extra [N, d_sae] tensor
            rows, cols, k = self._select_pairs(pre, x_n)
            nonzero = sparse.gather(pre, rows, cols) > 0  # zeros add nothing, either way
            rows, cols = rows[nonzero], cols[nonzero]
            plan = self._aux_plan(pre, dead_mask)
            n_main = rows.numel()
            all_rows, all_cols, bags = rows, cols, rows
            if plan is not None and plan[0] == "pairs":
                all_rows = torch.cat([rows, plan[1]])
                all_cols = torch.cat([cols, plan[2]])
                bags = torch.cat([rows, plan[1] + n_tokens])
        n_bags = 2 * n_tokens if bags is not rows else n_tokens
        encoder = (x_n, self.b_dec, self.W_enc, self.b_enc, pre, all_rows, all_cols)
        if plan is not None and plan[0] == "dense":
            # all tokens on the dead columns, as one dense block riding in the same two calls
            _, dead, k_aux = plan
            all_values, block = sparse.encode_pairs(*encoder, block_cols=dead)
            if k_aux < dead.numel():
                keep = block.detach().topk(k_aux, dim=-1, sorted=False).indices
                block = block * torch.zeros_like(block).scatter_(-1, keep, 1.0)
            decoded, aux_recon = sparse.decode_pairs(
                bags, all_cols, all_values, self.W_dec, n_bags, block=block, block_cols=dead
            )
        else:
            all_values = sparse.encode_pairs(*encoder)
            decoded = sparse.decode_pairs(bags, all_cols, all_values, self.W_dec, n_bags)
            aux_recon = decoded[n_tokens:] if plan is not None else None
        recon_n = decoded[:n_tokens] + self.b_dec
        values = all_values[:n_main]
        acts = sparse.scatter_dense(rows, cols, values, tuple(pre.shape))
        paper = self.config.loss_convention == "paper"
        if not paper:
            values = values * torch.linalg.vector_norm(self.W_dec, dim=-1)[cols]
        sq = values.pow(2)  # summed in at least float: CUDA autocast's pow is float anyway
        sq = sq.float() if sq.dtype in (torch.bfloat16, torch.float16) else sq
        code_sq = torch.zeros(n_tokens, dtype=sq.dtype, device=sq.device).index_add(0, rows, sq)
        if paper:  # the paper's ||f||: kept activations
            f_norm = code_sq.clamp_min(1e-30).sqrt()
        else:  # ||f~||: decoder-scaled, with ||b_dec|| as one more entry
            f_norm = (code_sq + torch.linalg.vector_norm(self.b_dec).pow(2)).sqrt()
        l0 = torch.bincount(rows, minlength=n_tokens)
        return recon_n, acts, l0, k, f_norm, aux_recon, pre.new_zeros(())

    @torch.no_grad()
    def _select_pairs(self, pre: torch.Tensor, x_n: torch.Tensor):
        """The configured rule as (rows, cols) pairs sorted by token, and k (or None)."""
        return self.rule.select_pairs(self, pre, x_n)

    def _adapt_topafa_candidates(self, k: torch.Tensor) -> None:
        """Rank a little more than the largest k seen last time: enough for nearly every token,
        few enough that ranking costs about what TopK's does. The mean k, what a token keeps on
        average, decides the route (sparse or dense) as TopK's k does. Results never depend on
        either."""
        if k.numel():
            wanted = int(k.max()) * 5 // 4 + 8
            self._topafa_candidates = max(32, min(self.config.d_sae, wanted))
            self._topafa_mean_k = float(k.float().mean())

    @torch.no_grad()
    def _aux_plan(self, pre: torch.Tensor, dead_mask: torch.Tensor | None):
        """How the aux-k loss will pick its features: None (off), ("pairs", rows, cols) when
        aux_k is a small share of many dead features, else ("dense", dead, k_aux)."""
        if dead_mask is None or self.config.aux_coef == 0:
            return None
        dead = dead_mask.nonzero().squeeze(-1)
        n_dead = dead.numel()
        if n_dead == 0:
            return None
        k_aux = min(self.config.aux_k, n_dead)
        if k_aux > sparse.MAX_AUX_DENSITY * n_dead:
            return "dense", dead, k_aux
        pre = pre.detach()
        position = pre.index_select(-1, dead).topk(k_aux, dim=-1, sorted=False).indices
        rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k_aux)
        cols = dead[position.reshape(-1)]
        nonzero = sparse.gather(pre, rows, cols) > 0
        return "pairs", rows[nonzero], cols[nonzero]

    def _aux_dense(self, x_n: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
        """Aux reconstruction from the dead columns only: their pre-activations are recomputed
        with autograd (a product n_dead / d_sae the size of the encoder's)."""
        W_enc_dead = self.W_enc.index_select(1, dead)
        dead_pre = torch.relu(torch.addmm(self.b_enc[dead], x_n - self.b_dec, W_enc_dead))
        if k_aux < dead.numel():
            values, position = dead_pre.topk(k_aux, dim=-1, sorted=False)
            dead_pre = torch.zeros_like(dead_pre).scatter(-1, position, values)
        return dead_pre @ self.W_dec.index_select(0, dead)

    def _check_dead_mask(self, dead_mask: torch.Tensor | None) -> torch.Tensor | None:
        if dead_mask is None:
            return None
        if not isinstance(dead_mask, torch.Tensor) or dead_mask.shape != (self.config.d_sae,):
            shape = tuple(dead_mask.shape) if isinstance(dead_mask, torch.Tensor) else dead_mask
            raise ValueError(
                f"dead_mask must be a bool tensor of shape [d_sae={self.config.d_sae}]; "
                f"got {shape!r}"
            )
        return dead_mask.to(device=self.W_enc.device, dtype=torch.bool)

    def _sparsity_loss(self, pre, acts, x_n) -> torch.Tensor:
        """The rule's sparsity penalty (relu: L1, jumprelu: L0), weighted; zero when off."""
        rule = self.rule
        coef = getattr(self.config, rule.penalty_coef) if rule.penalty is not None else 0
        if coef > 0:
            return rule.penalty(self, pre, acts, x_n, coef)
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
        W, grad = self.W_dec, self.W_dec.grad
        # grad -= (grad . w / |w|^2) w per row; row dot products by bmm, so no W-sized temporaries
        norm_sq = torch.linalg.vector_norm(W, dim=-1).clamp_min(1e-12).square()
        dots = torch.bmm(grad.unsqueeze(1), W.unsqueeze(2)).reshape(-1)
        grad.addcmul_(W, (dots / norm_sq).unsqueeze(1), value=-1)

    # -- loading with clear errors -------------------------------------------------------------

    def push_to_hub(
        self,
        repo_id: str,
        *,
        metrics: dict | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        remote_code: bool = False,
        **kwargs,
    ) -> str:
        """Upload config, weights and the hf-topafa model card (see ``hf_topafa.hub.push_model``).

        Accepts the keywords of transformers' ``push_to_hub``; those about serialization
        (``safe_serialization``, ``max_shard_size``, ``use_temp_dir``) change nothing here, as
        an SAE is always one safetensors file, and ``create_pr`` and ``commit_description``
        are passed on.
        """
        # Looked up at call time by name: the Hub code is not part of the model, nor of
        # --remote-code bundles (whose loader would otherwise demand the hf_topafa package),
        # and hf_topafa.hub never imports this module.
        hub = importlib.import_module("hf_topafa.interop.hub")
        return hub.push_model(
            self,
            repo_id,
            metrics=metrics,
            private=bool(private),
            token=token if isinstance(token, str) else None,
            revision=revision,
            commit_message=commit_message,
            remote_code=remote_code,
            **hub.push_to_hub_extras(kwargs),
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, after checking a local folder's files for readable errors."""
        from ..sources import looks_local, not_found, prepare_hub_read

        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path):
            check_saved_sae(path)
        elif os.path.exists(path):
            raise NotADirectoryError(
                f"{path} is a file; give the folder holding config.json and model.safetensors"
            )
        elif looks_local(path):
            raise FileNotFoundError(
                f"no saved SAE at {path}: no such folder (give a folder holding config.json and "
                "model.safetensors, or a Hub id owner/name)"
            )
        elif "local_files_only" not in kwargs:
            kwargs.update(prepare_hub_read(path, "SAE"))  # seconds, not 30 s of retries
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except OSError as err:
            if os.path.isdir(path):
                raise
            local_only = bool(kwargs.get("local_files_only"))
            raise not_found(path, "SAE", err, local_only) from err

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' saver, refusing a path that is an existing file (it would do nothing)."""
        path = os.fspath(save_directory)
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotADirectoryError(
                f"cannot save the SAE to {path}: it is an existing file; give a folder path"
            )
        return super().save_pretrained(save_directory, *args, **kwargs)
