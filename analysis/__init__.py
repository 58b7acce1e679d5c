"""Analysis of IDARTS sweeps: load MLflow or Tune results into pandas, compare, plot, report.

Typical use in a notebook::

    import analysis

    runs, history = analysis.load_sweep("http://127.0.0.1:5000", "my_sweep")
    analysis.summarize(runs, by=["mode", "threshold", "partial_k"], metric="valid_acc")
    analysis.compare_modes(runs, "valid_acc")
    analysis.plot_metric_vs_threshold(runs)
"""

from analysis.compare import (
    backtracking_profile,
    best_run,
    compare_modes,
    confidence_interval,
    paired_modes,
    summarize,
)
from analysis.conclusions import as_markdown, mode_conclusions, overview_by, sweep_conclusions
from analysis.frames import finished_runs, parse_param, swept_params
from analysis.loading import (
    load_arch_record,
    load_history,
    load_runs,
    load_sweep,
    load_tune_history,
    load_tune_results,
)
from analysis.plots import (
    figure_to_png,
    plot_arch_trajectories,
    plot_backtracking,
    plot_best_genotypes,
    plot_learning_curves,
    plot_metric_vs_threshold,
    plot_operation_heatmap,
    plot_paired_modes,
)
from analysis.report import render_report, write_report
from analysis.stability import genotype_overlap, genotype_stability, operation_frequencies

__all__ = [
    "as_markdown",
    "backtracking_profile",
    "best_run",
    "compare_modes",
    "confidence_interval",
    "figure_to_png",
    "finished_runs",
    "genotype_overlap",
    "genotype_stability",
    "load_arch_record",
    "load_history",
    "load_runs",
    "load_sweep",
    "load_tune_history",
    "load_tune_results",
    "mode_conclusions",
    "operation_frequencies",
    "overview_by",
    "paired_modes",
    "parse_param",
    "plot_arch_trajectories",
    "plot_backtracking",
    "plot_best_genotypes",
    "plot_learning_curves",
    "plot_metric_vs_threshold",
    "plot_operation_heatmap",
    "plot_paired_modes",
    "render_report",
    "summarize",
    "swept_params",
    "sweep_conclusions",
    "write_report",
]
