"""hf-topafa: Top-AFA sparse autoencoders and AFA diagnostics, as Hugging Face models.

The package by concern (each subpackage's ``__init__`` names its public parts):

- ``sae``: the SAE itself (config, model, selection rules, AFA math, saved-folder checks)
- ``data``: language models, text, activation harvesting and caches, synthetic worlds
- ``training``: the training config, data sources, run folder, checkpoints and loop
- ``evaluation``: evaluation, reports, plots, feature tables, steering, per-text analysis
- ``interop``: converting other libraries' SAEs, the Hub, model cards, the Space
- ``cli``: the ``hf-topafa`` dispatcher and the dataclass-generated parsers; ``bench``: the benchmark
- ``helpers``, ``names``, ``sources``: base modules (atomic writes and checks; shared names;
  local-or-Hub resolution and the user cache) that every concern may import

The public names load on first use, so that ``hf-topafa --help`` or a flag typo answers without
importing torch. The SAE classes register with ``AutoConfig`` / ``AutoModel`` as soon as either
side is imported (``hf_topafa.sae.modeling_sae`` or transformers' auto classes), so
``import hf_topafa`` followed by ``AutoModel.from_pretrained(folder)`` works as before.

Modules that sat flat in ``hf_topafa/`` before the subpackages keep their old names:
``hf_topafa.steering`` *is* ``hf_topafa.evaluation.steering`` (the same module object, see
``MOVED``), both for ``import`` and for ``python -m``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

__version__ = "0.1.0"
__all__ = ["ACTIVATIONS", "SAEConfig", "SAEOutput", "SparseAutoencoder", "afa", "__version__"]

_LAZY = {
    "ACTIVATIONS": "sae.configuration_sae",
    "SAEConfig": "sae.configuration_sae",
    "SAEOutput": "sae.modeling_sae",
    "SparseAutoencoder": "sae.modeling_sae",
}
# old flat module name -> where the module lives now (``hf_topafa.cli`` and ``hf_topafa.bench``
# became the packages that hold those modules and re-export their public names)
MOVED = {
    **dict.fromkeys(
        ["activations", "afa", "configuration_sae", "kfree", "modeling_sae", "rules"]
        + ["sae_settings", "saved", "sparse"],
        "sae",
    ),
    **dict.fromkeys(["harvest", "harvest_config", "lm", "text_data"], "data"),
    **dict.fromkeys(
        ["checkpoint", "run_folder", "train", "train_config", "training_data"], "training"
    ),
    **dict.fromkeys(
        ["eval_config", "eval_report", "evaluate", "features", "features_config", "plots"]
        + ["steering", "text_analysis"],
        "evaluation",
    ),
    **dict.fromkeys(
        ["convert", "convert_common", "convert_config", "convert_dictionary_learning"]
        + ["convert_gemma_scope", "convert_saelens", "convert_sparsify", "foreign", "hub"]
        + ["hub_config", "model_card", "sae_loading", "space"],
        "interop",
    ),
    "cli_args": "cli",
    **dict.fromkeys(["bench_config", "bench_memory", "bench_steps"], "bench"),
}
# after any of these modules has run, the Auto classes can (and should) learn about the SAE
_AUTO = "transformers.models.auto."
_TRIGGERS = ("hf_topafa.sae.modeling_sae", _AUTO + "configuration_auto", _AUTO + "modeling_auto")
_registered: set[str] = set()


def __getattr__(name: str):
    if name in MOVED:  # hf_topafa.afa, hf_topafa.steering, ...: the moved module itself
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hf_topafa' has no attribute {name!r}")


def register_auto_classes(config_only: bool = False) -> None:
    """``AutoConfig`` (and unless ``config_only``, ``AutoModel``) learn the SAE; idempotent.

    ``config_only`` serves the moment only ``configuration_auto`` has loaded: the model side
    needs ``transformers.modeling_utils``, which may still be half-imported then.
    """
    if "config" not in _registered:
        _registered.add("config")
        from transformers.models.auto.configuration_auto import AutoConfig

        from .sae.configuration_sae import SAEConfig

        AutoConfig.register(SAEConfig.model_type, SAEConfig, exist_ok=True)
    if not config_only and "model" not in _registered:
        _registered.add("model")
        from transformers.models.auto.modeling_auto import AutoModel

        from .sae.configuration_sae import SAEConfig
        from .sae.modeling_sae import SparseAutoencoder

        AutoModel.register(SAEConfig, SparseAutoencoder, exist_ok=True)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Runs ``register_auto_classes`` right after a trigger module has finished executing."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _TRIGGERS or "model" in _registered:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_then_register(module):
            run(module)
            register_auto_classes(config_only=fullname.endswith("configuration_auto"))

        spec.loader.exec_module = exec_then_register
        return spec


class _MovedModuleLoader(importlib.abc.Loader):
    """Loads ``hf_topafa.<old name>`` as the module at its new place (the same object)."""

    def __init__(self, new_name: str):
        self.new_name = new_name
        self.own_spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.new_name)
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module):
        # the import system has just given the module the old name's spec: give its own back
        module.__spec__ = self.own_spec

    def get_code(self, fullname):
        """``python -m hf_topafa.<old name>``: run the module at its new place as ``__main__``."""
        return compile(
            f"import runpy\nrunpy.run_module({self.new_name!r}, run_name='__main__', alter_sys=True)",
            f"<{fullname}: moved to {self.new_name}>",
            "exec",
        )

    def is_package(self, fullname):
        return False


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old flat module names (``MOVED``) and hands them to ``_MovedModuleLoader``."""

    def find_spec(self, fullname, path, target=None):
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED:
            return None
        new_name = f"{__name__}.{MOVED[name]}.{name}"
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new_name))


if _TRIGGERS[0] in sys.modules or _TRIGGERS[2] in sys.modules:
    register_auto_classes()
elif _TRIGGERS[1] in sys.modules:
    register_auto_classes(config_only=True)
_hooked = any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path)
if "model" not in _registered and not _hooked:
    sys.meta_path.insert(0, _RegisterAfterImport())
if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    # first: a stale copy of an old module (a leftover file, an editable install's other
    # checkout) must not shadow the module at its new place
    sys.meta_path.insert(0, _MovedModuleFinder())
