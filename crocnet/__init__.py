"""crocnet-kernels: fused Triton efficient additive attention (E2A) and the CroCNet cardiac models."""

__version__ = "0.1.0"
