"""The process ``bench_target`` measures each variant in: ``python -m edgereid.report._bench_worker SPEC RESULT``.

It imports only the runtime and the backend's library before measuring, so its peak memory is that of a process
serving the model. The measurement, or the EdgeReIDError that stopped it, is written to RESULT as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgereid.bundle_format import ExportBundle, load_bundle
from edgereid.errors import EdgeReIDError
from edgereid.report.bench import measure


def main(spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    try:
        # A checkpoint travels as the file-less manifest that describes it to the torch runner.
        bundle = (
            ExportBundle(Path(spec["bundle"]), spec["manifest"]) if spec["manifest"] else load_bundle(spec["bundle"])
        )
        result = {"measurement": measure(bundle, spec["backend"], spec["precision"], spec["batch"], spec["warmup"],
                                         spec["iters"], spec["options"])}
    except EdgeReIDError as error:
        result = {"error": {"type": type(error).__name__, "message": str(error)}}
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
