"""The paper's test protocols: dense, multi-crop, scales, flips, combination, ensembles.

* :mod:`~verydeep.evaluate.protocols` - crop / dense / multi-crop posteriors of a batch (with flips);
* :mod:`~verydeep.evaluate.crops` - the centre crop and the 5 x 5 grid, cut by tensor indexing;
* :mod:`~verydeep.evaluate.scales` - the paper's test-scale rule from the training scale;
* :mod:`~verydeep.evaluate.loop` - :func:`evaluate`: nets over an image folder (batched by size,
  DataLoader decoding, torchrun, resumable saved scores);
* :mod:`~verydeep.evaluate.scores` / :mod:`~verydeep.evaluate.combine` - saved posteriors and their
  averages over scales, protocols and nets;
* :mod:`~verydeep.evaluate.results` / :mod:`~verydeep.evaluate.metrics` - top-1 / top-5 error tables;
* :mod:`~verydeep.evaluate.dense` - :func:`dense_posteriors` for images in memory (``predict``).
"""
