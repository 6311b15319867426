"""Weights in and out: the canonical safetensors file and one importer per foreign format.

Every importer is a pure function from a foreign file (or state dict) to the canonical state
dict (torchvision key layout) plus :class:`~verydeep.models.metadata.WeightsMeta`.
"""
