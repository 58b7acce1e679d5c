"""A self-contained static HTML report of a sweep: the notebooks' tables and plots, images inlined.

The page needs no server and no other file, because figures are PNGs in
``data:`` URIs and the style sheet is inline. It can be mailed or attached
as is.
"""

from __future__ import annotations

import base64
import datetime
import html
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import plots
from analysis.compare import IDARTS, PCDARTS, backtracking_profile, best_run, compare_modes, summarize
from analysis.conclusions import overview_by, sweep_conclusions
from analysis.frames import final_metric_column, finished_runs, swept_params
from analysis.loading import load_arch_record, load_sweep
from analysis.stability import genotype_stability

logger = logging.getLogger(__name__)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; }
img { max-width: 100%; margin: 0.6em 0; }
.note { color: #666; font-style: italic; }
.meta td { text-align: left; }
"""

FLOAT_FORMAT = "{:.4g}".format
REPORT_DPI = 80
"""Resolution of the inlined figures, below the 100 dpi of saved figures to keep the page small."""


@dataclass
class ReportPage:
    """An HTML page built one section at a time."""

    title: str
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        """Add a section heading."""
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, note: bool = False) -> None:
        """Add a paragraph of plain text; ``note`` styles it as a remark."""
        css = ' class="note"' if note else ""
        self.parts.append(f"<p{css}>{html.escape(text)}</p>")

    def bullets(self, sentences: list[str]) -> None:
        """Add a bullet list of plain-text sentences."""
        items = "".join(f"<li>{html.escape(sentence)}</li>" for sentence in sentences)
        self.parts.append(f"<ul>{items}</ul>")

    def table(self, frame: pd.DataFrame) -> None:
        """Add a frame as an HTML table (cells escaped)."""
        if frame.empty:
            self.paragraph("(no rows)", note=True)
            return
        self.parts.append(frame.to_html(index=False, float_format=FLOAT_FORMAT, na_rep="–", border=0, escape=True))

    def figure(self, figure: Figure, alt: str) -> None:
        """Add a figure as an inline PNG."""
        data = base64.b64encode(plots.figure_to_png(figure, dpi=REPORT_DPI)).decode("ascii")
        self.parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')

    def try_figure(self, make: Callable[[], Figure], alt: str) -> None:
        """Add the figure ``make()`` returns, or a note when the data cannot give it."""
        try:
            figure = make()
        except (ValueError, FileNotFoundError) as error:
            logger.info("report: left out %s: %s", alt, error)
            self.paragraph(f"{alt} not shown: {error}", note=True)
            return
        self.figure(figure, alt)

    def to_html(self) -> str:
        """Return the whole page."""
        body = "\n".join(self.parts)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(self.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(self.title)}</h1>\n{body}\n</body>\n</html>\n"
        )


def _runs_table(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    columns = ["trial", "status", *swept_params(runs), "epochs_run"]
    for name in (final_metric_column(metric), f"best_{metric}", "duration_s"):
        if name in runs.columns and name not in columns:
            columns.append(name)
    return runs[columns]


def _stability_table(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return genotype_stability(runs, by=by).drop(columns="top_operations")


def render_report(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    title: str,
    source: str,
    metric: str = "valid_acc",
    tracking_uri: str | None = None,
) -> str:
    """Render the report page of a sweep as HTML text.

    Args:
        runs: the runs frame.
        history: the history frame of the same runs.
        title: page title.
        source: where the data came from, shown under the title.
        metric: the metric compared (a runs-frame column such as ``valid_acc``).
        tracking_uri: used to download the best run's ``arch.json`` from MLflow.

    Returns:
        The HTML page. Sections whose data is missing (e.g. no PC-DARTS runs)
        show a note instead of failing.
    """
    page = ReportPage(title)
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page.paragraph(f"Source: {source}. Generated {generated}. {len(runs)} trial runs.")
    if runs.empty:
        page.paragraph("The sweep has no trial runs yet.", note=True)
        return page.to_html()

    by = overview_by(runs)
    page.heading("Conclusions")
    page.bullets(sweep_conclusions(runs, history, metric))

    page.heading(f"{metric} per setting (mean over seeds)")
    page.table(summarize(runs, by=by, metric=metric))
    page.try_figure(lambda: plots.plot_metric_vs_threshold(runs, metric), f"{metric} against threshold")
    page.try_figure(lambda: plots.plot_learning_curves(history, metric), f"learning curves of {metric}")

    page.heading("IDARTS against PC-DARTS")
    modes = set(finished_runs(runs)["mode"]) if "mode" in runs.columns else set()
    if {IDARTS, PCDARTS} <= modes:
        page.table(compare_modes(runs, metric).drop(columns="conclusion"))
        page.try_figure(lambda: plots.plot_paired_modes(runs, metric), "paired IDARTS and PC-DARTS runs")
    else:
        page.paragraph("The sweep has no finished runs of both modes.", note=True)

    page.heading("Backtracking")
    page.table(backtracking_profile(history))
    page.try_figure(lambda: plots.plot_backtracking(history), "gated edges per epoch")

    page.heading("Stability of the found cell")
    page.table(_stability_table(runs, by))
    page.try_figure(lambda: plots.plot_operation_heatmap(runs), "operation frequency across runs")
    page.try_figure(lambda: plots.plot_best_genotypes(runs, final_metric_column(metric)), "cells of the best runs")

    try:
        best = best_run(runs, metric)
    except ValueError as error:
        page.paragraph(f"Architecture weights not shown: {error}", note=True)
    else:
        page.heading(f"Architecture weights of the best run, {best['trial']}")
        for cell in ("normal", "reduce"):
            page.try_figure(
                lambda cell=cell: plots.plot_arch_trajectories(load_arch_record(best, tracking_uri), cell),
                f"alpha and beta of the {cell} cell",
            )

    page.heading("All trial runs")
    page.table(_runs_table(runs, metric))
    return page.to_html()


def write_report(
    out: str | os.PathLike[str],
    tracking_uri: str | None = None,
    experiment: str | None = None,
    sweep: str | None = None,
    storage_path: str | os.PathLike[str] | None = None,
    metric: str = "valid_acc",
    title: str | None = None,
) -> Path:
    """Load a sweep (from MLflow, else from Tune's files) and write its HTML report to ``out``.

    Returns:
        The path written. Its parent folder is created when missing.

    Raises:
        ValueError: no source is given, or the MLflow experiment does not exist.
        ConnectionError: the MLflow tracking server does not respond.
        FileNotFoundError: ``storage_path`` contains no sweep.
    """
    runs, history = load_sweep(tracking_uri, experiment, sweep, storage_path)
    if tracking_uri:
        source = f"MLflow {tracking_uri}, experiment {experiment or sweep}" + (f", sweep {sweep}" if sweep else "")
    else:
        source = f"Tune storage {storage_path}" + (f", sweep {sweep}" if sweep else "")
    title = title or f"Sweep report: {sweep or experiment or Path(str(storage_path)).name}"

    text = render_report(runs, history, title, source, metric=metric, tracking_uri=tracking_uri)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    logger.info("wrote the report of %d runs to %s", len(runs), path)
    return path
