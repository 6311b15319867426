"""Images in: decoding real-world files, data sets, the synthetic set, the paper's transforms."""
