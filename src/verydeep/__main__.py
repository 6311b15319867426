"""``python -m verydeep`` (and ``torchrun -m verydeep``) runs the CLI."""

from verydeep.cli import main

raise SystemExit(main())
