"""The README's main job: the whole path on built-in synthetic data, stage by stage, with visible progress.

data → mutual learning of a small student and a larger teacher → evaluation → export of both networks (FP32,
FP16, INT8 calibrated on the train split) → verification of every precision against FP32 in the runtime → a
faiss gallery of the student's INT8 embeddings and a search → latency benchmarks → the accuracy-vs-latency report
and its Pareto plot. Each step calls the same public function as its own command.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgereid.atomic import atomic_write_text
from edgereid.bundle_format import DEFAULT_MAX_MAP_DROP

DEFAULT_RECIPE = "quickstart_mutual"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; ``QUICK`` proves the path in CI, ``FULL`` makes a model worth looking at."""

    overrides: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8", "int8_cpu")
    calibration_images: int = 512
    # Every INT8 model held to the default budget by the accuracy-aware search, as `edgereid export --int8` does.
    max_map_drop: float | None = DEFAULT_MAX_MAP_DROP
    verify_images: int | None = None
    bench_batches: tuple[int, ...] = (1, 32)
    bench_warmup: int = 3
    bench_iters: int = 20
    search_queries: int = 5


FULL = DemoSettings()
QUICK = DemoSettings(
    overrides=("data.synthetic.ids=24", "data.sampler.p=8", "solver.epochs=1", "solver.iters_per_epoch=3"),
    precisions=("fp32", "int8_cpu"),
    calibration_images=32,
    verify_images=48,
    bench_warmup=1,
    bench_iters=3,
    search_queries=2,
)


@dataclass
class DemoResult:
    out: Path
    run_dir: Path
    bundles: dict[str, Path] = field(default_factory=dict)
    result_files: list[Path] = field(default_factory=list)
    gallery: Path | None = None
    report_dir: Path | None = None
    elapsed_s: float = 0.0


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    recipe_name: str = DEFAULT_RECIPE,
    device: str = "auto",
    console: Console | None = None,
) -> DemoResult:
    """Run every stage into ``out`` (data/, runs/, bundle-NETWORK/, results/, gallery/, report/) and return where
    everything went. ``device`` trains on a GPU when there is one ("auto")."""
    from edgereid.cli.data import make_synthetic
    from edgereid.recipes import load_recipe
    from edgereid.training import train

    console = console or Console()
    settings = QUICK if quick else FULL
    started = time.perf_counter()
    out = Path(out)
    data_root = out / "data"
    overrides = [f"data.root={data_root}", f"train.output_dir={out / 'runs' / '{name}'}", *settings.overrides]
    recipe = load_recipe(recipe_name, overrides)
    synthetic = recipe.data.synthetic
    assert synthetic is not None, "the demo's recipes generate their data"

    console.rule("[bold]1/8 synthetic data")
    summary = make_synthetic(
        data_root, synthetic.ids, synthetic.cameras, synthetic.seed, synthetic.size,
        synthetic.images_per_id_per_camera, overwrite=True,
    )
    console.print(f"{summary.total_images} images of {synthetic.ids} identities in {summary.elapsed_s:.1f} s → {data_root}")

    networks = recipe.networks()
    described = ", ".join(f"{name}: {config.backbone.name}" for name, config in networks.items())
    console.rule(f"[bold]2/8 train ({described}; {recipe.solver.epochs} epochs)")
    trained = train(recipe, device=device, console=console)
    result = DemoResult(out=out, run_dir=trained.run_dir)

    console.rule("[bold]3/8 evaluate every network (PyTorch, flip test)")
    _evaluate(trained.last_checkpoint, list(networks), console)

    console.rule(f"[bold]4/8 export: fold BN, ONNX {' / '.join(p.upper() for p in settings.precisions)}")
    result.bundles = _export(trained.last_checkpoint, list(networks), out, settings, console)

    console.rule("[bold]5/8 verify every precision against FP32 in ONNX Runtime")
    results_dir = out / "results"
    for name, bundle in result.bundles.items():
        result.result_files.append(_verify(bundle, results_dir / f"verify-{name}.json", settings, console))

    student = recipe.student
    console.rule(f"[bold]6/8 gallery and search with the student ({student}, {settings.precisions[-1].upper()})")
    result.gallery = _gallery_and_search(result.bundles[student], settings.precisions[-1], data_root, out / "gallery",
                                         settings, console)

    console.rule("[bold]7/8 benchmark latency (ONNX Runtime, CPU)")
    for name, bundle in result.bundles.items():
        result.result_files.append(_bench(bundle, results_dir / f"bench-{name}.json", settings, console))

    console.rule("[bold]8/8 report: accuracy against latency")
    from edgereid.cli.report import print_report
    from edgereid.report.table import build_report

    pictures = _pictures(trained.last_checkpoint, result.bundles[student], out / "pictures", settings, console)
    # The run directory brings its training curves into the report; the pictures are linked from it.
    report = build_report([*result.result_files, trained.run_dir], out / "report", pictures=pictures)
    print_report(report)
    result.report_dir = report.out_dir
    result.elapsed_s = time.perf_counter() - started
    console.rule("[bold]done")
    console.print(f"whole path in {result.elapsed_s / 60:.1f} min; outputs in {out.resolve()}", soft_wrap=True)
    console.print(f"report: {report.markdown}\n        {report.html}\nplot:   {', '.join(map(str, report.plots))}",
                  soft_wrap=True, highlight=False)
    return result


