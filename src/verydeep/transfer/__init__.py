"""Very deep features for other data sets (the paper's Appendix B): descriptors, feature files,
linear SVMs, VOC average precision and Caltech mean class recall.

``verydeep.transfer.demo_section(model, data_dir)`` is the demo's section.
"""

from verydeep.transfer.demo import demo_section
from verydeep.transfer.features import FeatureSet, extract_features, load_features

__all__ = ["FeatureSet", "demo_section", "extract_features", "load_features"]
