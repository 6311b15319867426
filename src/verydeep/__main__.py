"""``python -m verydeep`` (and ``torchrun -m verydeep``) runs the CLI.

A worker of a multi-process run leaves with ``os._exit`` once its work is done and its output
flushed: under load, gloo's threads could otherwise be torn down by C++ static destructors in the
wrong order and abort a run that had finished cleanly (``terminate called without an active
exception``, exit -6), which torchrun would report as a failure.
"""

import os
import sys

from verydeep.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
