"""``verydeep bench``: verydeep against a typical torchvision setup in the same process.

:mod:`~verydeep.bench.command` holds the settings, baselines, workloads and report of the command;
:mod:`~verydeep.bench.timing` the steady-state timing method; :mod:`~verydeep.bench.openvino`
the row against plain OpenVINO.
"""

from verydeep.bench.command import BenchSettings, format_report, run_bench

__all__ = ["BenchSettings", "format_report", "run_bench"]
