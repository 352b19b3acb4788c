"""hf-topafa: Top-AFA sparse autoencoders and AFA diagnostics, as Hugging Face models.

The public names load on first use, so that ``hf-topafa --help`` or a flag typo answers without
importing torch. The SAE classes register with ``AutoConfig`` / ``AutoModel`` as soon as either
side is imported (``hf_topafa.modeling_sae`` or transformers' auto classes), so
``import hf_topafa`` followed by ``AutoModel.from_pretrained(folder)`` works as before.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"
__all__ = ["ACTIVATIONS", "SAEConfig", "SAEOutput", "SparseAutoencoder", "afa", "__version__"]

_LAZY = {
    "ACTIVATIONS": "configuration_sae",
    "SAEConfig": "configuration_sae",
    "SAEOutput": "modeling_sae",
    "SparseAutoencoder": "modeling_sae",
}
# after any of these modules has run, the Auto classes can (and should) learn about the SAE
_AUTO = "transformers.models.auto."
_TRIGGERS = ("hf_topafa.modeling_sae", _AUTO + "configuration_auto", _AUTO + "modeling_auto")
_registered: set[str] = set()


def __getattr__(name: str):
    if name == "afa":
        return importlib.import_module(".afa", __name__)
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

        from .configuration_sae import SAEConfig

        AutoConfig.register(SAEConfig.model_type, SAEConfig, exist_ok=True)
    if not config_only and "model" not in _registered:
        _registered.add("model")
        from transformers.models.auto.modeling_auto import AutoModel

        from .configuration_sae import SAEConfig
        from .modeling_sae import SparseAutoencoder

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


if _TRIGGERS[0] in sys.modules or _TRIGGERS[2] in sys.modules:
    register_auto_classes()
elif _TRIGGERS[1] in sys.modules:
    register_auto_classes(config_only=True)
_hooked = any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path)
if "model" not in _registered and not _hooked:
    sys.meta_path.insert(0, _RegisterAfterImport())
