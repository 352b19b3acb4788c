"""Our SAEs inside the real SAELens (sae-lens 6.54): written by ``convert --to saelens``, loaded by
``SAE.load_from_disk`` with the same encode and reconstruction, trained by SAELens's own
``SAETrainer`` and ``SyntheticSAERunner`` with this package's step, and read back unchanged.

Every test but the first needs sae-lens; without it they are skipped with the reason (``-ra``).
"""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.cli import main as cli
from hf_topafa.integrations.saelens_export import to_saelens
from hf_topafa.interop.convert import convert
from hf_topafa.interop.convert_common import UnsupportedSAEError
from hf_topafa.interop.convert_saelens import CARRIED_FIELDS, SAELENS_REGISTERED
from hf_topafa.sae.rules import ACTIVATIONS, get_rule

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # SAELens's advice to load the base model without weight processing: right for our SAEs
    pytest.mark.filterwarnings(r"ignore:\s*This SAE has non-empty model_from_pretrained_kwargs"),
]

D_IN, D_SAE = 16, 64
NORMALIZATIONS = ("none", "layer_norm")
SAELENS_CLASS = {"relu": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE"}
SAELENS_CLASS["batchtopk"] = "JumpReLUSAE"  # as SAELens saves its own BatchTopK SAEs
COMPARED = ("activation", "k", "input_normalization", "base_model", "layer", "hook_point")
COMPARED += ("dataset", "context_length", *CARRIED_FIELDS)


@pytest.fixture(scope="module")
def saelens():
    """The SAELens module, with our architectures registered; skips when it is not installed."""
    module = pytest.importorskip(
        "sae_lens", reason='sae-lens is not installed (pip install "hf-topafa[saelens]")'
    )
    importlib.import_module("hf_topafa.integrations.saelens")
    return module


def inputs(seed: int = 1, n: int = 256) -> torch.Tensor:
    """Activations with an offset and a scale, so that standardization matters."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g) * 3 + torch.randn(D_IN, generator=g)


def make_sae(activation: str, normalization: str) -> SparseAutoencoder:
    config = SAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        activation=activation,
        k=4 if get_rule(activation).needs_k else None,
        input_normalization=normalization,
        base_model="openai-community/gpt2",
        layer=3,
        hook_point="resid_post",
        dataset="tiny-org/tiny-text",
        context_length=128,
        afa_coef=1 / 64,
    )
    torch.manual_seed(0)
    sae = SparseAutoencoder(config)
    with torch.no_grad():  # non-zero biases and thresholds, so a writer that drops them shows
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.3)
        if activation == "jumprelu":
            sae.threshold.uniform_(0, 0.3)
        if get_rule(activation).threshold == "estimated":
            sae.train()(inputs(seed=5))  # estimates the inference threshold, as training does
        # a random decoder on noise: no latent pays the level alone, or the price set
        if activation in ("risk_floor", "risk_calibrated", "risk_balance", "risk_switch"):
            sae.threshold.mul_(0.01)
    return sae.eval()


def same_active_set(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.equal(a != 0, b != 0), "the features kept differ"
    assert (a != 0).any() and (a == 0).any()


# -- without SAELens ------------------------------------------------------------------------------


def test_import_without_saelens_is_one_clear_line(monkeypatch):
    for name in ("sae_lens", "sae_lens.registry", "sae_lens.saes", "sae_lens.saes.sae"):
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "hf_topafa.integrations.saelens", raising=False)
    with pytest.raises(ImportError) as caught:
        importlib.import_module("hf_topafa.integrations.saelens")
    message = str(caught.value)
    assert message == (
        'hf_topafa.integrations.saelens needs SAELens: pip install "hf-topafa[saelens]"'
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_export_refuses_what_saelens_cannot_compute(tmp_path):
    with pytest.raises(UnsupportedSAEError, match="layer_norm_biased.*no SAELens counterpart"):
        to_saelens(make_sae("topafa", "layer_norm_biased"), tmp_path / "a")
    fresh = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=D_SAE, activation="batchtopk", k=4))
    with pytest.raises(UnsupportedSAEError, match="no inference threshold yet"):
        to_saelens(fresh, tmp_path / "b")
    with pytest.raises(TypeError, match="unknown arguments hook"):
        to_saelens(make_sae("topafa", "none"), tmp_path / "c", hook="x")
    assert not any(tmp_path.iterdir()), "a refused export must write nothing"


def test_written_folder_is_saelens_format(tmp_path):
    folder = to_saelens(make_sae("topafa", "layer_norm"), tmp_path / "sl")
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "topafa" and cfg["normalize_activations"] == "layer_norm"
    assert cfg["apply_b_dec_to_input"] is True and (cfg["d_in"], cfg["d_sae"]) == (D_IN, D_SAE)
    meta = cfg["metadata"]
    assert meta["model_name"] == "gpt2"  # the TransformerLens alias of openai-community/gpt2
    assert meta["hook_name"] == "blocks.3.hook_resid_post"
    assert (meta["dataset_path"], meta["context_size"]) == ("tiny-org/tiny-text", 128)
    assert meta["hf_topafa"]["afa_coef"] == 1 / 64
    with pytest.raises(FileExistsError, match="not empty"):
        to_saelens(make_sae("topafa", "none"), folder)
    to_saelens(make_sae("topafa", "none"), folder, overwrite=True)
    assert json.loads((folder / "cfg.json").read_text())["normalize_activations"] == "none"


# -- loaded by SAELens ----------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_saelens_loads_with_same_encode_and_reconstruction(
    saelens, tmp_path, activation, normalization
):
    sae = make_sae(activation, normalization)
    loaded = saelens.SAE.load_from_disk(to_saelens(sae, tmp_path / "sl"))
    assert type(loaded).__name__ == SAELENS_CLASS.get(activation, "AFASAE")
    assert loaded.cfg.normalize_activations == normalization
    x = inputs()
    with torch.no_grad():
        ours, acts = sae(x), sae.encode(x)
        theirs = loaded.encode(x)
        x_hat = loaded.decode(theirs)
        forward = loaded(x)
    same_active_set(theirs, acts)
    tolerance = 0 if activation in SAELENS_REGISTERED else 1e-5  # ours run the same code
    torch.testing.assert_close(theirs, acts, rtol=0, atol=tolerance)
    torch.testing.assert_close(x_hat, ours.reconstruction, rtol=0, atol=1e-4)
    torch.testing.assert_close(forward, x_hat, rtol=0, atol=0)
    if normalization == "layer_norm":  # decode maps back to x's space: far from the working one
        assert (x_hat - sae.decode_normalized(acts)).abs().max() > 1


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_to_saelens_then_from_saelens_is_the_same_sae(tmp_path, activation, normalization):
    sae = make_sae(activation, normalization)
    back = convert("saelens", to_saelens(sae, tmp_path / "sl"))
    assert back.state_dict().keys() == sae.state_dict().keys()
    for name, tensor in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    for name in COMPARED:
        assert getattr(back.config, name) == getattr(sae.config, name), name
    x = inputs()
    with torch.no_grad():
        assert torch.equal(back.encode(x), sae.encode(x))
        assert torch.equal(back(x).reconstruction, sae(x).reconstruction)


def test_registered_sae_fires_saelens_hooks_and_follows_moves(saelens, tmp_path):
    sae = make_sae("topafa", "layer_norm")
    loaded = saelens.SAE.load_from_disk(to_saelens(sae, tmp_path / "sl"))
    x = inputs()
    with torch.no_grad():
        out, cache = loaded.run_with_cache(x)
    for hook in ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons"):
        assert hook in cache, hook
    torch.testing.assert_close(cache["hook_sae_acts_post"], sae.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(cache["hook_sae_acts_pre"], sae.pre_activations(x), rtol=0, atol=0)
    # what this package's model runs follows SAELens's dtype moves and loads
    loaded = loaded.to(torch.float64)
    assert loaded.hf_topafa_sae().W_enc.dtype == torch.float64
    with torch.no_grad():
        f64 = loaded.encode(x.double())
    same_active_set(f64, sae.encode(x))
    assert isinstance(loaded.hf_topafa_sae(), SparseAutoencoder)
    assert loaded.hf_topafa_sae().W_dec is loaded.W_dec
    loaded.fold_W_dec_norm()  # exact for the AFA rules: the kept set does not change
    with torch.no_grad():
        same_active_set(loaded.encode(x.double()), f64)


# -- trained by SAELens ---------------------------------------------------------------------------


def reference_steps(model: SparseAutoencoder, batches, lr: float, window: int) -> None:
    """This package's step in SAETrainer's order (unit decoder rows, forward with SAELens's dead
    mask, backward, radial gradient removed, norm clipped at 1, Adam 0.9/0.999)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(model.config.d_sae)
    model.train()
    for x in batches:
        dead = since_fired > window
        model.set_decoder_norm_to_unit_norm()
        out = model(x, dead_mask=dead)
        out.loss.backward()
        model.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        since_fired += 1
        since_fired[(out.feature_acts != 0).any(0)] = 0


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("rule", SAELENS_REGISTERED)
def test_saetrainer_trains_with_this_packages_step(saelens, tmp_path, rule, normalization):
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from hf_topafa.integrations.saelens import CONFIG_CLASSES, AFATrainingSAE, hf_topafa_config

    cfg = CONFIG_CLASSES[rule][1](
        d_in=D_IN, d_sae=D_SAE, normalize_activations=normalization, aux_k=8, afa_coef=1 / 16
    )
    torch.manual_seed(0)
    trained = AFATrainingSAE(cfg)
    reference = SparseAutoencoder(hf_topafa_config(cfg))
    reference.load_state_dict(trained.state_dict())
    batches = [inputs(seed) for seed in range(10, 18)]
    window, lr = 2, 3e-3
    trainer_cfg = SAETrainerConfig(
        total_training_samples=sum(len(b) for b in batches),
        train_batch_size_samples=len(batches[0]),
        lr=lr,
        lr_end=lr,
        dead_feature_window=window,
        logger=LoggingConfig(log_to_wandb=False),
    )
    start = trained.W_enc.detach().clone()
    SAETrainer(trainer_cfg, trained, iter(batches)).fit()
    reference_steps(reference, batches, lr, window)
    assert (trained.W_enc - start).abs().max() > 1e-3, "training changed nothing"
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], tensor, rtol=0, atol=1e-6)
    assert torch.equal(trained.b_enc, torch.zeros(D_SAE))  # the paper's encoder has no bias

    # SAELens's inference file loads in SAELens and converts back to this package
    trained.save_inference_model(tmp_path / "inference")
    loaded = saelens.SAE.load_from_disk(tmp_path / "inference")
    back = convert("saelens", tmp_path / "inference")
    assert (back.config.activation, back.config.afa_coef, back.config.aux_k) == (rule, 1 / 16, 8)
    x = inputs()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), reference.eval().encode(x))
        assert torch.equal(back.encode(x), reference.encode(x))


