"""``verydeep demo``: the paper's training story on a laptop CPU (:mod:`verydeep.demo.command`)."""

from verydeep.demo.command import FAST, FULL, DemoSettings, net_config, run_demo

__all__ = ["DemoSettings", "FAST", "FULL", "net_config", "run_demo"]
