"""The command line run in the test process, and its one-line errors: the helpers the CLI tests share.

Bad input must give one clear line and exit code 2, never a traceback. Every test that feeds the
CLI something bad checks that through :func:`refused`, so the rule is written once.
"""

from __future__ import annotations

import contextlib
import io

from verydeep.cli import main


def call(argv) -> tuple[int, str, str]:
    """Run ``verydeep ARGV`` in-process; (exit code, stdout, stderr). argparse's exits count as codes."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def run(capsys, argv) -> tuple[int, str]:
    """Run ``verydeep ARGV`` in-process with pytest's capture; (exit code, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


def one_line(err: str, prefix: str = "verydeep ", warnings: bool = False) -> str:
    """The one line of ``err`` (progress-bar redraws aside; ``warnings``: ``: warning:`` lines aside
    too), which starts with ``prefix``; no traceback."""
    assert "Traceback" not in err, err
    lines = [line.split("\r")[-1] for line in err.splitlines()]
    lines = [
        line
        for line in lines
        if line.strip() and "%|" not in line and not (warnings and ": warning:" in line)
    ]
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def refused(capsys, argv, *words, warnings: bool = False) -> str:
    """``verydeep ARGV`` exits 2 with one line naming each of ``words``; returns the line."""
    code, err = run(capsys, argv)
    line = one_line(err, warnings=warnings)
    assert code == 2, (argv, err)
    for word in words:
        assert str(word) in line, (word, line)
    return line