def test_training_step_loss_is_the_models_forward_loss(saelens):
    from sae_lens.saes.sae import TrainStepInput

    from hf_topafa.integrations.saelens import AFATrainingSAE, TopAFATrainingSAEConfig

    sae = AFATrainingSAE(TopAFATrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, aux_k=8))
    x, dead = inputs(), torch.arange(D_SAE) % 3 == 0
    step = sae.training_forward_pass(TrainStepInput(x, {}, dead, 0, False))
    with torch.no_grad():
        model = SparseAutoencoder(sae.hf_topafa_sae().config).train()
        model.load_state_dict(sae.state_dict())
        out = model(x, dead_mask=dead)
    torch.testing.assert_close(step.loss, out.loss, rtol=0, atol=0)
    assert set(step.losses) == {"mse_loss", "afa_loss", "auxiliary_reconstruction_loss"}
    assert step.losses["auxiliary_reconstruction_loss"] > 0
    torch.testing.assert_close(step.sae_out, out.reconstruction)
    step.loss.backward()
    radial = (sae.W_dec.grad * sae.W_dec).sum(-1)  # removed by the hook during backward
    assert radial.abs().max() < 1e-6 * sae.W_dec.grad.abs().max()


def test_synthetic_sae_runner_trains_topafa(saelens, tmp_path):
    from sae_lens.config import LoggingConfig
    from sae_lens.synthetic.synthetic_model import SyntheticModelConfig
    from sae_lens.synthetic.synthetic_sae_runner import SyntheticSAERunner, SyntheticSAERunnerConfig

    from hf_topafa.integrations.saelens import TopAFATrainingSAEConfig

    config = SyntheticSAERunnerConfig(
        synthetic_model=SyntheticModelConfig(num_features=32, hidden_dim=D_IN, seed=0),
        sae=TopAFATrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations="layer_norm"),
        training_samples=64 * 20,
        batch_size=64,
        output_path=str(tmp_path / "out"),
        checkpoint_path=None,
        eval_samples=512,
        logger=LoggingConfig(log_to_wandb=False),
    )
    result = SyntheticSAERunner(config).run()
    assert result.final_eval is not None and result.final_eval.sae_l0 > 0
    loaded = saelens.SAE.load_from_disk(tmp_path / "out")
    assert loaded.cfg.architecture() == "topafa"
    back = convert("saelens", tmp_path / "out")
    x = inputs()
    with torch.no_grad():
        assert torch.equal(back.encode(x), loaded.encode(x))


