"""A gallery of L2-normalised embeddings on faiss: top-k inner-product (cosine) search with per-item metadata.

The index is any faiss factory string under inner product: ``"Flat"`` is exact, ``"HNSW32"`` a graph for large
galleries, ``"IVF4096,PQ64"`` (or ``"OPQ64,IVF65536,PQ64"``) a compressed one for very large ones. It sits in an
``IndexIDMap2`` so every item keeps the int64 id it was given when added, whatever is removed later.

Removal: indexes that store vectors in one flat array (``Flat``, ``SQ8``, ``PQ``) drop them at once. Graph and
inverted-file indexes cannot (faiss's HNSW has no ``remove_ids``, and an ``IVF`` inside an id map renumbers its
entries wrongly), so a removed id there becomes a *tombstone*: its metadata is gone, every search skips it
through an ``IDSelector``, and its vector stays in the index until :meth:`Gallery.compact` rebuilds the index from
the stored vectors. :meth:`Gallery.save` compacts on its own once tombstones reach ``COMPACT_FRACTION`` of the
index; fewer are saved with it, so a removal never costs a rebuild of a large graph.

On disk a gallery is a directory: ``index.faiss``, ``items.jsonl`` (one item per line, in id order) and
``gallery.json`` (format, version, dimension, model id, precision, factory, counts, tombstones and the sha256 of
both files; the schema is :mod:`edgereid.gallery_format`), built beside the target and published by rename, so a
failed save leaves the previous gallery as it was.

Writers of one gallery take turns under its advisory lock (:func:`edgereid.locking.exclusive`):
:func:`update_gallery` loads the gallery inside the lock, lets the caller change it and saves it before releasing,
so concurrent writers never lose each other's items and never hand out one id twice; :func:`add_images` and
:func:`remove_items` are built on it. :meth:`Gallery.save` takes the lock too, and refuses to overwrite a gallery
that another writer changed after this one loaded it. Readers take no lock unless what they read looks damaged:
then they read again under the lock, since a writer may have been replacing the files under them.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import warnings
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from edgereid.atomic import publish_directory
from edgereid.bundle_format import PRECISIONS, sha256_file
from edgereid.errors import ConfigError, DataError, EdgeReIDError
from edgereid.evaluation.distance import compute_distance
from edgereid.evaluation.rerank import re_ranking
from edgereid.gallery_format import (
    FORMAT,
    FORMAT_VERSION,
    HEADER_FILE,
    INDEX_FILE,
    ITEMS_FILE,
    GalleryHeader,
    read_header,
    read_items,
)
from edgereid.locking import exclusive, lock_path

if TYPE_CHECKING:
    from edgereid.runtime.embedder import Embedder

# Tombstones beyond this fraction of the stored vectors make save() rebuild the index without them.
COMPACT_FRACTION = 0.1
# Embeddings are unit vectors; FP16/INT8 engines and float32 normalisation stay far inside this.
NORM_TOLERANCE = 1e-2
# HNSW efSearch of a new index: faiss's 16 gave recall@10 0.82 against exact search on the 100k x 512-d benchmark
# (docs/BENCHMARKS.md), 64 gave 0.985.
DEFAULT_EF_SEARCH = 64
# HNSW efConstruction of a new index: on the 100k x 512-d benchmark with appearance families faiss's 40 gave
# recall@10 0.91 at efSearch 64 and 200 gave 1.0 (a 4.5x longer build); at 1M, 200 gives 0.992 at 37x the speed of
# exact search (docs/BENCHMARKS.md).
DEFAULT_EF_CONSTRUCTION = 200
# IVF lists visited by default (at most all of them): faiss's 1 misses most neighbours; 64 of 1,024 lists gave
# recall@10 0.94 for IVF1024,PQ64 at 19x the speed of exact search on the same benchmark.
DEFAULT_NPROBE = 64
# Candidates per query that k-reciprocal re-ranking re-orders by default (FastReID's k1 is 20).
RERANK_CANDIDATES = 100


class StaleGalleryError(EdgeReIDError):
    """A gallery was changed by another writer after this one loaded it: saving would undo that change."""

    exit_code = 3


@dataclass(frozen=True)
class GalleryItem:
    """What is known about one gallery image; every field is optional. ``sha256`` is the image file's: with the
    file name it tells an image already in the gallery (:func:`add_images`)."""

    identity: str | None = None
    camera: str | None = None
    path: str | None = None
    time: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None


@dataclass(frozen=True)
class _Origin:
    """Where a gallery was loaded from (resolved) and the revision it had then (``read_header``)."""

    path: Path
    revision: str


@dataclass(frozen=True)
class Match:
    """One search result: the item's id, its cosine similarity to the query, and its metadata.

    ``rerank_distance`` is the k-reciprocal distance the match was ordered by when the search re-ranked (lower is
    closer), else None.
    """

    id: int
    score: float
    item: GalleryItem
    rerank_distance: float | None = None


class Gallery:
    """Embeddings of one model (``model_id``) at one precision (``precision``, None where unrecorded) with stable
    int64 ids and metadata; create with :meth:`create` or :meth:`load`."""

    def __init__(
        self,
        index: faiss.IndexIDMap2,
        model_id: str,
        factory: str,
        items: dict[int, GalleryItem],
        next_id: int,
        tombstones: set[int],
        *,
        precision: str | None = None,
    ) -> None:
        self._index = index
        self.model_id = model_id
        self.precision = precision
        self.factory = factory
        self._items = items
        self._next_id = next_id
        self._tombstones = tombstones
        self._camera_ids: dict[str | None, np.ndarray] | None = None
        self._origin: _Origin | None = None

    @classmethod
    def create(
        cls,
        dim: int,
        model_id: str,
        index_factory: str = "Flat",
        *,
        precision: str | None = None,
        ef_construction: int | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> Gallery:
        """An empty gallery for ``dim``-d embeddings of the model ``model_id`` computed at ``precision`` (a bundle
        precision: recorded so that embeddings of another precision are noticed, see :func:`check_embedder`).

        ``ef_construction`` (HNSW: candidates kept while linking a new vector, default ``DEFAULT_EF_CONSTRUCTION``;
        more builds slower and better),
        ``ef_search`` (HNSW, default ``DEFAULT_EF_SEARCH``) and ``nprobe`` (IVF: inverted lists visited, default
        ``DEFAULT_NPROBE`` or all lists when fewer) are stored in the index as the defaults of later searches.
        """
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ConfigError(f"gallery dim must be a positive integer; got {dim!r}")
        if not model_id:
            raise ConfigError("gallery model_id must be a non-empty string (the embedding model's sha256)")
        if precision is not None and precision not in PRECISIONS:
            raise ConfigError(
                f"gallery precision {precision!r}: expected one of {', '.join(PRECISIONS)} or None"
            )
        if "IDMap" in index_factory:
            raise ConfigError(f"index factory {index_factory!r}: leave out IDMap; the gallery adds its own id map")
        try:
            built = faiss.index_factory(int(dim), index_factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise ConfigError(
                f"faiss cannot build the index factory string {index_factory!r} for dim {dim}: "
                f"{_faiss_message(error)}; expected e.g. 'Flat', 'HNSW32', 'IVF4096,PQ64'"
            ) from None
        # Through faiss's serialisation once, so that a new gallery holds the index class a loaded one holds (the
        # factory's "Flat" is an IndexFlat with an inner-product metric, read back as an IndexFlatIP).
        inner = faiss.deserialize_index(faiss.serialize_index(built))
        hnsw = _hnsw(inner)
        ivf = faiss.try_extract_index_ivf(inner)
        for name, value, applies in (
            ("ef_construction", ef_construction, hnsw is not None),
            ("ef_search", ef_search, hnsw is not None),
            ("nprobe", nprobe, ivf is not None),
        ):
            if value is not None and not applies:
                raise ConfigError(f"{name} applies to {'IVF' if name == 'nprobe' else 'HNSW'} indexes; "
                                  f"index factory {index_factory!r} is not one")
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1; got {value}")
        if hnsw is not None:
            hnsw.efConstruction = DEFAULT_EF_CONSTRUCTION if ef_construction is None else ef_construction
            hnsw.efSearch = DEFAULT_EF_SEARCH if ef_search is None else ef_search
        if ivf is not None:
            ivf.nprobe = min(int(ivf.nlist), DEFAULT_NPROBE) if nprobe is None else nprobe
            # Compaction and re-ranking read vectors back by position; ids inside the map stay sequential.
            ivf.make_direct_map()
        return cls(faiss.IndexIDMap2(inner), model_id, index_factory, {}, 0, set(), precision=precision)

    # ----------------------------------------------------------------------------------------------------- state
    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def item(self, item_id: int) -> GalleryItem:
        if item_id not in self._items:
            raise DataError(f"gallery has no item with id {item_id}")
        return self._items[item_id]

    def items(self) -> dict[int, GalleryItem]:
        """Every live item by id, in id order (a copy)."""
        return dict(self._items)

    def info(self) -> dict[str, Any]:
        """What the gallery holds and how it searches, as JSON-ready values."""
        inner = self._inner()
        hnsw = _hnsw(inner)
        ivf = faiss.try_extract_index_ivf(inner)
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dim": self.dim,
            "model_id": self.model_id,
            "precision": self.precision,
            "factory": self.factory,
            "index_type": type(inner).__name__,
            "count": len(self),
            "stored_vectors": int(self._index.ntotal),
            "tombstones": len(self._tombstones),
            "next_id": self._next_id,
            "is_trained": self.is_trained,
            "identities": len({item.identity for item in self._items.values() if item.identity is not None}),
            "cameras": sorted({item.camera for item in self._items.values() if item.camera is not None}),
            "ef_search": None if hnsw is None else int(hnsw.efSearch),
            "ef_construction": None if hnsw is None else int(hnsw.efConstruction),
            "nprobe": None if ivf is None else int(ivf.nprobe),
            "nlist": None if ivf is None else int(ivf.nlist),
            "min_training_vectors": _min_training_vectors(inner),
        }

    # ------------------------------------------------------------------------------------------------- changes
    def train(self, vectors: np.ndarray) -> None:
        """Train an index that needs it (IVF, PQ, OPQ) on representative embeddings; the first ``add`` does this
        with its own embeddings when the index is untrained."""
        data = self._check_vectors(vectors, "training vectors")
        if self.is_trained:
            raise ConfigError(f"the {self.factory!r} index is already trained; train only an empty, untrained one")
        needed = _min_training_vectors(self._inner())
        if len(data) < needed:
            raise DataError(
                f"the {self.factory!r} index needs at least {needed} vectors to train; got {len(data)} "
                f"(give it at least {needed} in its first add, or use an index with fewer IVF lists or PQ "
                "centroids)"
            )
        try:
            self._index.train(data)
        except RuntimeError as error:
            raise DataError(f"training the {self.factory!r} index failed: {_faiss_message(error)}") from None

    def add(self, embeddings: np.ndarray, items: Sequence[GalleryItem] | None = None) -> np.ndarray:
        """Add L2-normalised float32 (N, dim) embeddings with their metadata (default: empty); returns their new
        int64 ids, in order."""
        data = self._check_vectors(embeddings, "embeddings")
        if items is None:
            # One shared empty item (it is frozen): a million separate ones would cost ~200 MB of Python objects.
            items = [GalleryItem()] * len(data)
        if len(items) != len(data):
            raise ConfigError(f"got {len(data)} embeddings but {len(items)} gallery items; expected one item each")
        for position, item in enumerate(items):
            if not isinstance(item, GalleryItem):
                raise ConfigError(f"gallery item {position} is a {type(item).__name__}; expected a GalleryItem")
        if not self.is_trained:
            self.train(data)
        ids = np.arange(self._next_id, self._next_id + len(data), dtype=np.int64)
        self._index.add_with_ids(data, ids)
        self._items.update(zip(ids.tolist(), items))
        self._next_id += len(data)
        self._camera_ids = None
        return ids

    def remove(self, ids: Collection[int] | np.ndarray) -> int:
        """Remove items by id; every id must be in the gallery (else a DataError naming the first missing one).
        Returns how many were removed."""
        wanted = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
        missing = [int(i) for i in wanted if int(i) not in self._items]
        if missing:
            raise DataError(
                f"gallery has no item with id {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        if wanted.size == 0:
            return 0
        if isinstance(self._inner(), faiss.IndexFlatCodes):
            self._index.remove_ids(faiss.IDSelectorBatch(wanted))
        else:
            self._tombstones.update(wanted.tolist())
        for item_id in wanted.tolist():
            del self._items[item_id]
        self._camera_ids = None
        return int(wanted.size)

    def compact(self) -> None:
        """Rebuild the index without its tombstones (a graph or inverted-file index re-adds every live vector,
        which takes as long as building it; PQ codes are re-encoded from their decoded vectors, which nearly
        always gives the same codes)."""
        if not self._tombstones:
            return
        inner = self._inner()
        vectors = inner.reconstruct_n(0, inner.ntotal) if inner.ntotal else np.empty((0, self.dim), np.float32)
        stored_ids = faiss.vector_to_array(self._index.id_map)
        keep = ~np.isin(stored_ids, np.fromiter(self._tombstones, dtype=np.int64))
        fresh = faiss.clone_index(inner)
        fresh.reset()
        ivf = faiss.try_extract_index_ivf(fresh)
        if ivf is not None:
            ivf.make_direct_map()
        index = faiss.IndexIDMap2(fresh)
        if keep.any():
            index.add_with_ids(np.ascontiguousarray(vectors[keep]), stored_ids[keep])
        self._index = index
        self._tombstones = set()

    # -------------------------------------------------------------------------------------------------- search
    def search(
        self,
        queries: np.ndarray,
        top_k: int,
        *,
        query_cameras: Sequence[str | None] | None = None,
        exclude_same_camera: bool = False,
        cameras: Collection[str] | None = None,
        rerank: bool = False,
        rerank_candidates: int = RERANK_CANDIDATES,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[Match]]:
        """The ``top_k`` most similar items of each L2-normalised query, best first (fewer when the gallery, or
        what the filters leave of it, is smaller).

        ``exclude_same_camera`` skips items from the query's own camera (``query_cameras``, one per query), the
        ReID convention; ``cameras`` keeps only items from those cameras. ``rerank`` re-orders each query's first
        ``rerank_candidates`` matches with k-reciprocal re-ranking (Zhong et al. 2017) over their vectors, read
        back from the index. ``ef_search`` (HNSW) and ``nprobe`` (IVF) override the index's defaults.
        """
        data = self._check_vectors(queries, "queries")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer; got {top_k!r}")
        if len(self) == 0:
            raise DataError("the gallery is empty; add embeddings before searching it")
        if exclude_same_camera and (query_cameras is None or len(query_cameras) != len(data)):
            got = "none" if query_cameras is None else str(len(query_cameras))
            raise ConfigError(
                f"exclude_same_camera needs one query camera per query: {len(data)} queries, {got} cameras"
            )
        if rerank and rerank_candidates < 2:
            raise ConfigError(f"rerank_candidates must be at least 2; got {rerank_candidates}")
        depth = max(top_k, rerank_candidates) if rerank else top_k
        depth = min(depth, len(self))
        params_for = self._parameters(ef_search, nprobe)
        scores = np.full((len(data), depth), -np.inf, dtype=np.float32)
        labels = np.full((len(data), depth), -1, dtype=np.int64)
        # One faiss call per distinct excluded camera: each has its own selector of allowed ids.
        groups: dict[str | None, list[int]] = {}
        for row in range(len(data)):
            key = query_cameras[row] if exclude_same_camera and query_cameras is not None else None
            groups.setdefault(key, []).append(row)
        for camera, rows in groups.items():
            excluded = camera if exclude_same_camera else None
            selector = self._selector(excluded, cameras, exclude_camera=exclude_same_camera)
            params = params_for(selector)
            found_scores, found_labels = self._index.search(data[rows], depth, params=params)
            scores[rows], labels[rows] = found_scores, found_labels
        if rerank:
            return [self._reranked(data[row], scores[row], labels[row], top_k) for row in range(len(data))]
        return [
            [Match(int(i), float(s), self._items[int(i)]) for s, i in zip(scores[row], labels[row]) if i >= 0]
            for row in range(len(data))
        ]

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored (for compressed indexes: decoded) float32 vectors of live items, in the order of ``ids``."""
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        for item_id in wanted.tolist():
            if item_id not in self._items:
                raise DataError(f"gallery has no item with id {item_id}")
        try:
            vectors: np.ndarray = self._index.reconstruct_batch(wanted)
        except RuntimeError as error:
            raise ConfigError(
                f"the {self.factory!r} index cannot give its vectors back ({_faiss_message(error)}); "
                "re-ranking needs an index that stores them (Flat, HNSW, IVF, PQ, SQ)"
            ) from None
        return vectors

    # ----------------------------------------------------------------------------------------------- save/load
    def save(
        self,
        path: str | Path,
        *,
        compact: bool | None = None,
        overwrite: bool = True,
        timeout: float | None = None,
    ) -> Path:
        """Write the gallery directory at ``path`` (replacing one there only once the new one is complete), under
        the gallery's write lock (waiting up to ``timeout`` seconds, default ``EDGEREID_LOCK_TIMEOUT`` or 600).

        A gallery loaded from ``path`` is saved only if nobody changed it there since (else
        :class:`StaleGalleryError`: load it again and repeat the change, or make changes through
        :func:`update_gallery`, which cannot lose them). ``overwrite=False`` refuses to replace any gallery at
        ``path``. ``compact``: rebuild the index without tombstones first (default: when they are at least
        ``COMPACT_FRACTION`` of the stored vectors).
        """
        target = Path(path)
        with exclusive(target, "gallery", timeout):
            if target.exists():
                if not (target / HEADER_FILE).is_file():
                    raise ConfigError(
                        f"'{target}' exists and is not a gallery (no {HEADER_FILE}); refusing to replace it"
                    )
                if not overwrite:
                    raise ConfigError(
                        f"'{target}' already exists and overwrite is off; refusing to replace it (on the command "
                        "line: --overwrite)"
                    )
            self._refuse_stale_save(target)
            return self._write(target, compact)

    @classmethod
    def load(cls, path: str | Path, model_id: str | None = None, *, dim: int | None = None) -> Gallery:
        """Read a gallery saved by :meth:`save`, checking its header against the schema, both files' sizes and
        checksums, the index against the items, and (when given) that it holds embeddings of ``model_id`` with
        ``dim`` dimensions. Whatever is wrong is one :class:`DataError` (or :class:`ConfigError`) line."""
        root = Path(path)
        try:
            return cls._read(root, model_id, dim)
        except DataError:
            # What looks damaged may be a gallery a writer was replacing while this read it (its files are
            # renamed into place one after another). Under the writers' lock it is whole; a gallery that never had
            # a writer here (no lock file) is not read twice.
            if not lock_path(root.absolute()).exists():
                raise
        with exclusive(root, "gallery"):
            return cls._read(root, model_id, dim)

    @classmethod
    def _read(cls, root: Path, model_id: str | None, dim: int | None) -> Gallery:
        header, revision = read_header(root)
        header_path = root / HEADER_FILE
        if model_id is not None and header.model_id != model_id:
            raise ConfigError(
                f"gallery '{root}' holds embeddings of model {header.model_id}, not of model {model_id}; "
                "embeddings of different models are not comparable (rebuild the gallery with this model)"
            )
        if dim is not None and header.dim != dim:
            raise ConfigError(
                f"gallery '{root}' holds {header.dim}-d embeddings; expected {dim}-d (another model's gallery)"
            )
        for name, expected in header.files.items():
            _check_file(root / name, expected.bytes, expected.sha256, header_path)
        index_path = root / INDEX_FILE
        try:
            index = faiss.read_index(str(index_path))
        except (RuntimeError, MemoryError) as error:
            raise DataError(
                f"'{index_path}' is not a faiss index ({_faiss_message(error)}); expected the IndexIDMap2 that "
                f"'{header_path}' describes (rebuild the gallery)"
            ) from None
        if not isinstance(index, faiss.IndexIDMap2) or index.d != header.dim:
            raise DataError(
                f"'{index_path}' is a {type(index).__name__} of dim {index.d}; expected the IndexIDMap2 of "
                f"dim {header.dim} that '{header_path}' describes"
            )
        items = _read_items(root / ITEMS_FILE)
        _check_consistent(root, header, index, items)
        gallery = cls(
            index, header.model_id, header.factory, items, header.next_id, set(header.tombstones),
            precision=header.precision,
        )
        gallery._origin = _Origin(root.resolve(), revision)
        return gallery

    def _refuse_stale_save(self, target: Path) -> None:
        """Raise StaleGalleryError when this gallery was loaded from ``target`` and another writer has changed
        ``target`` since (called under the lock)."""
        if self._origin is None or self._origin.path != target.resolve():
            return
        header = target / HEADER_FILE
        current = hashlib.sha256(header.read_bytes()).hexdigest() if header.is_file() else None
        if current != self._origin.revision:
            raise StaleGalleryError(
                f"gallery '{target}' was changed by another writer after this copy was loaded from it; saving "
                "would undo that change: load it again and repeat yours (edgereid.runtime.gallery.update_gallery "
                "does this under the writers' lock)"
            )

    def _write(self, target: Path, compact: bool | None) -> Path:
        """Write the gallery directory at ``target``; the caller holds the lock."""
        if compact is None:
            compact = len(self._tombstones) >= COMPACT_FRACTION * max(int(self._index.ntotal), 1)
        if compact:
            self.compact()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
        try:
            faiss.write_index(self._index, str(staging / INDEX_FILE))
            with (staging / ITEMS_FILE).open("w", encoding="utf-8") as file:
                for item_id in sorted(self._items):
                    file.write(json.dumps({"id": item_id, **asdict(self._items[item_id])}, sort_keys=True) + "\n")
            header = GalleryHeader.model_validate({
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "dim": self.dim,
                "model_id": self.model_id,
                "precision": self.precision,
                "factory": self.factory,
                "count": len(self),
                "next_id": self._next_id,
                "tombstones": sorted(self._tombstones),
                "files": {
                    name: {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
                    for name in (INDEX_FILE, ITEMS_FILE)
                },
            })
            data = (json.dumps(header.model_dump(), indent=2, sort_keys=True) + "\n").encode("utf-8")
            (staging / HEADER_FILE).write_bytes(data)
            publish_directory(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._origin = _Origin(target.resolve(), hashlib.sha256(data).hexdigest())
        return target

    # ------------------------------------------------------------------------------------------------- helpers
    def _inner(self) -> Any:
        return faiss.downcast_index(self._index.index)

    def _check_vectors(self, vectors: np.ndarray, name: str) -> np.ndarray:
        array = np.asarray(vectors)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
            raise ConfigError(f"{name} must be a float32 (N, {self.dim}) array; got {array.dtype} {array.shape}")
        if array.shape[1] != self.dim:
            raise ConfigError(
                f"{name} have {array.shape[1]} dimensions but the gallery holds {self.dim}-d embeddings "
                "(another model's embeddings?)"
            )
        if array.shape[0] == 0:
            raise ConfigError(f"{name}: got none; expected at least one row")
        data = np.ascontiguousarray(array, dtype=np.float32)
        finite = np.isfinite(data).all(axis=1)
        if not finite.all():
            raise DataError(f"{name} row {int(np.flatnonzero(~finite)[0])} holds NaN or infinite values")
        norms = np.linalg.norm(data, axis=1)
        off = np.abs(norms - 1.0) > NORM_TOLERANCE
        if off.any():
            row = int(np.flatnonzero(off)[0])
            raise ConfigError(
                f"{name} row {row} has L2 norm {norms[row]:.4f}; expected L2-normalised embeddings (norm 1), as the "
                "Embedder gives them"
            )
        return data

    def _camera_index(self) -> dict[str | None, np.ndarray]:
        if self._camera_ids is None:
            by_camera: dict[str | None, list[int]] = {}
            for item_id, item in self._items.items():
                by_camera.setdefault(item.camera, []).append(item_id)
            self._camera_ids = {camera: np.array(ids, dtype=np.int64) for camera, ids in by_camera.items()}
        return self._camera_ids

    def _selector(
        self, query_camera: str | None, cameras: Collection[str] | None, *, exclude_camera: bool
    ) -> Any | None:
        """An IDSelector of the ids a search may return (on external ids: the id map translates), or None for
        all of them."""
        if cameras is not None:
            by_camera = self._camera_index()
            allowed = [by_camera[c] for c in set(cameras) if c in by_camera and not (exclude_camera and c == query_camera)]
            ids = np.concatenate(allowed) if allowed else np.empty(0, dtype=np.int64)
            return faiss.IDSelectorBatch(ids)
        excluded: list[np.ndarray] = []
        if self._tombstones:
            excluded.append(np.fromiter(self._tombstones, dtype=np.int64))
        if exclude_camera:
            excluded.append(self._camera_index().get(query_camera, np.empty(0, dtype=np.int64)))
        if not excluded or sum(len(e) for e in excluded) == 0:
            return None
        return faiss.IDSelectorNot(faiss.IDSelectorBatch(np.concatenate(excluded)))

    def _parameters(self, ef_search: int | None, nprobe: int | None) -> Any:
        """A function from a selector to the search parameters of this index type."""
        inner = self._inner()
        hnsw = _hnsw(inner)
        ivf = faiss.try_extract_index_ivf(inner)
        if ef_search is not None and (hnsw is None or ef_search < 1):
            raise ConfigError(f"ef_search={ef_search}: expected a positive value for an HNSW index ({self.factory!r})")
        if nprobe is not None and (ivf is None or nprobe < 1):
            raise ConfigError(f"nprobe={nprobe}: expected a positive value for an IVF index ({self.factory!r})")

        # faiss's bundled stubs lack SearchParametersHNSW and the keyword constructors of the others.
        swig: Any = faiss

        def make(selector: Any | None) -> Any:
            if hnsw is not None:
                params = swig.SearchParametersHNSW(efSearch=ef_search or int(hnsw.efSearch))
            elif ivf is not None:
                params = swig.SearchParametersIVF(nprobe=nprobe or int(ivf.nprobe))
            else:
                params = swig.SearchParameters()
            # Selectors name external ids; translated here (the id map leaves a translated one alone) so that a
            # pre-transform, which hands only its inner parameters down, filters the same way.
            translated = None if selector is None else swig.IDSelectorTranslated(self._index.id_map, selector)
            if translated is not None:
                params.sel = translated
            # SWIG parameter objects hold raw pointers: keep what they point to alive with them.
            params.referenced_objects = [selector, translated]
            if isinstance(inner, faiss.IndexPreTransform):
                outer = swig.SearchParametersPreTransform(index_params=params)
                outer.referenced_objects = [params]
                return outer
            return params

        return make

    def _reranked(self, query: np.ndarray, scores: np.ndarray, labels: np.ndarray, top_k: int) -> list[Match]:
        found = labels >= 0
        ids, cosine = labels[found], scores[found]
        if ids.size == 0:
            return []
        candidates = self.vectors(ids)
        query_row = query[None, :]
        distances = re_ranking(
            compute_distance(query_row, candidates),
            compute_distance(query_row, query_row),
            compute_distance(candidates, candidates),
        )[0]
        order = np.argsort(distances, kind="stable")[:top_k]
        return [Match(int(ids[i]), float(cosine[i]), self._items[int(ids[i])], float(distances[i])) for i in order]


@contextmanager
def update_gallery(
    path: str | Path,
    model_id: str | None = None,
    *,
    dim: int | None = None,
    compact: bool | None = None,
    timeout: float | None = None,
) -> Iterator[Gallery]:
    """The gallery at ``path``, loaded under its write lock, to change in the block; saved (``compact`` as in
    :meth:`Gallery.save`) when the block ends without an exception, and the lock released after.

    Every change made this way is a read-modify-write that no other writer can come between: concurrent writers
    of one gallery take turns, lose none of each other's items and never hand out one id twice. The lock is waited
    on for up to ``timeout`` seconds (default ``EDGEREID_LOCK_TIMEOUT`` or 600), then ``LockTimeoutError``.
    ``model_id`` and ``dim`` are checked as by :meth:`Gallery.load`. Keep the block short (embed images before it):
    other writers wait for it.
    """
    target = Path(path)
    with exclusive(target, "gallery", timeout):
        gallery = Gallery._read(target, model_id, dim)
        yield gallery
        gallery._write(target, compact)


def _hnsw(index: Any) -> Any | None:
    """The HNSW graph of an HNSW index (also under a pre-transform), else None."""
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index.hnsw if isinstance(index, faiss.IndexHNSW) else None


def _min_training_vectors(index: Any) -> int:
    """The fewest vectors faiss trains this index on: one per IVF list, one per PQ/SQ codebook entry."""
    if index.is_trained:
        return 0
    needed = 1
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        needed = max(needed, int(ivf.nlist))
    base = ivf if ivf is not None else index
    while isinstance(base, faiss.IndexPreTransform):
        base = faiss.downcast_index(base.index)
    pq = getattr(base, "pq", None)
    if pq is not None:
        needed = max(needed, int(pq.ksub))
    return needed


def _faiss_message(error: Exception) -> str:
    """The useful line of a faiss C++ exception (its text also holds the source file and function)."""
    text = str(error).strip() or type(error).__name__
    for line in text.splitlines():
        if "Error:" in line or "error" in line.lower():
            # "Error in <function> at <file>:<line>: Error: '<condition>' failed: <message>" → "<message>"
            line = re.sub(r"^Error in .*? at \S+:\d+: ", "", line)
            line = re.sub(r"^'.*?' failed: (?=\S)", "", line.split("Error:", 1)[-1].strip())
            return line or text
    return text


def _check_file(file: Path, size: int, sha256: str, header_path: Path) -> None:
    if not file.is_file():
        raise DataError(f"gallery file '{file}' is missing; the gallery is incomplete")
    try:
        actual_size = file.stat().st_size
        actual_sha256 = sha256_file(file) if actual_size == size else None
    except OSError as error:
        raise DataError(f"gallery file '{file}' cannot be read ({type(error).__name__}: {error})") from None
    if actual_size != size:
        raise DataError(
            f"gallery file '{file}' holds {actual_size} bytes; '{header_path}' says {size} (truncated or changed "
            "after saving: rebuild the gallery)"
        )
    if actual_sha256 != sha256:
        raise DataError(
            f"gallery file '{file}' does not match the sha256 in '{header_path}'; it was changed or damaged after "
            "saving (rebuild the gallery)"
        )


def _read_items(path: Path) -> dict[int, GalleryItem]:
    items: dict[int, GalleryItem] = {}
    for number, record in enumerate(read_items(path), start=1):
        if record.id in items:
            raise DataError(
                f"'{path}' line {number}: id {record.id} is on an earlier line too; expected unique ids"
            )
        items[record.id] = GalleryItem(
            identity=record.identity, camera=record.camera, path=record.path, time=record.time,
            extra=record.extra, sha256=record.sha256,
        )
    return items


def _check_consistent(
    root: Path, header: GalleryHeader, index: faiss.IndexIDMap2, items: dict[int, GalleryItem]
) -> None:
    """The index's ids are exactly the items' and the tombstones', each once, all below ``next_id``."""
    tombstones = set(header.tombstones)
    if len(items) != header.count or int(index.ntotal) != len(items) + len(tombstones):
        raise DataError(
            f"gallery '{root}' is inconsistent: {len(items)} items in {ITEMS_FILE}, {index.ntotal} vectors in "
            f"{INDEX_FILE} with {len(tombstones)} tombstones, header count {header.count}"
        )
    stored = np.sort(faiss.vector_to_array(index.id_map))
    expected = np.sort(np.fromiter([*items, *tombstones], dtype=np.int64, count=len(items) + len(tombstones)))
    if not np.array_equal(stored, expected):
        differing = int(np.flatnonzero(stored != expected)[0])
        raise DataError(
            f"gallery '{root}' is inconsistent: {INDEX_FILE} holds id {int(stored[differing])} where {ITEMS_FILE} "
            f"and the tombstones of {HEADER_FILE} expect id {int(expected[differing])}"
        )
    if stored.size and int(stored[-1]) >= header.next_id:
        raise DataError(
            f"'{root / HEADER_FILE}' has next_id {header.next_id}, but id {int(stored[-1])} is in use; expected a "
            "next_id above every id, so that no id is handed out twice"
        )


# ------------------------------------------------------------------------------------------ galleries of image files
def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found under folders (recursively, sorted), without repeats."""
    from edgereid.data.readers._common import IMAGE_SUFFIXES

    found: list[Path] = []
    for entry in (Path(p) for p in paths):
        if entry.is_dir():
            found.extend(sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif entry.is_file():
            found.append(entry)
        else:
            raise DataError(f"'{entry}' is neither an image file nor a folder of images")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise DataError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(str(p) for p in paths) or 'nothing'}"
        )
    return unique


def item_for_image(path: Path) -> GalleryItem:
    """Metadata of an image file: identity and camera from a Market-1501, DukeMTMC-reID or MSMT17 name (the camera
    as written in it, e.g. 'c3' → '3'), else none; the path and the file's modification time."""
    from edgereid.data.readers.market import NAMINGS

    identity = camera = None
    for pattern in NAMINGS.values():
        parsed = pattern.parse(path.name)
        if parsed is not None:
            identity, camera = str(parsed[0]), str(parsed[1] + pattern.camera_offset)
            break
    try:
        modified, sha256 = path.stat().st_mtime, sha256_file(path)
    except OSError as error:
        raise DataError(f"image '{path}' cannot be read ({type(error).__name__}: {error})") from None
    return GalleryItem(identity=identity, camera=camera, path=str(path), time=modified, sha256=sha256)


def embed_images_into(gallery: Gallery, embedder: Embedder, images: Sequence[Path]) -> np.ndarray:
    """Embed ``images`` with ``embedder`` and add them, with metadata from their names and files; refuses
    an embedder of another model, embedding size or precision. Returns the new ids."""
    check_embedder(gallery, embedder)
    embeddings = embedder.embed_paths(list(images))
    return gallery.add(embeddings, [item_for_image(path) for path in images])


@dataclass(frozen=True)
class AddedImages:
    """What :func:`add_images` did: the new ids (in the order of the images added), the images it left out because
    the gallery already held them, and how many items the gallery holds now."""

    ids: np.ndarray
    already_present: list[Path]
    count: int


def add_images(
    path: str | Path,
    embedder: Embedder,
    images: Sequence[Path],
    *,
    allow_duplicates: bool = False,
    timeout: float | None = None,
) -> AddedImages:
    """Embed ``images`` with ``embedder`` and add them to the gallery at ``path`` (:func:`update_gallery`: safe
    beside other writers; embedding happens before the lock is taken).

    An image whose file name and contents (sha256) match an item already in the gallery, or an earlier image of
    ``images``, is left out and reported in ``already_present``, unless ``allow_duplicates``.
    """
    target = Path(path)
    # Unlocked first look: a wrong bundle or a gallery that already holds every image fails or returns before
    # anything is embedded.
    current = Gallery.load(target, embedder.model_id, dim=embedder.feature_dim)
    check_embedder(current, embedder)
    candidates = [item_for_image(image) for image in images]
    keep = list(range(len(candidates))) if allow_duplicates else _new_images(current, candidates)
    if not keep:
        return AddedImages(np.empty(0, dtype=np.int64), list(images), len(current))
    needed = _min_training_vectors(current._inner())
    if len(keep) < needed:
        raise DataError(
            f"gallery '{target}' has an untrained {current.factory!r} index, which needs at least {needed} "
            f"images in its first addition; got {len(keep)}: add at least {needed} images at once"
        )
    embeddings = embedder.embed_paths([images[position] for position in keep])
    with update_gallery(target, embedder.model_id, dim=embedder.feature_dim, timeout=timeout) as gallery:
        check_embedder(gallery, embedder)
        # Another writer may have added some of these images while they were being embedded.
        still_new = keep if allow_duplicates else _new_images(gallery, candidates, among=keep)
        row_of = {position: row for row, position in enumerate(keep)}
        rows = [row_of[position] for position in still_new]
        ids = (
            gallery.add(embeddings[rows], [candidates[position] for position in still_new])
            if still_new else np.empty(0, dtype=np.int64)
        )
        count = len(gallery)
    left_out = sorted(set(range(len(images))) - set(still_new))
    return AddedImages(ids, [images[position] for position in left_out], count)


def _new_images(
    gallery: Gallery, candidates: Sequence[GalleryItem], among: Sequence[int] | None = None
) -> list[int]:
    """Positions (of ``among``, default all) of the candidates whose file name and sha256 match no gallery item
    and no earlier candidate. The directory is left out: the same file named through another relative path or
    another mount is still the same image."""

    def key(item: GalleryItem) -> tuple[str, str] | None:
        return None if item.path is None or item.sha256 is None else (Path(item.path).name, item.sha256)

    seen = {key(item) for item in gallery.items().values()} - {None}
    fresh = []
    for position in range(len(candidates)) if among is None else among:
        candidate_key = key(candidates[position])
        if candidate_key not in seen:
            fresh.append(position)
            seen.add(candidate_key)
    return fresh


def remove_items(
    path: str | Path,
    ids: Collection[int] = (),
    image_paths: Collection[str] = (),
    *,
    timeout: float | None = None,
) -> tuple[int, int]:
    """Remove the items ``ids`` and the items added from ``image_paths`` (as given when added, or resolving to the
    same file) from the gallery at ``path`` (:func:`update_gallery`: safe beside other writers); nothing is
    removed if any of them is not in the gallery. Returns how many items were removed and how many remain."""
    target = Path(path)
    with update_gallery(target, timeout=timeout) as gallery:
        wanted = set(ids)
        if image_paths:
            by_path: dict[str, list[int]] = {}
            for item_id, item in gallery.items().items():
                if item.path is not None:
                    by_path.setdefault(item.path, []).append(item_id)
                    by_path.setdefault(str(Path(item.path).resolve()), []).append(item_id)
            for image_path in image_paths:
                matched = by_path.get(image_path) or by_path.get(str(Path(image_path).resolve()))
                if not matched:
                    raise DataError(f"gallery '{target}' has no item with the path '{image_path}'")
                wanted.update(matched)
        removed = gallery.remove(sorted(wanted))
        remaining = len(gallery)
    return removed, remaining


def check_embedder(gallery: Gallery, embedder: Embedder, *, searching: bool = False) -> None:
    """Refuse an embedder whose embeddings the gallery's cannot be compared with: another model, another size.

    Another precision than the gallery's (where recorded) gives embeddings close to, not equal to, the gallery's:
    adding them is refused (one gallery holds one kind of embedding); ``searching`` with them is allowed with a
    warning, since cross-precision retrieval is what no verification measured.
    """
    if embedder.model_id != gallery.model_id:
        raise ConfigError(
            f"the gallery holds embeddings of model {gallery.model_id}, but the bundle's model is "
            f"{embedder.model_id}; embeddings of different models are not comparable (use the bundle the gallery "
            "was built with, or rebuild the gallery)"
        )
    if embedder.feature_dim != gallery.dim:
        raise ConfigError(
            f"the bundle's model gives {embedder.feature_dim}-d embeddings; the gallery holds {gallery.dim}-d ones"
        )
    if gallery.precision is None or embedder.precision == gallery.precision:
        return
    message = (
        f"the gallery holds {gallery.precision} embeddings of this model, the embedder computes "
        f"{embedder.precision} ones, which differ from them slightly"
    )
    if not searching:
        raise ConfigError(
            f"{message}; one gallery holds embeddings of one precision: embed at {gallery.precision} "
            f"(--precision {gallery.precision}), or rebuild the gallery at {embedder.precision}"
        )
    warnings.warn(
        f"{message}: scores and ranks are not those of either precision alone, and no verification measured them "
        f"(search with --precision {gallery.precision} for the gallery's own)",
        stacklevel=2,
    )
