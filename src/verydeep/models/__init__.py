"""The VGG family: Table 1 as data, one module with three views, the paper's initialisation."""
