"""ddpinfer: distributed batch inference for PyTorch / Hugging Face models."""

from ddpinfer.torch_extensions import hide_unloadable

__version__ = "0.1.0"

# Before transformers or vLLM is imported anywhere: torchvision & co. built for another torch
# would break both (see torch_extensions).
hide_unloadable()
