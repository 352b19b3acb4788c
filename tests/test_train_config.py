"""TrainConfig's sections: each flag lands in its section, flat keywords and old flat
training_config.json files still work, and the SAE's settings are checked once for both
training and SAEConfig."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing

import pytest
import torch

from hf_topafa import SAEConfig
from hf_topafa.interop.model_card import _training_summary, public_training_config
from hf_topafa.names import MANIFEST
from hf_topafa.sae.sae_settings import SAESettings
from hf_topafa.training.train import train
from hf_topafa.training.train_config import (
    FIELD_SECTION,
    RUN_CONTROL,
    SECTIONS,
    DataArgs,
    OptimArgs,
    RunArgs,
    TrainConfig,
    build_parser,
    flat_training_config,
    parse_config,
)

# Non-default values for the fields a type alone cannot pick (paths that must exist, rules).
SPECIAL = {"activation": "relu", "dataset": "someone/some-dataset", "warmup_fraction": 0.25}


def _other_value(section, f: dataclasses.Field, tmp_path):
    """A valid value of field ``f`` other than its default, and its command-line text."""
    if f.name in SPECIAL:
        return SPECIAL[f.name], str(SPECIAL[f.name])
    if f.name in ("activation_cache", "eval_cache"):
        folder = tmp_path / f.name
        folder.mkdir()
        (folder / MANIFEST).write_text("{}")
        return str(folder), str(folder)
    hint = typing.get_type_hints(section)[f.name]
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    kind = kinds[0]
    if typing.get_origin(hint) is typing.Literal:
        value = next(v for v in typing.get_args(hint) if v != f.default)
        return value, value
    if kind is bool:  # a switch: no value on the command line
        value = not f.default if f.default is not None else True
        return value, None
    if kind is int:
        value = 7 if f.default is None else f.default + 1
        return value, str(value)
    if kind is float:
        value = f.default / 2 if f.default else 0.125
        return value, repr(value)
    return "something-else", "something-else"


@pytest.mark.parametrize(
    "section, name", [(s, f.name) for s in SECTIONS.values() for f in dataclasses.fields(s)]
)
def test_each_flag_lands_in_its_section_and_nowhere_else(section, name, tmp_path):
    f = next(f for f in dataclasses.fields(section) if f.name == name)
    value, text = _other_value(section, f, tmp_path)
    assert value != f.default
    section_name = next(k for k, cls in SECTIONS.items() if cls is section)
    # a rule-specific option goes with a rule that reads it (RULE_OPTION_USER, below)
    base = {}
    if name in RULE_OPTION_USER:
        base["activation"] = RULE_OPTION_USER[name][0]
        if base["activation"] in ("topk", "batchtopk") and name != "k":
            base["k"] = 8
    base_argv = [a for key, v in base.items() for a in (f"--{key}", str(v))]
    # both spellings work: --max-tokens and --max_tokens; a switch is --x, or --no-x when on
    spelling = name.replace("_", "-") if len(name) % 2 else name
    if text is None:
        spelling = f"no-{spelling}" if f.default is True else spelling
    config = parse_config([*base_argv, f"--{spelling}", *([] if text is None else [text])])
    assert getattr(getattr(config, section_name), name) == value
    expected = {**TrainConfig().to_flat(), **base, name: value}
    assert config.to_flat() == expected  # no other field moved
    assert config == TrainConfig.from_flat(**base, **{name: value})


def test_help_lists_every_field_under_its_section():
    parser = build_parser()
    groups = {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}
    for section in SECTIONS.values():
        names = {f.name for f in dataclasses.fields(section)}
        assert names <= groups[section._argument_group_name], section
    assert set(FIELD_SECTION) == {f.name for s in SECTIONS.values() for f in dataclasses.fields(s)}
    assert len(FIELD_SECTION) == sum(len(dataclasses.fields(s)) for s in SECTIONS.values())
    assert RUN_CONTROL == tuple(f.name for f in dataclasses.fields(RunArgs))
    text = parser.format_help()
    for heading in ("data:", "the SAE:", "optimization:", "the run:"):
        assert f"\n{heading}\n" in text


def test_flat_keywords_route_to_sections_and_unknown_ones_are_named():
    config = TrainConfig.from_flat(layer=3, k=16, activation="topk", lr=1e-3, output="o")
    assert (config.data.layer, config.sae.k, config.optim.lr, config.run.output) == (
        3,
        16,
        1e-3,
        "o",
    )
    assert config == TrainConfig(
        data=DataArgs(layer=3),
        sae=SAESettings(activation="topk", k=16),
        optim=OptimArgs(lr=1e-3),
        run=RunArgs(output="o"),
    )
    with pytest.raises(
        ValueError, match=r"unknown field\(s\) learning_rate; valid fields: .*\blr\b"
    ):
        TrainConfig.from_flat(learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"unknown field\(s\) layer in section optim"):
        TrainConfig(optim={"layer": 3})
    with pytest.raises(TypeError, match="optim must be OptimArgs or a dict"):
        TrainConfig(optim=3)


def test_sections_are_copied_and_checked_again():
    """dataclasses.replace(config) (what train() does) copies every section and validates it."""
    config = TrainConfig.from_flat(k=8, activation="topk")
    copy = dataclasses.replace(config)
    copy.sae.k = 9
    assert config.sae.k == 8
    config.sae.k = 0
    with pytest.raises(ValueError, match="k must be a positive integer"):
        dataclasses.replace(config)
    config.sae.k, config.optim.batch_size = 8, 10**9
    with pytest.raises(ValueError, match="max_tokens=81920 is less than one batch"):
        dataclasses.replace(config)


def test_nested_and_flat_forms_read_the_same(tmp_path):
    config = TrainConfig.from_flat(activation="topk", k=32, lr=1e-3, layer=4, output="r")
    nested, flat = config.to_dict(), config.to_flat()
    assert list(nested) == ["data", "sae", "optim", "run"] and nested["optim"]["lr"] == 1e-3
    assert TrainConfig.from_dict(nested) == TrainConfig.from_dict(flat) == config
    assert flat_training_config(nested) == flat_training_config(flat) == flat
    # a --config file may be either form, or mix them
    for name, data in (("nested.json", nested), ("flat.json", flat)):
        (tmp_path / name).write_text(json.dumps(data))
        assert parse_config(["--config", str(tmp_path / name)]) == config
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("lr: 2e-3\nsae:\n  activation: topk\n  k: 8\nrun: {output: m}\n")
    parsed = parse_config(["--config", str(mixed), "--k", "12"])
    assert (parsed.optim.lr, parsed.sae.k, parsed.run.output) == (2e-3, 12, "m")
    twice = tmp_path / "twice.yaml"
    twice.write_text("lr: 2e-3\noptim: {lr: 1e-3}\n")
    with pytest.raises(ValueError, match="lr is given twice"):
        parse_config(["--config", str(twice)])
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("optim: {layer: 3}\n")
    with pytest.raises(ValueError, match=r"layer in section optim; valid: max_tokens"):
        parse_config(["--config", str(wrong)])


SMALL = dict(d_sae=64, batch_size=64, eval_tokens=64, max_tokens=256, log_with="none")
SMALL.update(progress=False, checkpoint_every=2)


def test_a_run_with_an_old_flat_training_config_resumes(tmp_path):
    """Runs written before the sections have a flat training_config.json: still the same run."""
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    run = tmp_path / "run"
    train(TrainConfig.from_flat(output=str(run), **SMALL), data=x)
    nested = json.loads((run / "training_config.json").read_text())
    assert set(nested) == {"data", "sae", "optim", "run"}
    assert nested["sae"]["dead_tokens_threshold"] == 5 * 64 and nested["sae"]["d_sae"] == 64
    old = flat_training_config(nested)
    assert "lr" in old and "output" in old and "sae" not in old
    (run / "training_config.json").write_text(json.dumps(old))  # as hf-topafa wrote it before

    with pytest.raises(
        ValueError, match=r"holds a different run \(lr: saved 0\.0003, now 0\.001\)"
    ):
        train(TrainConfig.from_flat(output=str(run), lr=1e-3, resume=True, **SMALL), data=x)
    weights = (run / "model.safetensors").read_bytes()
    # run-control fields (here log_every, keep_checkpoints) may change on resumption
    again = train(
        TrainConfig.from_flat(
            output=str(run), resume=True, log_every=3, keep_checkpoints=1, **SMALL
        ),
        data=x,
    )
    assert again == run and (run / "model.safetensors").read_bytes() == weights  # step 4 of 4
    assert json.loads((run / "training_config.json").read_text()) == old  # left as it was
    assert parse_config(["--config", str(run / "training_config.json")]).optim.max_tokens == 256


def test_a_run_written_before_a_field_existed_is_the_same_run_at_its_default(tmp_path):
    """A training_config.json without a later field (matryoshka_levels, synthetic) meant its
    default: resuming at the default is allowed, asking for another value is a different run."""
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    run = tmp_path / "run"
    train(TrainConfig.from_flat(output=str(run), **SMALL), data=x)
    saved = json.loads((run / "training_config.json").read_text())
    del saved["sae"]["matryoshka_levels"], saved["data"]["synthetic"]
    (run / "training_config.json").write_text(json.dumps(saved))
    assert train(TrainConfig.from_flat(output=str(run), resume=True, **SMALL), data=x) == run
    with pytest.raises(ValueError, match=r"different run \(matryoshka_levels: saved None, now 2\)"):
        train(TrainConfig.from_flat(output=str(run), resume=True, matryoshka_levels=2, **SMALL),
              data=x)  # fmt: skip


def test_sae_config_from_settings_keeps_its_own_defaults_and_format():
    settings = SAESettings(activation="topk", k=8, afa_coef=0.0)
    config = SAEConfig.from_settings(
        settings, d_in=16, dead_tokens_threshold=640, layer=2, hook_point="resid_post"
    )
    by_hand = SAEConfig(
        d_in=16, activation="topk", k=8, afa_coef=0.0, dead_tokens_threshold=640,
        input_normalization="layer_norm", layer=2, hook_point="resid_post",
    )  # fmt: skip
    assert config.to_dict() == by_hand.to_dict()
    assert (
        config.d_sae == 128 and config.encoder_bias is False and config.loss_convention == "paper"
    )
    assert set(config.to_dict()) == set(SAEConfig().to_dict())  # config.json: the same keys
    # a bare SAEConfig keeps its own defaults; training's differ on purpose
    bare = SAEConfig()
    assert (bare.input_normalization, bare.dead_tokens_threshold) == ("none", 10_000_000)
    assert (SAESettings().input_normalization, SAESettings().dead_tokens_threshold) == (
        "layer_norm",
        None,
    )
    with pytest.raises(ValueError, match="dead_tokens_threshold must be a positive integer"):
        SAEConfig.from_settings(SAESettings(), d_in=16)  # None: training resolves it first


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(afa_coef=-1.0), "afa_coef"),
        (dict(jumprelu_bandwidth=0.0), "jumprelu_bandwidth"),
        (dict(input_normalization="rms"), "input_normalization must be one of none"),
        (dict(activation="topk", k=100, d_sae=64), "k must be at most d_sae=64"),
        (dict(activation="gelu"), "activation must be one of topafa"),
        (
            dict(batchtopk_threshold_momentum=1.0),
            r"batchtopk_threshold_momentum must be in \[0, 1\)",
        ),
        (dict(encoder_bias="yes"), "encoder_bias must be true or false"),
    ],
)
def test_one_validation_for_training_and_the_sae_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_flat(**kwargs)
    with pytest.raises(ValueError, match=message):
        SAEConfig(d_in=8, **{"d_sae": 32, **kwargs})


def test_train_config_imports_without_torch():
    code = (
        "import sys, hf_topafa.train_config, hf_topafa.sae_settings;"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_model_card_reads_both_forms():
    nested = TrainConfig.from_flat(max_tokens=200_000, output="/home/someone/run").to_dict()
    nested["data"]["activation_cache"] = "/home/someone/cache"
    public = public_training_config(nested)
    assert "output" not in public["run"] and public["run"]["log_every"] == 10
    assert "activation_cache" not in public["data"] and public["data"]["layer"] == 15
    assert "/home/someone" not in json.dumps(public)
    sae = SAEConfig(d_in=8, d_sae=32)
    for training in (nested, flat_training_config(nested)):
        assert "Training budget: **200,000 tokens**" in _training_summary(sae, training, {})


def test_sae_settings_are_exactly_the_sae_configs_hyperparameters():
    """A new SAEConfig argument needs its SAESettings field (the training flag), and back."""
    import inspect

    provenance = {"d_in", "base_model", "layer", "hook_point", "dataset", "context_length"}
    arguments = set(inspect.signature(SAEConfig.__init__).parameters) - {"self", "kwargs"}
    assert {f.name for f in dataclasses.fields(SAESettings)} == arguments - provenance


# The options only some rules read, and one rule that reads each.
RULE_OPTION_USER = {
    "k": ("topk", 8),
    "l1_coef": ("relu", 0.5),
    "l0_coef": ("jumprelu", 0.01),
    "jumprelu_init_threshold": ("jumprelu", 0.1),
    "jumprelu_bandwidth": ("jumprelu", 0.01),
    "batchtopk_threshold_momentum": ("batchtopk", 0.5),
}


@pytest.mark.parametrize("name", sorted(RULE_OPTION_USER))
def test_an_option_the_rule_does_not_read_is_refused(name):
    user, value = RULE_OPTION_USER[name]
    extra = {"k": 8} if user in ("topk", "batchtopk") and name != "k" else {}
    TrainConfig.from_flat(activation=user, **{name: value}, **extra)  # its own rule: fine
    refused = rf"--{name.replace('_', '-')} {value} does not apply to activation 'topafa'"
    with pytest.raises(ValueError, match=refused):
        TrainConfig.from_flat(activation="topafa", **{name: value})
    with pytest.raises(ValueError, match=refused):
        parse_config(["--activation", "topafa", f"--{name.replace('_', '-')}", str(value)])


def test_k_with_topafa_is_refused_on_the_command_line_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hf_topafa.cli", "train", "--activation", "topafa", "--k", "32",
         "--output", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--k 32 does not apply to activation 'topafa'" in lines[0], lines
    assert "topk" in lines[0] and "batchtopk" in lines[0]  # the rules it is for
    assert not (tmp_path / "run").exists()


def test_a_saved_sae_config_with_a_k_its_rule_ignores_still_loads(tmp_path):
    # Runs written before the refusal could store k=32 for top-AFA; it loads, and k reads None.
    from hf_topafa.hub import render_model_card

    from hf_topafa import SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, activation="topafa"))
    sae.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    stored["k"] = 32
    (tmp_path / "config.json").write_text(json.dumps(stored))
    loaded = SparseAutoencoder.from_pretrained(tmp_path)
    assert loaded.config.k is None
    assert "k = 32" not in render_model_card(loaded.config)
    assert SAEConfig(d_in=8, d_sae=32, activation="topk", k=4).k == 4


def _snapshot(folder):
    """Every path under ``folder`` with its bytes (None for a folder)."""
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


def test_a_finished_run_is_left_byte_identical_when_run_again(tmp_path, capsys):
    from hf_topafa.cli import main as cli

    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    run = tmp_path / "run"
    # made with --overwrite, which the saved configuration does not replay
    first = TrainConfig.from_flat(output=str(run), overwrite=True, **SMALL)
    train(first, data=x)
    saved = json.loads((run / "training_config.json").read_text())
    assert saved["run"]["overwrite"] is False and saved["run"]["resume"] is False
    assert any(p.name.startswith("checkpoint") for p in run.iterdir())  # resumable, yet done
    before = _snapshot(run)
    capsys.readouterr()

    same = TrainConfig.from_flat(output=str(run), **SMALL)
    assert train(same, data=x) == run
    out = capsys.readouterr().out
    assert "finished" in out and "--overwrite" in out and "--output" in out
    assert _snapshot(run) == before
    train(TrainConfig.from_flat(output=str(run), resume=True, **SMALL), data=x)
    assert _snapshot(run) == before

    # the command line: --config RUN/training_config.json names its own folder; exit status 0
    assert cli(["train", "--config", str(run / "training_config.json")]) == 0
    out = capsys.readouterr().out
    assert f"{run} holds this run, finished" in out and "trained 256 tokens" in out
    assert _snapshot(run) == before

    # a run written before rule options were refused may hold a k top-AFA ignores: still this run
    saved["sae"]["k"] = 32
    (run / "training_config.json").write_text(json.dumps(saved))
    before = _snapshot(run)
    train(same, data=x)
    assert _snapshot(run) == before and "finished" in capsys.readouterr().out
    # --overwrite still starts again
    train(TrainConfig.from_flat(output=str(run), overwrite=True, **SMALL), data=x)
    assert json.loads((run / "training_config.json").read_text())["sae"]["k"] is None


def test_the_run_summary_names_the_rule_that_chose_k(tmp_path):
    from hf_topafa.run_folder import summary

    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    run = train(
        TrainConfig.from_flat(output=str(tmp_path / "r"), activation="afa_band", **SMALL), data=x
    )
    text = summary(run)
    assert "AFA band entry k: median" in text and "top-AFA" not in text
