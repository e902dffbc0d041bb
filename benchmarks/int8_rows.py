"""What the INT8 benchmarks quote of a verified bundle, one row per INT8 precision: accuracy against FP32 with its
interval, layers kept in float and size."""

from __future__ import annotations

from typing import Any

INT8 = ("int8", "int8_cpu")


def int8_rows(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The verification against FP32 of each INT8 precision the bundle has, and what its model is (a verified
    bundle's manifest)."""
    verification = manifest["verification"]
    rows = {}
    for precision in (precision for precision in INT8 if precision in manifest["models"]):
        entry = verification["precisions"][precision]
        model = manifest["models"][precision]
        rows[precision] = {
            "mAP": entry["mAP"],
            "rank1": entry["rank1"],
            "delta_mAP_points": entry["delta_mAP_points"],
            "delta_mAP_ci95_points": entry.get("delta_mAP_ci95_points"),
            "cosine_min": entry["cosine_min"],
            "passed": entry["passed"],
            "layers_in_float": len((model.get("accuracy") or {}).get("excluded_layers") or []),
            "bytes": model["bytes"],
        }
    return rows


def print_rows(label: str, rows: dict[str, dict[str, Any]], extra: dict[str, str] | None = None) -> None:
    for precision, entry in rows.items():
        low, high = entry["delta_mAP_ci95_points"] or (float("nan"), float("nan"))
        print(f"{label:13} {precision:9} mAP {entry['mAP']:.2%}  Δ {entry['delta_mAP_points']:+.2f} "
              f"[{low:+.2f}, {high:+.2f}]  float layers {entry['layers_in_float']:3}  "
              f"{'passed' if entry['passed'] else 'FAILED'}  {(extra or {}).get(precision, '')}")