@pytest.mark.parametrize("rule", SAELENS_REGISTERED)
def test_input_scale_fold_is_exact(saelens, tmp_path, rule):
    """SAELens's trainer folds expected_average_only_in into the weights; for the AFA rules the
    features kept do not change (afa_batch's threshold is divided too). Our reader folds a
    folder saved before that fold the same way."""
    from hf_topafa.integrations.saelens import AFASAE, CONFIG_CLASSES

    sae = make_sae(rule, "none")
    folder = to_saelens(sae, tmp_path / "sl")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["normalize_activations"] = "expected_average_only_in"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    scale, x = 2.5, inputs()
    back = convert("saelens", folder, norm_scaling_factor=scale)
    loaded = saelens.SAE.load_from_disk(folder)
    assert isinstance(loaded, AFASAE) and isinstance(loaded.cfg, CONFIG_CLASSES[rule][0])
    with torch.no_grad():
        scaled = loaded.encode(x * scale)  # SAELens's ActivationScaler multiplies inputs
        loaded.fold_activation_norm_scaling_factor(scale)
        assert loaded.cfg.normalize_activations == "none"
        folded = loaded.encode(x)
        ours = back.encode(x)
    for acts in (folded, ours):
        same_active_set(acts, scaled)
        torch.testing.assert_close(acts, scaled, rtol=1e-5, atol=1e-5)


