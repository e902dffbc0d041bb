#!/usr/bin/env python3
"""Embed incoming person/vehicle crops and search them in a gallery, one JSON line per crop.

An example service for a Jetson (or any Linux box) built on edgereid's torch-free runtime: ``Embedder``
(TensorRT or ONNX Runtime) and ``Gallery`` (faiss). It reads crops from a watched directory (``--incoming``)
or image paths on stdin (``--stdin``), embeds them in batches, searches the gallery and appends one JSON
object per crop to ``--results`` (``-``: stdout):

    {"time": "...", "path": "...", "camera": "c1", "matches": [{"id": 3, "score": 0.91, "identity": "17",
     "camera": "c2", "path": "..."}], "best_score": 0.91, "matched": true, "enrolled_id": null}

An enrolled crop's line also carries the new ``identity``.

A crop that cannot be decoded gives ``{"time", "path", "error"}`` instead and is moved to ``--failed-dir``.
With ``--enroll-unmatched`` a crop whose best score is below ``--threshold`` joins the gallery as a new
identity (``auto-<hex>``), so later sightings match it; crops of one batch are searched before any of them
is enrolled. The gallery is saved (atomically, by ``Gallery.save``) every ``--save-every`` seconds when it
changed and once more on exit. SIGTERM and SIGINT finish the batch in hand, save, and exit 0.

Writers must publish crops atomically into the incoming directory (write ``.name.jpg`` or ``name.jpg.tmp``,
then rename): hidden files and unknown suffixes are ignored, and a file younger than ``--settle`` seconds is
left for the next scan. Every option has an ``EDGEREID_*`` environment variable (see ``--help``), which is how
the systemd unit configures it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import select
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import IO, Any

LOG = logging.getLogger("edgereid-search")
# Every option --some-name defaults to the environment variable EDGEREID_SOME_NAME.
ENV_PREFIX = "EDGEREID_"


@dataclass(frozen=True)
class Crop:
    path: Path
    camera: str | None


def _env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


class _EnvDefaults(argparse.ArgumentParser):
    """An ArgumentParser whose options default to ``EDGEREID_<DEST>`` from the environment (a systemd
    EnvironmentFile or ``docker run -e``), parsed by the option's own type so bad values fail by name."""

    def add_env_argument(self, *flags: str, **kwargs: Any) -> argparse.Action:
        action = self.add_argument(*flags, **kwargs)
        env = _env_name(action.dest)
        raw = os.environ.get(env)
        if raw is not None and raw != "":
            if action.nargs == 0:  # a flag (store_true)
                if raw.lower() not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
                    self.error(f"environment variable {env}={raw!r}: expected true/false")
                action.default = raw.lower() in {"1", "true", "yes", "on"}
            elif action.nargs == "*":
                action.default = raw.split()
            else:
                convert = action.type if callable(action.type) else str
                try:
                    action.default = convert(raw)
                except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
                    self.error(f"environment variable {env}={raw!r}: {error}")
                if action.choices is not None and action.default not in action.choices:
                    choices = ", ".join(map(str, action.choices))
                    self.error(f"environment variable {env}={raw!r}: expected one of {choices}")
        action.help = f"{action.help} [env {env}]" if action.help else f"[env {env}]"
        return action


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _camera_pattern(text: str) -> re.Pattern[str]:
    try:
        pattern = re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"not a regular expression: {error}") from None
    if "camera" not in pattern.groupindex:
        raise argparse.ArgumentTypeError(f"{text!r} has no named group (?P<camera>...)")
    return pattern


