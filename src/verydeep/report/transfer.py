"""Transfer results as tables in the layout of the paper's Table 11.

Table 11 has one row per method (descriptor) and one column per data set: mean AP for VOC,
mean class recall (mean ± standard deviation over splits) for Caltech. Here a row is a feature
file (its nets, scales and aggregation) and a column a protocol run on it.
"""

from __future__ import annotations

from typing import Sequence

from verydeep.report.tables import markdown_table

COLUMNS = {"voc": "VOC (mean AP)", "caltech": "Caltech (mean class recall)"}


def row_name(result: dict) -> str:
    """``"D & E, Q 256/384/512 stacked"`` from a protocol result's description."""
    nets = " & ".join(result.get("configs") or ["?"])
    scales = "/".join(str(q) for q in result.get("scales") or [])
    how = {"stack": "stacked", "mean": "averaged"}.get(
        result.get("aggregate"), result.get("aggregate") or ""
    )
    return (
        f"{nets}, Q {scales} {how}".strip()
        if len(result.get("scales") or []) > 1
        else f"{nets}, Q {scales}"
    )


def cell(result: dict) -> str:
    if result["protocol"] == "voc":
        return f"{result['mAP']:.1f}"
    return f"{result['mean_class_recall']:.1f} ± {result['std']:.1f}"


def table11(rows: Sequence[tuple[str, dict[str, dict]]]) -> str:
    """``rows``: (row name, {protocol: result}) -> markdown in Table 11's layout."""
    protocols = [p for p in COLUMNS if any(p in results for _, results in rows)]
    return markdown_table(
        ["descriptor"] + [COLUMNS[p] for p in protocols],
        [
            [name] + [cell(results[p]) if p in results else "" for p in protocols]
            for name, results in rows
        ],
    )


def per_class_table(result: dict) -> str:
    """The VOC protocol's per-class AP (%)."""
    rows = [[c, "n/a" if ap is None else f"{ap:.1f}"] for c, ap in result["per_class_ap"].items()]
    return markdown_table(["class", "AP"], rows)
