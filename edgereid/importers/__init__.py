"""Bring your own model: FastReID, torchreid and boxmot weights → ordinary edgereid checkpoints.

One module per source library; ``common`` holds the safe loading, key matching and checkpoint writing they share.
"""

from edgereid.importers.common import ImportResult, Preprocessing

__all__ = ["ImportResult", "Preprocessing"]
