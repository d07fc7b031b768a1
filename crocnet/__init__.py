"""crocnet-kernels: fused Triton efficient additive attention (E2A) and the CroCNet cardiac models.

Layers: ``crocnet.ops`` (functional ops) → ``crocnet.nn`` (modules and blocks) → ``crocnet.models``
(E2AUNet, specialist networks, the CroCNet pipeline; registered with timm on import).
"""

from .patch import patch_timm_swiftformer, unpatch_timm_swiftformer

__version__ = "0.1.0"

__all__ = ["patch_timm_swiftformer", "unpatch_timm_swiftformer", "__version__"]
