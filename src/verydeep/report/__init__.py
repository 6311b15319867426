"""Reports: markdown tables in the paper's layout, matplotlib plots."""
