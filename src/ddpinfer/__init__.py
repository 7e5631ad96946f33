"""ddpinfer: distributed batch inference for PyTorch / Hugging Face models."""

__version__ = "0.1.0"
