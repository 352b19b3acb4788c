"""hf-topafa: Top-AFA sparse autoencoders and AFA diagnostics, as Hugging Face models."""

from transformers import AutoConfig, AutoModel

from . import afa
from .configuration_sae import ACTIVATIONS, SAEConfig
from .modeling_sae import SAEOutput, SparseAutoencoder

AutoConfig.register(SAEConfig.model_type, SAEConfig, exist_ok=True)
AutoModel.register(SAEConfig, SparseAutoencoder, exist_ok=True)

__version__ = "0.1.0"
__all__ = ["ACTIVATIONS", "SAEConfig", "SAEOutput", "SparseAutoencoder", "afa", "__version__"]
