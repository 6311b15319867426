"""The paper's test protocols: dense, multi-crop, scales, flips, combinations, ensembles."""
