"""Where activations come from: language models, text, harvests and their caches, synthetic worlds.

- ``lm``: loading a language model (Hub id, folder, GGUF, the embedded default) and its hook
  points, with truncated forwards
- ``text_data``: text datasets packed into token windows
- ``harvest``: activation harvesting and the on-disk activation cache; ``harvest_config``: its
  torch-free configuration and argument checks
- ``synthetic``: SynthSAEBench worlds (known features), built once and cached;
  ``synthetic_cache``: a world sampled into an activation cache (with its true codes if asked)

The bundled files (a WikiText-2 sample, the model-card template) live in this folder too. Names
load on first use, so that the torch-free configuration imports no torch.
"""

from ..helpers import lazy_exports

__all__ = ["ActivationCache", "HarvestConfig", "Harvester", "iter_windows", "load_language_model"]
__all__ += ["load_text_dataset", "load_world", "write_synthetic_cache"]

__getattr__ = lazy_exports(
    __name__,
    lm=["load_language_model"],
    text_data=["iter_windows", "load_text_dataset"],
    harvest=["ActivationCache", "Harvester"],
    harvest_config=["HarvestConfig"],
    synthetic=["load_world"],
    synthetic_cache=["write_synthetic_cache"],
)
