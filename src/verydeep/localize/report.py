"""Localisation results for people: one-line training summaries and Table 8-style error tables."""

from __future__ import annotations

from typing import Sequence

from verydeep.report.tables import markdown_table

FINE_TUNE_TEXT = {"fc": "FC layers", "all": "all layers"}


def training_text(summary: dict) -> str:
    skipped = f"; {summary['skipped_text']}" if summary.get("skipped_text") else ""
    return (
        f"wrote {summary['weights']}: {summary['mode'].upper()} box net, {FINE_TUNE_TEXT[summary['fine_tune']]} "
        f"fine-tuned at S={summary['train_scale']}, {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
        f"{summary['final_loss']:.4f} on {summary['images']} images{skipped}; log {summary['log']}"
    )


def results_table(rows: Sequence[tuple[str, dict]]) -> str:
    """``rows``: (name, {"crop": result, "dense": result}) -> one table, localisation error (%)."""
    has_dense = any("dense" in r for _, r in rows)
    header = ["box net", "test 1: centre crop, GT class (error %)"]
    if has_dense:
        header += ["test 2: dense top-5 (error %)", "test 2: top-1 (error %)"]
    body = []
    for name, result in rows:
        crop = result.get("crop")
        line = [name, f"{crop['error']:.1f}" if crop else ""]
        if has_dense:
            dense = result.get("dense")
            top_key = next(
                (
                    k
                    for k in (dense or {})
                    if k.startswith("top") and k.endswith("_error") and k != "top1_error"
                ),
                None,
            )
            line += [
                f"{dense[top_key]:.1f}" if dense and top_key else "",
                f"{dense['top1_error']:.1f}" if dense else "",
            ]
        body.append(line)
    return markdown_table(header, body)


def evaluation_text(results: dict) -> str:
    lines = [results_table([(results["mode"].upper(), results)])]
    images = (results.get("crop") or results.get("dense"))["images"]
    lines.append(
        f"{images} images of {results['data']}"
        + (f"; {results['skipped_text']}" if results.get("skipped_text") else "")
    )
    return "\n".join(lines)
