"""Device machines only (``PYTHONPATH=scripts/device_site``): SAELens imports, at the top of
modules ``sae_lens.synthetic`` loads, packages that its synthetic worlds and their evaluation
never call (wandb, TransformerLens, datasets, plotly, ...). A lent GPU machine has no package
registry, and carrying those (and their own pins against the machine's pyarrow, fsspec,
transformers) is where such a run breaks. So each of them is replaced by an empty package
whose every attribute is a placeholder class: importing works, calling one fails loudly."""

import importlib.abc
import importlib.machinery
import sys
import types

UNUSED = ("wandb", "transformer_lens", "datasets", "plotly", "plotly_express", "babe", "nltk")


class Placeholder:
    """Stands for anything a placeholder package is asked for; using it raises."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            "a package left out on the device machine (scripts/device_site) was used"
        )

    def __class_getitem__(cls, item):
        return cls


class PlaceholderPackage(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (Placeholder,), {})


class PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in UNUSED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = PlaceholderPackage(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, PlaceholderFinder())
