"""A bench row (ours, the baseline, their ratio and MFU), the machine's name, and the printed report."""

from __future__ import annotations

import math
import platform

import torch

from verydeep.report.tables import markdown_table
from verydeep.runtime.precision import Precision


def row(
    name: str,
    ours: float,
    base: float,
    flops_per_image: float | None,
    peaks: dict,
    ours_prec: Precision,
    base_prec: Precision,
    ours_what: str,
    base_what: str,
    **extra,
) -> dict:
    row = {
        "workload": name,
        "ours_images_per_s": ours,
        "baseline_images_per_s": base,
        "ratio": ours / base if base > 0 else math.inf,
        "ours": ours_what,
        "baseline": base_what,
    }
    if flops_per_image is not None:
        row["mfu_ours"] = ours * flops_per_image / peaks[ours_prec.value]
        row["mfu_baseline"] = base * flops_per_image / peaks[base_prec.value]
    row.update(extra)
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            name = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                "",
            )
    except OSError:
        name = ""
    return name or platform.processor() or "cpu"


def _num(v: float) -> str:
    """A rate printed at a precision that suits its size (one decimal from 10 up, two below)."""
    return f"{v:,.1f}" if v >= 10 else f"{v:.2f}"


def _rates_table(result: dict) -> str:
    """The rows' rates, ratios and MFUs as one markdown table (a dash where a row has no MFU)."""
    rows = [
        [
            r["workload"],
            _num(r["ours_images_per_s"]),
            _num(r["baseline_images_per_s"]),
            f"{r['ratio']:.2f}x",
            f"{r['mfu_ours']:.1%}" if "mfu_ours" in r else "-",
            f"{r['mfu_baseline']:.1%}" if "mfu_baseline" in r else "-",
        ]
        for r in result["rows"]
    ]
    return markdown_table(
        [
            "workload",
            "ours img/s",
            "baseline img/s",
            "ours/baseline",
            "MFU ours",
            "MFU baseline",
        ],
        rows,
    )


def _agreement_line(inference: dict) -> str:
    """How closely the dense-inference row reproduces fp32 (the probe's part only when it ran)."""
    a = inference["agreement"]
    probe = (
        f", top-1 agreement {a['top1_agreement_probe']:.1%} (linear probe, {a['probe_test_images']} images)"
        if "top1_agreement_probe" in a
        else ""
    )
    return (
        f"inference vs fp32: logit cosine min {a['logit_cosine_min']:.5f}{probe}, "
        f"raw top-1 agreement {a['top1_agreement_raw']:.1%} (random weights)"
    )


def _train_step_line(r: dict) -> str:
    """A training-step row's optimiser share and whether its timing windows reached steady state."""
    t = r["timing"]
    steady = ", ".join(
        f"{side} {'steady' if t[side]['steady'] else 'NOT steady'} "
        f"after {t[side]['warmup_windows']}"
        for side in ("ours", "baseline")
    )
    return (
        f"{r['workload']} at batch {r['batch']}: optimiser {r['optimizer_share']:.0%} of our step "
        f"({r['optimizer_seconds']:.3g} s); median of {len(t['ours']['windows'])} timed windows "
        f"({steady} warm-up windows)"
    )


def _openvino_line(ov_row: dict) -> str:
    """Ours against plain OpenVINO, on the engine the row used and on the PyTorch engine."""
    return (
        f"against plain OpenVINO: ours on engine {ov_row['engine']} {ov_row['ratio']:.2f}x, "
        f"on the PyTorch engine {ov_row['torch_engine_ratio']:.2f}x "
        f"({_num(ov_row['torch_engine_images_per_s'])} img/s)"
    )


def format_report(result: dict) -> str:
    """The bench result as a markdown table plus the agreement line."""
    lines = [
        f"verydeep bench on {result['device']} ({result['device_name']}), {result['precision']}, "
        f"torch {result['torch']}, {result['threads']} threads, load average {result['load_average']}",
        _rates_table(result),
    ]
    inference = next((r for r in result["rows"] if r["workload"] == "inference_dense"), None)
    if inference:
        lines.append(_agreement_line(inference))
    for r in result["rows"]:
        if "optimizer_share" in r:
            lines.append(_train_step_line(r))
    ov_row = next((r for r in result["rows"] if r["workload"] == "inference_dense_openvino"), None)
    if ov_row:
        lines.append(_openvino_line(ov_row))
    lines.append(peak_line(result))
    return "\n".join(lines)


#: A probe below this fraction of the best one: the machine was shared while the bench ran.
SHARED_BELOW = 0.8


def peak_line(result: dict) -> str:
    """The peaks the MFUs are over, and whether a probe found the machine shared (its rows then ran
    below what the machine can do, and their MFU with them)."""
    peak = ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in result["peak_tflops"].items())
    probes = result.get("peak_probes")
    if not probes:
        return f"matmul peak: {peak}"
    line = f"matmul peak: {peak} (the best of {probes['count']} probes"
    low = {
        k: v
        for k, v in probes["lowest_tflops"].items()
        if v < SHARED_BELOW * result["peak_tflops"][k]
    }
    if low:
        worst = ", ".join(f"{k} {v:.2f}" for k, v in low.items())
        line += (
            f"; the lowest {worst} TFLOP/s: something else used this machine's cores while the bench ran, "
            f"so the rows may be slower than the machine is"
        )
    return line + ")"