def build_parser() -> _EnvDefaults:
    parser = _EnvDefaults(
        prog="edgereid_search_service.py",
        description="Embed incoming crops with an edgereid bundle and search them in a faiss gallery; one "
        "JSON line per crop. Every option also reads EDGEREID_<OPTION> from the environment.",
    )
    add = parser.add_env_argument
    add("--bundle", type=Path, help="Export bundle directory (with engine.<precision>.plan for tensorrt).")
    add(
        "--gallery",
        type=Path,
        help="Gallery directory (edgereid gallery build, or created with --create-gallery).",
    )
    add(
        "--backend",
        default="onnxruntime",
        choices=("tensorrt", "onnxruntime"),
        help="Inference backend (default: %(default)s; tensorrt on a Jetson).",
    )
    add(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16", "int8"),
        help="Model precision (default: %(default)s).",
    )
    add(
        "--option",
        dest="runner_options",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="Backend options, e.g. threads=4 (onnxruntime), as `edgereid verify -o` takes them.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--incoming",
        type=Path,
        default=None,
        help=f"Directory to watch for new crops. [env {_env_name('incoming')}]",
    )
    source.add_argument(
        "--stdin", action="store_true", help="Read image paths from stdin, one per line, until EOF."
    )
    add("--done-dir", type=Path, help="Where processed crops go (default: INCOMING/done).")
    add("--failed-dir", type=Path, help="Where crops that do not decode go (default: INCOMING/failed).")
    add(
        "--delete-done",
        action="store_true",
        help="Delete processed crops instead of moving them to --done-dir.",
    )
    add("--results", default="-", help="JSON-lines file results are appended to ('-': stdout; default).")
    add("--top-k", type=_positive_int, default=5, help="Matches per crop (default: %(default)s).")
    add(
        "--threshold",
        type=float,
        default=0.6,
        help="Cosine similarity at which a crop counts as matched (default: %(default)s; tune on your data).",
    )
    add(
        "--enroll-unmatched",
        action="store_true",
        help="Add crops below --threshold to the gallery as new identities.",
    )
    add(
        "--create-gallery",
        action="store_true",
        help="Create an empty gallery at --gallery when none is there.",
    )
    add(
        "--index-factory",
        default="Flat",
        help="faiss factory string for --create-gallery (default: %(default)s; Flat or HNSW32: an IVF/PQ "
        "index trains on its first add, so build one with `edgereid gallery build` from enough images).",
    )
    add(
        "--camera-pattern",
        type=_camera_pattern,
        help=r"Regex with a (?P<camera>...) group read from each file name, e.g. '_c(?P<camera>\d+)'.",
    )
    add("--exclude-same-camera", action="store_true", help="Skip gallery items from the crop's own camera.")
    add(
        "--batch-size",
        type=_positive_int,
        default=16,
        help="Crops embedded per batch (default: %(default)s).",
    )
    add(
        "--poll-interval",
        type=_non_negative_float,
        default=0.5,
        help="Seconds between scans of --incoming (default: %(default)s).",
    )
    add(
        "--settle",
        type=_non_negative_float,
        default=0.5,
        help="Seconds a file must be unchanged before it is read (default: %(default)s).",
    )
    add(
        "--save-every",
        type=_non_negative_float,
        default=60.0,
        help="Seconds between gallery saves while it changes (default: %(default)s; 0: after every batch).",
    )
    add(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="Log level (stderr).",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.incoming is None and not args.stdin:
        incoming = os.environ.get(_env_name("incoming"))
        if incoming:
            args.incoming = Path(incoming)
        else:
            parser.error(f"give --incoming DIR or --stdin (or set {_env_name('incoming')})")
    for name in ("bundle", "gallery"):
        if getattr(args, name) is None:
            parser.error(f"--{name} is required (or set {_env_name(name)})")
    if args.exclude_same_camera and args.camera_pattern is None:
        parser.error("--exclude-same-camera needs --camera-pattern to read each crop's camera")
    return args


class SearchService:
    """Embeds crops, searches and optionally enrolls them; owns the gallery and its periodic saves.

    It holds the gallery's write lock while it runs: the gallery it saves is the one it loaded plus what it enrolled,
    so another writer (`edgereid gallery add`) must wait for it to stop rather than be overwritten."""

    def __init__(self, args: argparse.Namespace, results: IO[str]) -> None:
        from edgereid.cli._output import parse_options
        from edgereid.locking import exclusive
        from edgereid.runtime.embedder import Embedder
        from edgereid.runtime.gallery import Gallery

        self.args = args
        self.results = results
        self.embedder = Embedder(
            args.bundle,
            args.backend,
            args.precision,
            batch_size=args.batch_size,
            **parse_options(tuple(args.runner_options)),
        )
        self.gallery_lock = ExitStack()
        try:
            self.gallery_lock.enter_context(exclusive(args.gallery, "gallery"))
            if (args.gallery / "gallery.json").is_file() or not args.create_gallery:
                self.gallery = Gallery.load(
                    args.gallery, model_id=self.embedder.model_id, dim=self.embedder.feature_dim
                )
            else:
                self.gallery = Gallery.create(
                    self.embedder.feature_dim, self.embedder.model_id, args.index_factory,
                    precision=self.embedder.precision,
                )
                LOG.info("created an empty %s gallery for %s", args.index_factory, args.gallery)
        except BaseException:
            self.gallery_lock.close()
            self.embedder.close()
            raise
        self.dirty = False
        self.last_save = time.monotonic()
        LOG.info(
            "bundle %s on %s/%s, gallery %s with %d items",
            args.bundle,
            self.embedder.backend,
            self.embedder.precision,
            args.gallery,
            len(self.gallery),
        )

    def camera_of(self, path: Path) -> str | None:
        pattern: re.Pattern[str] | None = self.args.camera_pattern
        found = pattern.search(path.name) if pattern is not None else None
        return found.group("camera") if found else None

    def process(self, crops: list[Crop]) -> list[dict[str, Any]]:
        """Results for ``crops`` in order: a match record for each crop that decodes, else an error record."""
        from edgereid.errors import DataError

        # None: a crop whose record comes from the search, in order.
        records: list[dict[str, Any] | None]
        try:
            embeddings = self.embedder.embed_paths([crop.path for crop in crops])
            good, records = crops, [None] * len(crops)
        except DataError:
            # One bad file fails the batch; find it (and any other) one crop at a time.
            good, rows, records = [], [], []
            for crop in crops:
                try:
                    rows.append(self.embedder.embed_paths([crop.path]))
                    good.append(crop)
                    records.append(None)
                except DataError as error:
                    records.append({"time": _now(), "path": str(crop.path), "error": str(error)})
            embeddings = _stack(rows, self.embedder.feature_dim)
        found = self._search(embeddings, good) if good else []
        matched = iter(found)
        return [record if record is not None else next(matched) for record in records]

    def _search(self, embeddings: Any, crops: list[Crop]) -> list[dict[str, Any]]:
        from edgereid.runtime.gallery import GalleryItem

        cameras = [crop.camera for crop in crops]
        if len(self.gallery):
            matches = self.gallery.search(
                embeddings,
                self.args.top_k,
                query_cameras=cameras,
                exclude_same_camera=self.args.exclude_same_camera,
            )
        else:
            matches = [[] for _ in crops]
        records = []
        enroll_rows: list[int] = []
        for row, (crop, found) in enumerate(zip(crops, matches, strict=True)):
            best = found[0].score if found else None
            is_match = best is not None and best >= self.args.threshold
            records.append(
                {
                    "time": _now(),
                    "path": str(crop.path),
                    "camera": crop.camera,
                    "matches": [
                        {
                            "id": m.id,
                            "score": round(m.score, 6),
                            "identity": m.item.identity,
                            "camera": m.item.camera,
                            "path": m.item.path,
                        }
                        for m in found
                    ],
                    "best_score": None if best is None else round(best, 6),
                    "matched": is_match,
                    "enrolled_id": None,
                }
            )
            if self.args.enroll_unmatched and not is_match:
                enroll_rows.append(row)
        if enroll_rows:
            items = [
                GalleryItem(
                    identity=f"auto-{uuid.uuid4().hex[:12]}",
                    camera=crops[row].camera,
                    path=self._kept_path(crops[row].path),
                    time=time.time(),
                    extra={"source": "edgereid-search-service"},
                )
                for row in enroll_rows
            ]
            ids = self.gallery.add(embeddings[enroll_rows], items)
            for row, item_id, item in zip(enroll_rows, ids.tolist(), items, strict=True):
                records[row]["enrolled_id"] = item_id
                records[row]["identity"] = item.identity
            self.dirty = True
        return records

    def _kept_path(self, path: Path) -> str | None:
        """Where the crop lives once processed (what an enrolled item points at); None once deleted."""
        if self.args.incoming is None:
            return str(path)
        return None if self.args.delete_done else str(done_dir(self.args) / path.name)

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.results.write(json.dumps(record, sort_keys=True) + "\n")
        self.results.flush()

    def maybe_save(self, force: bool = False) -> None:
        if not self.dirty:
            return
        if force or time.monotonic() - self.last_save >= self.args.save_every:
            self.gallery.save(self.args.gallery)
            self.dirty = False
            self.last_save = time.monotonic()
            LOG.info("saved gallery %s (%d items)", self.args.gallery, len(self.gallery))

    def close(self) -> None:
        try:
            self.maybe_save(force=True)
        finally:
            self.gallery_lock.close()
            self.embedder.close()


def done_dir(args: argparse.Namespace) -> Path:
    return Path(args.done_dir) if args.done_dir is not None else args.incoming / "done"


def failed_dir(args: argparse.Namespace) -> Path:
    return Path(args.failed_dir) if args.failed_dir is not None else args.incoming / "failed"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _stack(rows: list[Any], dim: int) -> Any:
    import numpy as np

    return np.concatenate(rows) if rows else np.empty((0, dim), dtype=np.float32)


def scan_incoming(directory: Path, settle: float, limit: int) -> list[Path]:
    """Up to ``limit`` settled image files in ``directory`` (not its subdirectories), oldest first."""
    from edgereid.data.readers._common import IMAGE_SUFFIXES

    now = time.time()
    ready: list[tuple[float, str, Path]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(".") or Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                if not entry.is_file():
                    continue
                mtime = entry.stat().st_mtime
            except FileNotFoundError:  # taken by another reader between listing and stat
                continue
            if now - mtime >= settle:
                ready.append((mtime, entry.name, Path(entry.path)))
    ready.sort()
    return [path for _, _, path in ready[:limit]]


def _retire(path: Path, target_dir: Path | None) -> None:
    if target_dir is None:
        path.unlink(missing_ok=True)
        return
    target_dir.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(target_dir / path.name))


class StdinPaths:
    """Lines of a file descriptor, read without blocking past ``timeout`` so that a stop request is seen
    while the writer is idle (a buffered readline would hold the loop until the next line)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def read(self, limit: int, timeout: float) -> list[str]:
        lines: list[str] = []
        while len(lines) < limit:
            if b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if line.strip():
                    lines.append(line.decode("utf-8", "surrogateescape").strip())
                continue
            if self.eof:
                if self.buffer.strip():
                    lines.append(self.buffer.decode("utf-8", "surrogateescape").strip())
                self.buffer = b""
                break
            # Hand back what is already here rather than waiting for a full batch.
            ready, _, _ = select.select([self.fd], [], [], 0 if lines else timeout)
            if not ready:
                break
            chunk = os.read(self.fd, 65536)
            if chunk:
                self.buffer += chunk
            else:
                self.eof = True
        return lines


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    results: IO[str] = sys.stdout
    if args.results != "-":
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        results = open(args.results, "a", encoding="utf-8")  # noqa: SIM115 - closed below, after the service
    try:
        service = SearchService(args, results)
        try:
            if args.stdin:
                _serve_stdin(service, stop, StdinPaths(sys.stdin.fileno()))
            else:
                _serve_directory(service, stop)
        finally:
            service.close()
    finally:
        if results is not sys.stdout:
            results.close()
    return 0


def _serve_stdin(service: SearchService, stop: threading.Event, reader: StdinPaths) -> None:
    args = service.args
    while not stop.is_set():
        lines = reader.read(args.batch_size, args.poll_interval)
        if lines:
            crops = [Crop(Path(line), service.camera_of(Path(line))) for line in lines]
            service.write(service.process(crops))
        service.maybe_save()
        if reader.eof and not reader.buffer:
            break


def _serve_directory(service: SearchService, stop: threading.Event) -> None:
    args = service.args
    if not args.incoming.is_dir():
        from edgereid.errors import ConfigError

        raise ConfigError(f"incoming directory '{args.incoming}' does not exist or is not a directory")
    done = None if args.delete_done else done_dir(args)
    LOG.info("watching %s", args.incoming)
    while not stop.is_set():
        paths = scan_incoming(args.incoming, args.settle, args.batch_size)
        if paths:
            crops = [Crop(path, service.camera_of(path)) for path in paths]
            records = service.process(crops)
            service.write(records)
            for crop, record in zip(crops, records, strict=True):
                _retire(crop.path, failed_dir(args) if "error" in record else done)
        service.maybe_save()
        if not paths:
            stop.wait(args.poll_interval)


def install_signal_handlers(stop: threading.Event) -> None:
    def request_stop(signum: int, frame: FrameType | None) -> None:
        LOG.info("%s: finishing the current batch, saving and exiting", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    # faiss announces which SIMD build it loaded at INFO on every start; keep the journal for the service.
    logging.getLogger("faiss").setLevel(max(logging.WARNING, logging.getLogger().level))
    stop = threading.Event()
    install_signal_handlers(stop)
    from edgereid.errors import EdgeReIDError

    try:
        return run(args, stop)
    except EdgeReIDError as error:
        LOG.error("%s", error)
        # Configuration problems will not fix themselves; systemd's Restart=on-failure still retries, at the
        # unit's RestartSec pace.
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
