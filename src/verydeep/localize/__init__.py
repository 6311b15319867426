"""Box localisation (the paper's Appendix A): box nets, their training, and the two tests.

``verydeep.localize.demo_section(model, data_dir)`` is the demo's section (SCR against PCR).
"""

from verydeep.localize.boxes import decode, encode, iou
from verydeep.localize.demo import demo_section
from verydeep.localize.head import BoxNet, from_classifier, load_box_net, save_box_net
from verydeep.localize.merge import greedy_merge

__all__ = [
    "BoxNet",
    "decode",
    "demo_section",
    "encode",
    "from_classifier",
    "greedy_merge",
    "iou",
    "load_box_net",
    "save_box_net",
]
