"""The package's layout: old flat module names still import, as the very modules they became.

``hf_topafa.steering`` (and every other module that sat flat in ``hf_topafa/`` before the
subpackages) must be the same object as ``hf_topafa.evaluation.steering``, so that a
monkeypatch through either name reaches the code that runs.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import hf_topafa

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("sae", "data", "training", "evaluation", "interop", "cli", "bench")


@pytest.mark.parametrize("old", sorted(hf_topafa.MOVED))
def test_old_module_name_is_the_moved_module(old):
    new = importlib.import_module(f"hf_topafa.{hf_topafa.MOVED[old]}.{old}")
    assert importlib.import_module(f"hf_topafa.{old}") is new
    assert getattr(hf_topafa, old) is new
    assert new.__name__ == new.__spec__.name == f"hf_topafa.{hf_topafa.MOVED[old]}.{old}"


def test_every_moved_module_exists_and_every_module_is_reachable():
    """MOVED names real files, and no module of the package is left out of the table or a base."""
    found = {p.stem for p in (ROOT / "hf_topafa").glob("*/*.py") if not p.stem.startswith("__")}
    for old, package in hf_topafa.MOVED.items():
        assert (ROOT / "hf_topafa" / package / f"{old}.py").is_file(), old
    # new modules (synthetic worlds, ...) have no old name; every old name points at a file
    assert set(hf_topafa.MOVED) <= found
    flat = {p.stem for p in (ROOT / "hf_topafa").glob("*.py")}
    assert flat == {"__init__", "helpers", "names", "sources"}


def test_old_names_that_became_packages_keep_their_names():
    from hf_topafa import bench, cli
    from hf_topafa.bench import bench as bench_module
    from hf_topafa.cli import cli as cli_module

    assert cli.main is cli_module.main and cli.one_line is cli_module.one_line
    assert bench.time_variants is bench_module.time_variants
    with pytest.raises(AttributeError, match="hf_topafa.bench"):
        _ = bench.no_such_name


def test_public_names_of_the_package_and_its_subpackages():
    from hf_topafa import SAEConfig, SparseAutoencoder, afa
    from hf_topafa.evaluation import steer
    from hf_topafa.evaluation.steering import steer as steer_itself
    from hf_topafa.sae.modeling_sae import SparseAutoencoder as model

    assert SparseAutoencoder is model and steer is steer_itself
    assert SAEConfig.model_type and afa.__name__ == "hf_topafa.sae.afa"
    for name in SUBPACKAGES:
        package = importlib.import_module(f"hf_topafa.{name}")
        assert package.__doc__ and package.__all__, name
        for public in package.__all__:
            assert getattr(package, public) is not None, (name, public)


def run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return result.stdout.strip()


def test_subpackages_and_configs_import_without_torch():
    """The command line's checks import a subpackage's config: its __init__ must not load torch."""
    code = (
        "import sys\n"
        "import hf_topafa.sae, hf_topafa.data, hf_topafa.training, hf_topafa.evaluation\n"
        "import hf_topafa.interop, hf_topafa.cli, hf_topafa.bench\n"
        "from hf_topafa.train_config import TrainConfig\n"
        "from hf_topafa.sae_settings import SAESettings\n"
        "from hf_topafa.interop import convert_config, hub_config\n"
        "from hf_topafa.evaluation import eval_config, features_config\n"
        "from hf_topafa.bench import bench_config\n"
        "from hf_topafa.data import harvest_config\n"
        "print('torch' in sys.modules)"
    )
    assert run(code) == "False"


def test_auto_classes_after_import_hf_topafa():
    code = (
        "import hf_topafa\n"
        "from transformers import AutoConfig, AutoModel\n"
        "config = AutoConfig.for_model('topafa_sae', d_in=8, d_sae=16)\n"
        "print(type(AutoModel.from_config(config)).__name__)"
    )
    assert run(code).splitlines()[-1] == "SparseAutoencoder"


def test_python_dash_m_with_old_and_new_names():
    for module in ("hf_topafa.cli", "hf_topafa.train", "hf_topafa.training.train"):
        args = [sys.executable, "-m", module, "--help"]
        if module == "hf_topafa.cli":
            args = [sys.executable, "-m", module, "train", "--help"]
        out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, (module, out.stderr[-2000:])
        assert "--max-tokens" in out.stdout, module