def _pictures(
    checkpoint: Path, bundle: Path, target: Path, settings: DemoSettings, console: Console
) -> list[tuple[str, Path]]:
    """Ranked lists of the student checkpoint (`edgereid eval --visualize`) and where its reduced precisions rank
    differently from FP32 (`edgereid verify --visualize`)."""
    from edgereid.report.precision_diff import visualize_bundle
    from edgereid.report.visualize import evaluate_and_visualize

    _, ranked = evaluate_and_visualize(checkpoint, target / "ranked-lists", flip=True)
    differences = visualize_bundle(bundle, target / "precisions", max_images=settings.verify_images)
    console.print(f"pictures: {ranked}, {differences}", highlight=False, soft_wrap=True)
    return [("ranked lists of the student (PyTorch checkpoint)", ranked),
            ("where the student's reduced precisions rank differently from FP32", differences)]


def _evaluate(checkpoint: Path, networks: list[str], console: Console) -> None:
    from edgereid.training import evaluate_checkpoint

    table = Table("network", "mAP", "rank-1", "rank-5", "mINP", title=str(checkpoint))
    for name in networks:
        metrics = evaluate_checkpoint(checkpoint, flip=True, network=name).to_dict()
        table.add_row(name, *(f"{metrics[key]:.2%}" for key in ("mAP", "rank1", "rank5", "mINP")))
    console.print(table)


def _export(
    checkpoint: Path, networks: list[str], out: Path, settings: DemoSettings, console: Console
) -> dict[str, Path]:
    from edgereid.cli.export import print_bundle
    from edgereid.export import export_checkpoint

    bundles: dict[str, Path] = {}
    for name in networks:
        bundle = export_checkpoint(
            checkpoint,
            out / f"bundle-{name}",
            precisions=settings.precisions,
            network=name,
            overwrite=True,
            calibration_images=settings.calibration_images,
            max_map_drop=settings.max_map_drop,
        )
        print_bundle(bundle)
        bundles[name] = bundle.path
    return bundles


def _verify(bundle: Path, target: Path, settings: DemoSettings, console: Console) -> Path:
    from edgereid.cli.verify import print_verification
    from edgereid.runtime.verify import verify_runtime

    verification = verify_runtime(bundle, backend="onnxruntime", max_images=settings.verify_images)
    atomic_write_text(target, json.dumps(verification, indent=2) + "\n")
    print_verification(verification)
    return target


def _gallery_and_search(
    bundle: Path, precision: str, data_root: Path, target: Path, settings: DemoSettings, console: Console
) -> Path:
    from edgereid.cli.gallery import print_matches
    from edgereid.data import load_dataset
    from edgereid.runtime.embedder import Embedder
    from edgereid.runtime.gallery import Gallery, embed_images_into, item_for_image

    dataset = load_dataset(data_root, "market1501")
    query_paths = [record.path for record in dataset.query]
    with Embedder(bundle, backend="onnxruntime", precision=precision) as embedder:
        gallery = Gallery.create(embedder.feature_dim, embedder.model_id)
        embed_images_into(gallery, embedder, [record.path for record in dataset.gallery])
        gallery.save(target)
        query_embeddings = embedder.embed_paths(query_paths)
    # Identity and camera as `edgereid gallery build` records them: read from the file names.
    queries = [item_for_image(path) for path in query_paths]
    matches = gallery.search(query_embeddings, top_k=5, query_cameras=[query.camera for query in queries],
                             exclude_same_camera=True)
    correct = sum(bool(found) and found[0].item.identity == query.identity for found, query in zip(matches, queries))
    console.print(f"gallery of {len(gallery)} images → {target}; top-1 is the right identity for {correct} of "
                  f"{len(queries)} queries ({correct / len(queries):.1%}, other cameras only)")
    for path, query, found in list(zip(query_paths, queries, matches))[: settings.search_queries]:
        print_matches(f"{path.name} (identity {query.identity}, camera {query.camera})", found)
    return target


def _bench(bundle: Path, target: Path, settings: DemoSettings, console: Console) -> Path:
    from edgereid.cli.bench import print_bench
    from edgereid.report.bench import bench_target

    measured = bench_target(bundle, backends=["onnxruntime"], batches=settings.bench_batches,
                            warmup=settings.bench_warmup, iters=settings.bench_iters)
    atomic_write_text(target, json.dumps(measured, indent=2) + "\n")
    print_bench(measured)
    return target
