"""Training an SAE: its configuration, data sources, run folder, checkpoints and loop.

- ``train_config``: ``TrainConfig`` (``data``, ``sae``, ``optim`` and ``run`` sections), its
  parsing and torch-free checks
- ``training_data``: the batches' sources (in-memory tensors, an activation cache, live harvesting)
- ``run_folder``: the run folder (checks before work, resume, the final files); ``checkpoint``:
  checksummed checkpoints
- ``train``: the loop with Accelerate (``train``, ``train_step``)
- ``choose_k``: ``hf-topafa choose-k``, a TopK sweep trained from two or more seeds, k chosen by
  how far the seeds' dictionaries agree

Names load on first use, so that the torch-free configuration imports no torch.
"""

from ..helpers import lazy_exports

__all__ = ["CacheSource", "LiveSource", "TensorSource", "TrainConfig", "train", "train_step"]

__getattr__ = lazy_exports(
    __name__,
    training_data=["CacheSource", "LiveSource", "TensorSource"],
    train_config=["TrainConfig"],
    train=["train", "train_step"],
)
