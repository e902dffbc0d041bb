"""Reports: ``bench_target`` measures a bundle, engine or checkpoint on this machine (``edgereid bench``), and
``build_report`` joins verify and bench results into tables and a Pareto plot (``edgereid report``).

Importing this package stays light (numpy, no matplotlib, no torch): the bench's measuring processes import it.
"""

from edgereid.report.bench import bench_target, onnx_complexity, resolve_target, torch_complexity

__all__ = ["bench_target", "onnx_complexity", "resolve_target", "torch_complexity"]
