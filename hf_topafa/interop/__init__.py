"""SAEs in and out of hf-topafa: other libraries' formats, the Hub, model cards, the Space.

- ``convert``: import an SAE saved by SAELens, sparsify, Gemma Scope or dictionary_learning;
  ``convert_common``: the shared algebra; ``convert_<format>``: one reader per format;
  ``convert_config``: the torch-free checks of ``hf-topafa convert``
- ``foreign``: ``FORMAT:SOURCE`` SAEs converted on the fly and cached; ``sae_loading``: the one
  SAE loader (folder, Hub id or ``FORMAT:SOURCE``)
- ``hub``: a run folder uploaded as one commit (optionally with remote code); ``hub_config``: its
  checks; ``model_card``: the card
- ``space``: publishing the SAE explorer as a Gradio Space

Names load on first use, so that the torch-free checks import no torch.
"""

from ..helpers import lazy_exports

__all__ = ["convert", "load_sae", "publish_space", "push_model", "push_run", "render_model_card"]
__all__ += ["resolve_sae"]

__getattr__ = lazy_exports(
    __name__,
    convert=["convert"],
    sae_loading=["load_sae"],
    space=["publish_space"],
    hub=["push_model", "push_run"],
    model_card=["render_model_card"],
    foreign=["resolve_sae"],
)
