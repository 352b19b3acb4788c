"""The sparse autoencoder itself, as a Hugging Face model.

- ``configuration_sae``: ``SAEConfig`` (sizes, rule, loss weights, provenance); ``sae_settings``:
  ``SAESettings``, the same hyperparameters without torch, and their one validation
- ``modeling_sae``: ``SparseAutoencoder`` and ``SAEOutput``
- ``rules``: the activation-rule registry (``get_rule``); ``activations`` and ``sparse``: the
  selection math and the sparse route; ``kfree``: the k-free rules beyond the paper
- ``afa``: AFA math (‖z‖, f̃, εLBO, ZF bounds); ``saved``: checks of a saved SAE folder
- ``absorption``: absorbed parents read from the decoder alone, and the directions without them
- ``risk``: the risk-inflation readers; ``balance``: the count-unbiased price, the switch between
  it and the tail price, and where every re-fit reader's price settles

Names load on first use (``hf_topafa.helpers.lazy_exports``): the torch-free settings must not
pull in the model.
"""

from ..helpers import lazy_exports

__all__ = ["ACTIVATIONS", "SAEConfig", "SAEOutput", "SAESettings", "SparseAutoencoder"]
__all__ += ["check_saved_sae", "get_rule"]

__getattr__ = lazy_exports(
    __name__,
    configuration_sae=["ACTIVATIONS", "SAEConfig"],
    sae_settings=["SAESettings"],
    modeling_sae=["SAEOutput", "SparseAutoencoder"],
    saved=["check_saved_sae"],
    rules=["get_rule"],
)
