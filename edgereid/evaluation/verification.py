"""How a verification reports a ΔmAP against its tolerance: shared by the export's ``verify_bundle`` (ONNX Runtime
against PyTorch) and the runtime's ``verify_runtime`` (a backend against ONNX Runtime), numpy only."""

from __future__ import annotations

from typing import Any

from edgereid.evaluation.bootstrap import paired_bootstrap_delta
from edgereid.evaluation.rank import RankResult


def delta_interval_fields(
    reference: RankResult, candidate: RankResult, tolerance: float | None, remedy: str
) -> dict[str, Any]:
    """A verification entry's ΔmAP interval and, where the queries are too few for ``tolerance``, the warning.

    Pass/fail stays |ΔmAP| ≤ tolerance: the interval does not move the gate, it tells whether to trust it.
    ``evaluation_too_small`` is null without a tolerance to judge against.
    """
    interval = paired_bootstrap_delta(reference.per_query_ap, candidate.per_query_ap)
    too_small = warning = None
    if tolerance is not None:
        too_small = interval.too_small_for(tolerance)
        warning = f"{interval.too_small_message(tolerance)}; {remedy}" if too_small else None
    return {
        "delta_mAP_ci95_points": [interval.low_points, interval.high_points],
        "evaluation_too_small": too_small,
        "evaluation_warning": warning,
    }


def more_queries_remedy(dataset_name: str, max_images: int | None) -> str:
    """How to verify on more queries, in the options `edgereid export` and `edgereid verify` share."""
    ways = []
    if max_images:
        ways.append(f"drop --max-images (it kept the first {max_images} query images)")
    if dataset_name.endswith("-holdout"):
        ways.append(
            "hold out more identities as query/gallery when training (the recipe's data.holdout.num_test_ids; "
            "`edgereid data info ROOT --holdout-ids N` shows the query split N identities give)"
        )
    ways.append("verify on a data set with a larger query split (--data ROOT)")
    return "to judge it, " + ", or ".join(ways)
