"""The heap policy of training on a CPU (runtime/heap.py): blocks freed by one step serve the next
without faulting their pages in again, and the memory kept is given back when the policy ends.
Outside the policy glibc unmaps such blocks on free: the control that shows the measurement can
see the difference.

The measurements run in a fresh interpreter: a process that trained before (a pytest worker) has
heap holes of that size, which glibc's defaults reuse too, so the control would mean nothing there.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from verydeep.runtime import heap

BLOCK = 64 << 20  # bytes: far over glibc's largest mmap threshold (32 MiB)
PAGES = BLOCK // 4096

# The child imports what a training run imports before it measures: the rounds' page faults depend on
# the heap's layout (an aligned block can miss the hole the freed one left when a small allocation sits
# above it), and a process that has imported only torch has a heap no real run has.
CHILD = textwrap.dedent(f"""
    import json, os, resource, torch
    import verydeep.train.loop
    from verydeep.runtime.heap import _LIBC, keep_freed_memory
    from verydeep.runtime.settings import torch_settings

    def rounds(n):
        # minor page faults of allocating, writing and freeing a 64 MiB tensor, round after round
        faults = []
        for _ in range(n):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            torch.empty({BLOCK}, dtype=torch.uint8).fill_(1)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return faults

    def resident():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    report = {{"glibc": _LIBC is not None, "control": rounds(4)}}
    with keep_freed_memory() as applied:
        report["applied"], report["policy"], kept = applied, rounds(8), resident()
    report["given_back"], report["after"] = kept - resident(), rounds(2)
    with keep_freed_memory():
        with keep_freed_memory():
            pass
        report["nested"], kept = rounds(8), resident()
    report["nested_given_back"] = kept - resident()
    with torch_settings():
        report["training_settings"] = rounds(8)
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def report():
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result["glibc"]:
        pytest.skip("the policy needs glibc's mallopt; elsewhere it changes nothing (tested below)")
    return result


def _steady(faults: list[int]) -> bool:
    """After the first rounds (the heap grows; an aligned block may not fit the hole an earlier one
    left, so glibc takes the next), most rounds reuse a kept block: the median of the rest faults
    no page. The median tolerates the odd round the kernel itself faults (page compaction)."""
    rest = sorted(faults[2:])
    return rest[len(rest) // 2] < PAGES // 20


def test_without_the_policy_every_freed_block_is_unmapped(report):
    assert min(report["control"]) > PAGES // 2, report["control"]


def test_under_the_policy_freed_blocks_serve_the_next_steps(report):
    assert report["applied"]
    assert _steady(report["policy"]), report["policy"]


def test_what_the_policy_kept_is_given_back_when_it_ends(report):
    assert report["given_back"] > BLOCK // 2, report["given_back"]
    assert report["after"][0] > PAGES // 2, report["after"]


def test_nested_blocks_keep_the_policy_until_the_outer_one_ends(report):
    assert _steady(report["nested"]), report[
        "nested"
    ]  # the inner block's end did not restore the defaults
    assert report["nested_given_back"] > BLOCK // 2, report["nested_given_back"]


def test_training_settings_carry_the_policy(report):
    assert _steady(report["training_settings"]), report["training_settings"]


def test_without_glibc_the_block_changes_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_LIBC", None)
    with heap.keep_freed_memory() as applied:
        assert not applied
    assert heap.heap_policy().startswith("unchanged")
