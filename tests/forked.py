"""``verydeep ARGV`` in a forked child of the test process, with its output captured.

A fresh ``python -m verydeep`` pays about 2.5 s of start-up on a 2-core machine (importing torch and
the package; 1.5 s more for ``torch._inductor`` in deterministic mode) before it trains for a second.
A forked child of this process, where both are already imported, starts in milliseconds and is still
a real, separate process: the fault hooks SIGKILL it, and a resumed run starts from what the killed
one left on disk, never from its memory (each child is forked from the test process, not from the
previous child). The child leads its own process group, which is SIGKILLed once the child has ended:
a killed run's DataLoader workers would otherwise outlive it for up to 5 s (they poll for their
parent). (They no longer hold its run folder's lock meanwhile: ``verydeep.runtime.locks`` closes it
in forked children; ``tests/test_runtime_state_files.py`` checks that.)
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import torch

from verydeep.cli import main


class ForkedChild:
    """A ``subprocess.Popen``-like handle on a forked child that runs ``target()`` on one thread with
    ``env`` added to its environment, its stdout and stderr captured; ``target``'s return value (or
    ``SystemExit``'s code) is the exit status."""

    def __init__(self, target, env: dict[str, str] | None = None) -> None:
        self.returncode: int | None = None
        self._files = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.setpgid(0, 0)
                for fd, f in zip((1, 2), self._files):
                    os.dup2(f.fileno(), fd)
                sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
                sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
                os.environ.update(env or {})
                torch.set_num_threads(1)
                code = target()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - report anything, then leave
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code or 0)

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
                self._kill_group()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout)
            time.sleep(0.005)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the child to end; its stdout and stderr."""
        self.wait(timeout)
        return self.output()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the child and whatever it started, and reap it."""
        if self.poll() is None:
            self._kill_group()
            self.wait()

    def output(self) -> tuple[str, str]:
        """What the child wrote to stdout and stderr so far."""
        texts = []
        for f in self._files:
            f.seek(0)
            texts.append(f.read().decode("utf-8", "replace"))
        return texts[0], texts[1]

    def _kill_group(self) -> None:
        try:
            os.killpg(
                self.pid, signal.SIGKILL
            )  # whatever the child left running (its DataLoader workers)
        except (ProcessLookupError, PermissionError):
            pass


def run_forked(
    argv: list, env: dict[str, str] | None = None, timeout: float = 300.0
) -> subprocess.CompletedProcess:
    """Like ``subprocess.run([python, -m, verydeep, *argv], capture_output=True, text=True)`` with
    ``env`` added to the environment: returncode (negative: the signal that ended it), stdout, stderr."""
    import torch._inductor  # noqa: F401 - deterministic mode imports it (1.5 s): once here, not in every child

    argv = [str(a) for a in argv]
    child = ForkedChild(lambda: main(argv), env)
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        raise AssertionError(f"verydeep {' '.join(argv)} did not finish in {timeout} s") from None
    return subprocess.CompletedProcess(["verydeep", *argv], child.returncode, *child.output())


def free_port() -> int:
    """A TCP port free on the loopback address now (for a gloo group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, port: int | str, world: int = 2) -> dict[str, str]:
    """The environment torchrun gives process ``rank`` of a ``world``-process job on this machine."""
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(world),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
    }


def run_ranks(argvs: list[list[str]], timeout: float = 120.0) -> list[tuple[int, str, str]]:
    """``verydeep ARGV`` of each rank as the processes of one job (forked from this one, with the
    environment torchrun would give them): each rank's (exit code, stdout, stderr)."""
    port = free_port()
    ranks = [
        ForkedChild(
            lambda argv=[str(a) for a in argv]: main(argv), rank_env(rank, port, len(argvs))
        )
        for rank, argv in enumerate(argvs)
    ]
    try:
        outputs = [rank.communicate(timeout=timeout) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    return [(rank.returncode, out, err) for rank, (out, err) in zip(ranks, outputs)]
