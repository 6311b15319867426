"""Two torchrun agents (``--nnodes 2``, one process each, c10d rendezvous) train the same net as
one process.

The two "nodes" are two agents on 127.0.0.1 that meet through the c10d rendezvous the way two
machines would: node 0 hosts the rendezvous store (``is_host=1``), node 1 joins it as a client;
ranks come from the rendezvous, not from ``--node_rank``. What this adds to
``test_train_distributed.py`` (one agent, two workers): the agents' store is not shared through
``--standalone``, ``GROUP_WORLD_SIZE`` is 2, and the workers of different agents find each other
through the addresses the rendezvous publishes.

Tolerance and setup (dropout off, the same overrides) are those of ``test_train_distributed.py``,
whose docstring says why they hold.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from verydeep.train import load_config, train
from verydeep.train.checkpoint import CheckpointFolder, load_checkpoint
from verydeep.train.metrics import read_metrics
from verydeep.weights import canonical

OVERRIDES = {
    "schedule.epochs": 1,
    "model.dropout": 0.0,
    "data.colour_shift": 0.1,
    "optim.lr": 0.02,
    "run.checkpoint_every": 5,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent(node: int, port: int, config) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        "--rdzv_id=verydeep-multinode",
        f"--rdzv_conf=is_host={1 if node == 0 else 0},join_timeout=60",
        f"--node_rank={node}",
        "--local_addr=127.0.0.1",
        "--max_restarts=0",
        "-m",
        "verydeep",
        "train",
        "--config",
        str(config),
        "--json",
    ]


@pytest.mark.slow
def test_two_torchrun_nodes_match_one_process(train_config, tmp_path):
    config = train_config("nodes", OVERRIDES)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    agents = [
        subprocess.Popen(
            _agent(node, port, config),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    try:
        outs = [agent.communicate(timeout=240) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    for agent, (_, err) in zip(agents, outs):
        assert agent.returncode == 0, err[-8000:]
    single = train(load_config(train_config("single", OVERRIDES)))
    # One job of two processes (not two jobs of one): its checkpoints hold both ranks' random
    # state, and only the main process (on whichever node the rendezvous put rank 0) reports.
    rng = load_checkpoint(CheckpointFolder(tmp_path / "nodes" / "checkpoints").latest())["rng"]
    assert rng["world_size"] == 2 and len(rng["ranks"]) == 2
    reports = [out for out, _ in outs if '"steps"' in out]
    assert len(reports) == 1 and f'"steps": {single.steps}' in reports[0]
    a, _ = canonical.read(single.final_weights)
    b, _ = canonical.read(tmp_path / "nodes" / "final.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3, msg=key)
    losses = [
        [r["loss"] for r in read_metrics(folder) if r["kind"] == "step"]
        for folder in (single.run_dir, tmp_path / "nodes")
    ]
    assert len(losses[0]) == single.steps == 6
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=0, rtol=1e-4)
