"""The one resumable pass over an image folder, shared by ``evaluate``, ``features`` and
``localize evaluate``.

* :mod:`~verydeep.passes.plan` - which images go into a batch (equal rescaled size, read from the
  headers);
* :mod:`~verydeep.passes.loading` - the planned batches decoded and rescaled in DataLoader workers,
  handed over whole (SIGTERM and Ctrl-C held through the hand-over);
* :mod:`~verydeep.passes.inflight` - a window of batches in flight on an asynchronous engine;
* :mod:`~verydeep.passes.folder_pass` - plan, decode, a function per batch, results booked in order,
  split over ``torchrun`` ranks.

Each command plugs its per-batch function into :func:`~verydeep.passes.folder_pass.run_pass`; its
store (posteriors, descriptors, boxes) stays with the command.
"""