def test_saelens_configs_refuse_what_is_not_exact(saelens):
    from hf_topafa.integrations.saelens import TopAFASAEConfig, TopAFATrainingSAEConfig

    with pytest.raises(ValueError, match="decoder_init_norm must be None"):
        TopAFATrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, decoder_init_norm=0.1)
    with pytest.raises(ValueError, match="covariance_whitening.*not exact for topafa"):
        TopAFATrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, normalize_activations="covariance_whitening"
        )
    with pytest.raises(ValueError, match="apply_b_dec_to_input must be True"):
        TopAFASAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)
    with pytest.raises(ValueError, match="afa_coef"):
        TopAFATrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, afa_coef=-1.0)
    sae = saelens.SAE.from_dict(TopAFASAEConfig(d_in=D_IN, d_sae=D_SAE).to_dict())
    with pytest.raises(NotImplementedError, match="do not fold a whitening"):
        sae.fold_activation_whitening(torch.zeros(D_IN), torch.eye(D_IN), torch.eye(D_IN))


def test_cli_convert_to_saelens_and_back(tmp_path, capsys):
    sae = make_sae("topafa", "layer_norm")
    sae.save_pretrained(tmp_path / "run")
    assert cli(["convert", "--to", "saelens", str(tmp_path / "run"), str(tmp_path / "sl")]) == 0
    out = capsys.readouterr().out
    assert "as SAELens architecture topafa" in out and "import hf_topafa.integrations" in out
    assert cli(["convert", "--from", "saelens", str(tmp_path / "sl"), str(tmp_path / "back")]) == 0
    back = SparseAutoencoder.from_pretrained(tmp_path / "back")
    assert all(torch.equal(back.state_dict()[n], t) for n, t in sae.state_dict().items())
    argv = ["convert", "--to", "saelens", str(tmp_path / "run"), str(tmp_path / "x")]
    assert cli([*argv, "--norm-scaling-factor", "2"]) == 2
    assert "applies to --from only" in capsys.readouterr().err
    assert cli(["convert", "--to", "sparsify", str(tmp_path / "run"), str(tmp_path / "y")]) == 2
    assert "formats written: saelens" in capsys.readouterr().err
    assert cli(["convert", "--to", "saelens", str(tmp_path / "nothing"), str(tmp_path / "z")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
