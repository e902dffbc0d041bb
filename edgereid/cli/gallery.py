"""`edgereid gallery …` and `edgereid search`: faiss galleries of image embeddings (a thin layer over
edgereid.runtime.gallery and the Embedder)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table

from edgereid.bundle_format import PRECISIONS
from edgereid.cli._output import console, error_console, parse_options, print_json
from edgereid.errors import ConfigError, DataError
from edgereid.runtime.runners import BACKENDS

if TYPE_CHECKING:
    from edgereid.runtime.gallery import Match

_backend = click.option("--backend", type=click.Choice(BACKENDS), default="onnxruntime", show_default=True)
_precision = click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
_batch_size = click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
_runner_options = click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
                               help="A backend option, e.g. -o threads=4 (onnxruntime), -o device=cuda (torch).")


def _embedder(bundle: Path, backend: str, precision: str, batch_size: int, options: tuple[str, ...]) -> Any:
    from edgereid.runtime.embedder import Embedder

    return Embedder(bundle, backend, precision, batch_size=batch_size, **parse_options(options))


@click.group("gallery")
def gallery() -> None:
    """Build, change and inspect faiss galleries of image embeddings."""


@gallery.command("build")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="The gallery directory.")
@_backend
@_precision
@click.option("--index", "index_factory", default="Flat", show_default=True,
              help="faiss index factory string under inner product: Flat (exact), HNSW32, IVF4096,PQ64, …")
@_batch_size
@_runner_options
@click.option("--overwrite", is_flag=True, help="Replace a gallery already at --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the gallery's info as JSON.")
def build_command(
    bundle: Path,
    images: tuple[Path, ...],
    out_dir: Path,
    backend: str,
    precision: str,
    index_factory: str,
    batch_size: int,
    options: tuple[str, ...],
    overwrite: bool,
    as_json: bool,
) -> None:
    """Embed IMAGES (files or folders) with BUNDLE's model and save them as a new gallery at --out.

    Identity and camera come from Market-1501, DukeMTMC-reID or MSMT17 file names when they follow one."""
    from edgereid.runtime.gallery import Gallery, collect_images, embed_images_into

    if out_dir.exists() and not overwrite:
        raise ConfigError(f"'{out_dir}' already exists; pass --overwrite to replace it")
    paths = collect_images(images)
    with _embedder(bundle, backend, precision, batch_size, options) as embedder:
        built = Gallery.create(
            embedder.feature_dim, embedder.model_id, index_factory, precision=embedder.precision
        )
        needed = built.info()["min_training_vectors"]
        if len(paths) < needed:
            raise ConfigError(
                f"--index {index_factory} needs at least {needed} images to train its index; got {len(paths)}: "
                f"give at least {needed} images, or choose a smaller --index (fewer IVF lists or PQ centroids, "
                "or Flat)"
            )
        embed_images_into(built, embedder, paths)
    # Under the gallery's write lock: a gallery another build or add wrote meanwhile is not replaced unasked.
    built.save(out_dir, overwrite=overwrite)
    _show_info(built.info(), out_dir, as_json)


@gallery.command("add")
@click.argument("index", type=click.Path(path_type=Path))
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@_backend
@_precision
@_batch_size
@_runner_options
@click.option("--allow-duplicates", is_flag=True,
              help="Add images the gallery already holds (same file name and contents) again.")
@click.option("--json", "as_json", is_flag=True, help="Print the new ids as JSON.")
def add_command(
    index: Path,
    bundle: Path,
    images: tuple[Path, ...],
    backend: str,
    precision: str,
    batch_size: int,
    options: tuple[str, ...],
    allow_duplicates: bool,
    as_json: bool,
) -> None:
    """Embed IMAGES with BUNDLE's model (the one the gallery was built with) and add them to the gallery INDEX.

    Images the gallery already holds (same file name and contents) are left out, with a notice. Concurrent adds
    and removes of one gallery take turns (EDGEREID_LOCK_TIMEOUT: seconds to wait, default 600)."""
    from edgereid.runtime.gallery import add_images, collect_images

    paths = collect_images(images)
    with _embedder(bundle, backend, precision, batch_size, options) as embedder:
        added = add_images(index, embedder, paths, allow_duplicates=allow_duplicates)
    if as_json:
        print_json({
            "added": added.ids.tolist(),
            "already_present": [str(path) for path in added.already_present],
            "count": added.count,
        })
    elif len(added.ids):
        console.print(f"added {len(added.ids)} images to '{index}' (ids {added.ids[0]}…{added.ids[-1]}); "
                      f"it holds {added.count}")
    else:
        console.print(f"added no images to '{index}'; it holds {added.count}")
    if added.already_present:
        example = escape(str(added.already_present[0]))
        error_console.print(
            f"[yellow]notice:[/] {len(added.already_present)} of {len(paths)} images are already in "
            f"'{escape(str(index))}' (same file name and contents, e.g. '{example}') and were left out; pass "
            "--allow-duplicates to add them again",
            highlight=False, soft_wrap=True,
        )


@gallery.command("remove")
@click.argument("index", type=click.Path(path_type=Path))
@click.argument("ids", nargs=-1, type=int)
@click.option("--path", "paths", multiple=True, help="Remove the items added from this image path (repeatable).")
def remove_command(index: Path, ids: tuple[int, ...], paths: tuple[str, ...]) -> None:
    """Remove items from the gallery INDEX by id (or by --path); nothing is removed if one is not there."""
    from edgereid.runtime.gallery import remove_items

    if not ids and not paths:
        raise ConfigError("name the items to remove: ids, or --path PATH")
    removed, remaining = remove_items(index, ids, paths)
    console.print(f"removed {removed} items from '{index}'; it holds {remaining}")


@gallery.command("info")
@click.argument("index", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info_command(index: Path, as_json: bool) -> None:
    """What the gallery INDEX holds and how it searches."""
    from edgereid.runtime.gallery import Gallery

    _show_info(Gallery.load(index).info(), index, as_json)


def _show_info(info: dict[str, Any], path: Path, as_json: bool) -> None:
    if as_json:
        print_json({"path": str(path), **info})
        return
    table = Table("key", "value", title=f"gallery {path}")
    for key, value in info.items():
        if value is not None:
            table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(table)


@click.command("search")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("index", type=click.Path(path_type=Path))
@click.argument("queries", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--exclude-same-camera", is_flag=True,
              help="Skip gallery items from the query's camera (read from its Market/Duke/MSMT17 name).")
@click.option("--rerank", is_flag=True, help="Re-order each query's first 100 matches with k-reciprocal re-ranking.")
@click.option("--ef-search", type=click.IntRange(min=1), help="HNSW: candidates searched (default: the index's).")
@click.option("--nprobe", type=click.IntRange(min=1), help="IVF: lists visited (default: the index's).")
@_backend
@_precision
@_batch_size
@_runner_options
@click.option("--json", "as_json", is_flag=True, help="Print the matches as JSON.")
def search_command(
    bundle: Path,
    index: Path,
    queries: tuple[Path, ...],
    top_k: int,
    exclude_same_camera: bool,
    rerank: bool,
    ef_search: int | None,
    nprobe: int | None,
    backend: str,
    precision: str,
    batch_size: int,
    options: tuple[str, ...],
    as_json: bool,
) -> None:
    """The --top-k most similar gallery items of each QUERY image (files or folders), embedded with BUNDLE."""
    from dataclasses import asdict

    from edgereid.runtime.gallery import Gallery, check_embedder, collect_images, item_for_image

    paths = collect_images(queries)
    query_cameras = None
    if exclude_same_camera:
        query_cameras = [item_for_image(path).camera for path in paths]
        unknown = [path for path, camera in zip(paths, query_cameras) if camera is None]
        if unknown:
            raise DataError(
                f"--exclude-same-camera needs the camera of every query; '{unknown[0]}' has no Market-1501, "
                "DukeMTMC-reID or MSMT17 name to read it from"
            )
    with _embedder(bundle, backend, precision, batch_size, options) as embedder:
        searched = Gallery.load(index, embedder.model_id, dim=embedder.feature_dim)
        check_embedder(searched, embedder, searching=True)
        embeddings = embedder.embed_paths(paths)
    results = searched.search(
        embeddings,
        top_k,
        query_cameras=query_cameras,
        exclude_same_camera=exclude_same_camera,
        rerank=rerank,
        ef_search=ef_search,
        nprobe=nprobe,
    )
    if as_json:
        print_json([
            {"query": str(path), "matches": [
                {"id": m.id, "score": m.score, "rerank_distance": m.rerank_distance, **asdict(m.item)}
                for m in matches
            ]}
            for path, matches in zip(paths, results)
        ])
        return
    for path, matches in zip(paths, results):
        print_matches(str(path), matches)


def print_matches(title: str, matches: Sequence[Match]) -> None:
    """One query's matches as a table, best first."""
    table = Table("rank", "id", "score", "identity", "camera", "path", title=f"query {title}")
    for rank, match in enumerate(matches, start=1):
        item = match.item
        table.add_row(str(rank), str(match.id), f"{match.score:.4f}", item.identity or "-", item.camera or "-",
                      item.path or "-")
    console.print(table)
