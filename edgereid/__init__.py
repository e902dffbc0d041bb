"""edgereid: re-identification models from training to a verified INT8 engine on an edge device."""

__version__ = "0.1.0"
