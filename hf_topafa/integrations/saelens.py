"""Top-AFA and the k-free rules inside SAELens: importing this module registers them.

After ``import hf_topafa.integrations.saelens``, SAELens loads (``SAE.load_from_disk``) and trains
(``SAETrainer``, and so ``SyntheticSAERunner`` and ``LanguageModelSAETrainingRunner``) SAEs whose
architecture is one of this package's rules that SAELens lacks: top-AFA and every k-free rule
(``SAELENS_REGISTERED``: ``topafa``, ``afa_band``, ``afa_batch``, ``noise_batch``,
``latent_noise``, ...). Their tensors are SAELens's (W_enc [d_in, d_sae], W_dec, b_enc, b_dec, and
``threshold`` for the rules that keep one); ``normalize_activations`` is "none", "layer_norm" (the
paper's standardization) or "expected_average_only_in".

The computation is this package's: each SAELens SAE runs a ``SparseAutoencoder`` that shares its
parameters (``hf_topafa_sae()``). ``encode`` selects features with that model's rule (SAELens's hook
points fire as in its own SAEs; ``hook_sae_acts_pre`` sees the ReLU'd pre-activations the rule
ranks); ``decode`` undoes the layer_norm of the last encode. A training step is that model's
forward with the paper's loss (MSE + afa_coef * norm matching + aux_coef * aux-k over SAELens's
dead features, in the standardized space); each step starts from unit-norm decoder rows and the
radial part of their gradient is removed, as this package's trainer does.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

try:
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )
    from sae_lens.saes.sae import SAE, TrainingSAE, TrainingSAEConfig, TrainStepOutput
    from sae_lens.saes.sae import SAEConfig as SAELensConfig
except ModuleNotFoundError as err:
    if err.name not in ("sae_lens", "sae_lens.registry", "sae_lens.saes.sae"):
        raise  # SAELens is there but one of its own dependencies is not: show which
    raise ImportError(
        'hf_topafa.integrations.saelens needs SAELens: pip install "hf-topafa[saelens]"'
    ) from None

from ..interop.convert_saelens import (
    CARRIED_FIELDS,
    METADATA_KEY,
    SAELENS_REGISTERED,
    TRANSFORMER_LENS_NAMES,
    parse_transformer_lens_hook,
)
from ..sae.configuration_sae import SAEConfig
from ..sae.modeling_sae import SparseAutoencoder
from ..sae.rules import get_rule

NORMALIZATIONS = ("none", "layer_norm", "expected_average_only_in")
"""SAELens's ``normalize_activations`` values these SAEs compute exactly (the last is folded into
the weights by SAELens's trainer, which is exact for every rule here)."""
TRAINING_FIELDS = ("afa_coef", "aux_k", "aux_coef", "batchtopk_threshold_momentum")
TENSOR_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
CLASS_PREFIXES = {
    "topafa": "TopAFA",
    "afa_band": "AFABand",
    "afa_universal": "AFAUniversal",
    "afa_batch": "AFABatch",
    "afa_count": "AFACount",
    "afa_mdl": "AFAMDL",
}


def hf_topafa_config(cfg) -> SAEConfig:
    """This package's SAEConfig for a SAELens config of a registered architecture: its sizes,
    rule and normalization, the provenance in its metadata, and its training fields (from the
    training config, else from what ``convert --to saelens`` kept in the metadata)."""
    meta = cfg.metadata
    ours = meta.get(METADATA_KEY) or {}
    fields = {name: ours[name] for name in CARRIED_FIELDS if name in ours}
    for name in (*TRAINING_FIELDS, "encoder_bias", "init"):
        if hasattr(cfg, name):
            fields[name] = getattr(cfg, name)
    layer, hook_point = parse_transformer_lens_hook(meta.get("hook_name"))
    model_name = meta.get("model_name")
    return SAEConfig(
        d_in=cfg.d_in,
        d_sae=cfg.d_sae,
        activation=cfg.architecture(),
        input_normalization="layer_norm" if cfg.normalize_activations == "layer_norm" else "none",
        base_model=TRANSFORMER_LENS_NAMES.get(model_name, model_name),
        layer=layer,
        hook_point=hook_point,
        dataset=meta.get("dataset_path"),
        context_length=meta.get("context_size"),
        **fields,
    )


def check_config(cfg) -> None:
    """Refuse, in one line, what these SAEs cannot compute exactly; then our own checks."""
    name = cfg.architecture()
    if not cfg.apply_b_dec_to_input:
        raise ValueError(
            f"{name} SAEs encode x - b_dec (their target norm is ||x - b_dec||); "
            "apply_b_dec_to_input must be True"
        )
    if cfg.normalize_activations not in NORMALIZATIONS:
        raise ValueError(
            f"normalize_activations={cfg.normalize_activations!r} is not exact for {name} "
            f"SAEs (it changes decoder norms or needs statistics they lack); use one of "
            f"{', '.join(NORMALIZATIONS)}"
        )
    hf_topafa_config(cfg)  # our ranges: afa_coef, aux_k, ...


