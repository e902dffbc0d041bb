"""The on-device runtime: a bundle's model behind one runner interface (ONNX Runtime, TensorRT, PyTorch), the
Embedder (images → L2-normalised embeddings exactly as training evaluates), verification of a bundle on a backend,
and the faiss gallery (``edgereid.runtime.gallery``). numpy, Pillow and the backend's own library only: no torch.
"""

from edgereid.runtime.embedder import Embedder, EmbedTiming
from edgereid.runtime.runners import BACKENDS, InferenceTiming, Runner, create_runner, register_runner
from edgereid.runtime.verify import verify_runtime

__all__ = [
    "BACKENDS",
    "EmbedTiming",
    "Embedder",
    "InferenceTiming",
    "Runner",
    "create_runner",
    "register_runner",
    "verify_runtime",
]
