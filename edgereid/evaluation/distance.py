"""Query-to-gallery distances computed as FastReID and torchreid compute them, with numpy only."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from edgereid.errors import ConfigError, DataError

Metric = Literal["cosine", "euclidean"]
METRICS: tuple[str, ...] = get_args(Metric)

# torch.nn.functional.normalize's floor on the norm: an all-zero feature stays zero instead of turning into NaN.
NORM_EPS = 1e-12


def as_feature_matrix(features: np.ndarray, name: str) -> np.ndarray:
    """``features`` as a finite float32 (num_images, feature_dim) array, or a DataError naming ``name``."""
    array = np.asarray(features)
    if array.ndim != 2:
        raise DataError(f"{name} must be a 2-D array (num_images, feature_dim); got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {array.shape}); expected at least one image and one feature")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{name} must hold floating-point features; got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad_row = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise DataError(f"{name} row {bad_row} holds NaN or infinite values; expected finite features")
    return array


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (floored at NORM_EPS, like torch.nn.functional.normalize)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    normalized: np.ndarray = features / np.maximum(norms, np.float32(NORM_EPS))
    return normalized


def compute_distance(query: np.ndarray, gallery: np.ndarray, metric: Metric = "cosine") -> np.ndarray:
    """The (num_query, num_gallery) float32 distance matrix between two feature sets.

    ``cosine`` is 1 - cosine similarity of the L2-normalised features (in [0, 2], not clipped, as in FastReID);
    ``euclidean`` is the *squared* Euclidean distance, as FastReID and torchreid report it, clipped at 0 because
    the matmul expansion can round a true 0 to a tiny negative number.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown distance metric {metric!r}; expected one of {', '.join(METRICS)}")
    query_features = as_feature_matrix(query, "query")
    gallery_features = as_feature_matrix(gallery, "gallery")
    if query_features.shape[1] != gallery_features.shape[1]:
        raise DataError(
            f"query features have dimension {query_features.shape[1]} but gallery features have "
            f"{gallery_features.shape[1]}; expected the same dimension"
        )
    # The result is the only full-size array: every step below works on it in place.
    if metric == "cosine":
        distances = l2_normalize(query_features) @ l2_normalize(gallery_features).T
        np.subtract(np.float32(1.0), distances, out=distances)
        return distances
    distances = query_features @ gallery_features.T
    distances *= np.float32(-2.0)
    distances += np.einsum("ij,ij->i", query_features, query_features)[:, None]
    distances += np.einsum("ij,ij->i", gallery_features, gallery_features)[None, :]
    np.maximum(distances, np.float32(0.0), out=distances)
    return distances