@dataclasses.dataclass
class AFASAEConfig(SAELensConfig):
    """SAELens inference config of a registered architecture (one subclass per rule)."""

    def __post_init__(self):
        super().__post_init__()
        check_config(self)


@dataclasses.dataclass(kw_only=True)
class AFATrainingSAEConfig(TrainingSAEConfig):
    """SAELens training config of a registered architecture (one subclass per rule): the paper's
    loss weights and init, as this package's ``SAEConfig`` names them."""

    afa_coef: float = 1 / 32
    """lambda_AFA, weight of the norm-matching loss (the paper's units)."""
    aux_k: int = 512
    """Dead features the aux-k loss may use (dead: SAELens's ``dead_feature_window``)."""
    aux_coef: float = 1 / 32
    """Weight of the aux-k loss."""
    batchtopk_threshold_momentum: float = 0.99
    """afa_batch: EMA momentum of its inference threshold."""
    encoder_bias: bool = False
    """Whether b_enc is trained (the paper's top-AFA encoder has none)."""
    init: str = "kaiming"
    """The paper's ``kaiming`` (unit decoder rows) or ``unit_tied``."""
    decoder_init_norm: float | None = None
    """Must stay None: the decoder rows are kept at unit norm, as in the paper."""

    def __post_init__(self):
        super().__post_init__()
        if self.decoder_init_norm is not None:
            raise ValueError(
                f"decoder_init_norm must be None for {self.architecture()} SAEs: their decoder "
                f"rows start and stay at unit norm (init={self.init!r}); got "
                f"{self.decoder_init_norm!r}"
            )
        check_config(self)


class AFAComputation:
    """What the inference and training classes share: SAELens's tensors, run by this package's
    model. ``trains``: whether the model follows the SAELens module's train mode."""

    trains = False

    def initialize_weights(self) -> None:
        config = hf_topafa_config(self.cfg)
        with torch.device("meta"):  # its tensors are replaced by this module's at once
            model = SparseAutoencoder(config)
        d_in, d_sae = config.d_in, config.d_sae
        like = {"dtype": self.dtype, "device": self.device}
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae, **like))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in, **like))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **like), requires_grad=config.encoder_bias)
        self.b_dec = nn.Parameter(torch.zeros(d_in, **like))
        if model.rule.threshold == "learned":
            self.threshold = nn.Parameter(torch.empty(d_sae, **like))
        elif model.rule.threshold == "estimated":
            self.register_buffer("threshold", torch.empty(d_sae, **like))
        object.__setattr__(self, "_hf_topafa_model", model)  # not a submodule: no second copy
        if self.device.type != "meta":
            self.hf_topafa_sae().reset_parameters()

    def hf_topafa_sae(self) -> SparseAutoencoder:
        """This package's model of this SAE, sharing its parameters and threshold (re-shared
        here after a load or a move replaced them): what encode, decode and training run, and
        what this package's tools (``zf_diagnostics``, ``evaluate``, ``save_pretrained``) take."""
        model = self._hf_topafa_model
        current = dict(model.named_parameters(recurse=False))
        current.update(model.named_buffers(recurse=False))
        for name, tensor in [
            *self.named_parameters(recurse=False),
            *self.named_buffers(recurse=False),
        ]:
            if name not in TENSOR_NAMES or current.get(name) is tensor:
                continue
            if isinstance(tensor, nn.Parameter):
                model.register_parameter(name, tensor)
            else:
                model.register_buffer(name, tensor)
        return model.train(self.training and self.trains)

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature activations, ReLU'd pre-activations), remembering x's layer_norm for decode."""
        model = self.hf_topafa_sae()
        sae_in = self.hook_sae_input(self.reshape_fn_in(x.to(self.dtype)))
        x_n, _, _ = model.normalize_input(sae_in, remember=True)
        lead, d_sae = x_n.shape[:-1], self.cfg.d_sae
        flat = x_n.reshape(-1, self.cfg.d_in)
        # the model's own pre-activation, with the same operation (so the same numbers)
        pre = self.hook_sae_acts_pre(
            torch.relu(torch.addmm(self.b_enc, flat - self.b_dec, self.W_enc))
        )
        acts, _ = model.rule.select(model, pre, x_n)
        return self.hook_sae_acts_post(acts.reshape(*lead, d_sae)), pre.reshape(*lead, d_sae)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations of x [..., d_in] by this package's rule."""
        return self.encode_with_hidden_pre(x)[0]

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """f W_dec + b_dec, with the layer_norm of the last encode undone (as SAELens decodes)."""
        model = self.hf_topafa_sae()
        recons = self.hook_sae_recons(model.decode_normalized(feature_acts))
        return self.reshape_fn_out(model.to_input_space(recons), self.d_head)

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """SAELens's fold; an estimated threshold (afa_batch: on pre * ||W_dec,i||, whose
        decoder norms the fold divides; afa_count: an energy, divided twice) is divided too."""
        super().fold_activation_norm_scaling_factor(scaling_factor)
        threshold = getattr(self, "threshold", None)
        if threshold is not None and bool(threshold.min() >= 0):
            threshold.div_(scaling_factor ** get_rule(self.cfg.architecture()).threshold_power)

    def fold_activation_whitening(self, mean, whitening_matrix, unwhitening_matrix) -> None:
        raise NotImplementedError(
            f"{self.cfg.architecture()} SAEs do not fold a whitening: it changes decoder norms "
            "and the target norm ||x - b_dec||, so the features selected would change"
        )


