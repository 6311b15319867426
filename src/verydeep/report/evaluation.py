"""The evaluation report: the paper's error table in markdown and a plot of error against test scale.

``results_table`` is what ``verydeep evaluate`` prints; ``write_report`` writes a folder holding
``report.md`` (nets, table, unreadable images) and ``error_vs_scale.png`` (top-1 and top-5 error
against Q, one line per net or ensemble and protocol), drawn with matplotlib's Agg backend so no
display is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from verydeep.errors import WriteError
from verydeep.evaluate.protocols import TITLES
from verydeep.evaluate.results import Summary
from verydeep.evaluate.scales import describe_train_scale
from verydeep.report.tables import markdown_table
from verydeep.runtime.io import atomic_write, make_folder, write_text
from verydeep.runtime.outputs import IMAGE, check_output

PLOT_NAME = "error_vs_scale.png"
REPORT_NAME = "report.md"
REPORT = "a report"


def _cell(errors) -> str:
    return "" if errors is None else f"{errors['top1']:.1f} / {errors['top5']:.1f}"


def results_table(summary: Summary) -> str:
    """Markdown in the layout of the paper's Tables 3-6: top-1 / top-5 error (%) per protocol."""
    header = ["net", "train S", "test Q"] + [TITLES.get(p, p) for p in summary.protocols]
    rows = [
        [r.name, r.train, r.test] + [_cell(r.errors.get(p)) for p in summary.protocols]
        for r in summary.rows
    ]
    return markdown_table(header, rows, align="lll" + "r" * len(summary.protocols))


def failures_text(summary: Summary) -> list[str]:
    """One line per unreadable image (each counted as an error under every protocol)."""
    return [why if why.startswith(path) else f"{path}: {why}" for path, why in summary.failed]


def plot_error_vs_scale(summary: Summary, path: str | os.PathLike) -> Path | None:
    """Top-1 and top-5 error against Q per (net or ensemble, protocol); None when there is nothing to plot."""
    import matplotlib  # start-up: matplotlib is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up: matplotlib is slow to import

    lines: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for row in summary.rows:
        if row.kind != "scale":
            continue
        for p, errors in row.errors.items():
            if errors is not None:
                lines.setdefault((row.name, p), []).append((row.q, errors))
    if not lines:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for (name, protocol), points in lines.items():
        points.sort(key=lambda t: t[0])
        qs = [q for q, _ in points]
        for ax, metric in zip(axes, ("top1", "top5")):
            ax.plot(
                qs,
                [e[metric] for _, e in points],
                marker="o",
                label=f"{name}, {TITLES.get(protocol, protocol)}",
            )
    for ax, title in zip(axes, ("top-1 error (%)", "top-5 error (%)")):
        ax.set_xlabel("test scale Q (shorter side, pixels)")
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    path = Path(path)
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=120))
    finally:
        plt.close(fig)
    return path


def report_markdown(summary: Summary, plot: str | None) -> str:
    nets = markdown_table(
        ["net", "config", "crop", "train S", "test scales", "flips", "weights"],
        [
            [
                n["name"],
                n["config"],
                n["crop"],
                describe_train_scale(n["train_scale"]),
                ",".join(map(str, n["scales"])),
                "yes" if n["flip"] else "no",
                n["source"],
            ]
            for n in summary.nets
        ],
        align="lllllll",
    )
    parts = [
        "# Evaluation",
        "",
        f"Data: `{summary.root}`, {summary.num_images} images. Errors are top-1 / top-5 in %, "
        "the layout of the paper's Tables 3-6: a row per net (or ensemble, nets joined by `+`) and test scale Q, "
        "and a row for the multi-scale set; a column per protocol.",
        "",
        "## Nets",
        "",
        nets,
        "",
        "## Results",
        "",
        results_table(summary),
        "",
    ]
    if plot:
        parts += ["## Error against test scale", "", f"![error against test scale]({plot})", ""]
    failures = failures_text(summary)
    if failures:
        parts += [f"## Unreadable images ({len(failures)}, counted as errors)", ""]
        parts += [f"- {line}" for line in failures] + [""]
    return "\n".join(parts)


def report_folder(folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create the report folder (a CLI calls this before evaluating, so a bad path fails at once).

    A report already there is refused unless ``overwrite`` (and its files are never replaced by
    files of another kind)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WriteError(f"cannot create report folder {folder}: it is a file")
    make_folder(folder, "report folder")
    check_output(folder / REPORT_NAME, REPORT, overwrite)
    check_output(folder / PLOT_NAME, IMAGE, overwrite)
    return folder


def write_report(summary: Summary, folder: str | os.PathLike) -> Path:
    """Write ``report.md`` and the plot into ``folder`` (created if missing); returns the report path."""
    folder = make_folder(folder, "report folder")
    plot = plot_error_vs_scale(summary, folder / PLOT_NAME)
    report = folder / REPORT_NAME
    write_text(report, report_markdown(summary, PLOT_NAME if plot else None))
    return report