class AFASAE(AFAComputation, SAE):
    """SAELens inference SAE of the registered architectures (which rule: the config's)."""


class AFATrainingSAE(AFAComputation, TrainingSAE):
    """SAELens training SAE of the registered architectures: a step is this package's forward
    with the paper's loss."""

    trains = True

    def get_coefficients(self) -> dict:
        return {}  # the loss weights are fixed (the config's afa_coef and aux_coef)

    def calculate_aux_loss(self, step_input, feature_acts, hidden_pre, sae_out) -> dict:
        return {}  # unused: training_forward_pass takes every term from the model's forward

    def training_forward_pass(self, step_input) -> TrainStepOutput:
        """One forward of this package's model on the batch, SAELens's dead features feeding
        its aux-k loss; the loss is the paper's. ``hidden_pre`` carries the kept activations
        (nothing in SAELens's trainer reads it; recomputing it would cost an encoder product)."""
        model = self.hf_topafa_sae()
        model.set_decoder_norm_to_unit_norm()
        if not getattr(self.W_dec, "hf_topafa_projected", False):
            self.W_dec.register_post_accumulate_grad_hook(
                lambda _: self._hf_topafa_model.remove_gradient_parallel_to_decoder_directions()
            )
            self.W_dec.hf_topafa_projected = True
        dead = step_input.dead_neuron_mask
        out = model(step_input.sae_in, dead_mask=None if dead is None else dead.bool())
        config = model.config
        losses = {
            "mse_loss": out.mse_loss,
            "afa_loss": config.afa_coef * out.afa_loss,
            "auxiliary_reconstruction_loss": config.aux_coef * out.aux_loss,
        }
        metrics = {} if out.k is None else {"mean_k": out.k.float().mean()}
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=out.reconstruction,
            feature_acts=out.feature_acts,
            hidden_pre=out.feature_acts,
            loss=out.loss,
            losses=losses,
            metrics=metrics,
        )


def config_classes(rule: str) -> tuple[type, type]:
    """The inference and training config classes of ``rule`` (``architecture()`` is its name)."""
    prefix = CLASS_PREFIXES.get(rule, rule.title().replace("_", ""))

    def architecture(cls) -> str:
        return rule

    made = []
    for base, suffix in ((AFASAEConfig, "SAEConfig"), (AFATrainingSAEConfig, "TrainingSAEConfig")):
        name = prefix + suffix
        attributes = {"architecture": classmethod(architecture), "__module__": __name__}
        attributes.update(__qualname__=name, __doc__=f"{base.__doc__.split('(')[0]}: {rule}.")
        made.append(type(name, (base,), attributes))
    return made[0], made[1]


CONFIG_CLASSES: dict[str, tuple[type, type]] = {
    rule: config_classes(rule) for rule in SAELENS_REGISTERED
}
"""rule -> (inference config class, training config class), as registered with SAELens."""
TopAFASAEConfig, TopAFATrainingSAEConfig = CONFIG_CLASSES["topafa"]
AFABandSAEConfig, AFABandTrainingSAEConfig = CONFIG_CLASSES["afa_band"]
AFAUniversalSAEConfig, AFAUniversalTrainingSAEConfig = CONFIG_CLASSES["afa_universal"]
AFABatchSAEConfig, AFABatchTrainingSAEConfig = CONFIG_CLASSES["afa_batch"]


def register() -> None:
    """Register every rule of ``SAELENS_REGISTERED`` with SAELens (once; importing this module
    does it). An architecture of the same name from another library is an error."""
    for rule, (config, training_config) in CONFIG_CLASSES.items():
        for registry, add, classes in (
            (SAE_CLASS_REGISTRY, register_sae_class, (AFASAE, config)),
            (
                SAE_TRAINING_CLASS_REGISTRY,
                register_sae_training_class,
                (AFATrainingSAE, training_config),
            ),
        ):
            present = registry.get(rule)
            if present is None:
                add(rule, *classes)
            elif present[0].__module__ != __name__:
                raise ImportError(
                    f"SAELens already has an architecture named {rule!r} "
                    f"({present[0].__module__}.{present[0].__qualname__}); hf-topafa cannot "
                    "register its rule under that name"
                )


register()
