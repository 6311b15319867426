"""Evaluation split over 2 gloo processes: every image scored exactly once, the same scores as one process."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from verydeep.evaluate.loop import evaluate
from verydeep.evaluate.scores import load_scores

OPTIONS = dict(
    protocols=["dense", "crop"],
    scales=[32, 40],
    batch_size=1,
    precision="fp32",
    device="cpu",
    workers=0,
    progress=False,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, weights: str, data: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    batches: list[int] = []
    result = evaluate(
        [weights],
        data,
        save_scores=os.path.join(out, "scores.safetensors"),
        on_batch=batches.append,
        save_every_s=0.0,
        **OPTIONS,
    )  # write per-process partial files after every batch
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump(
            {
                "batches": batches,
                "returned": result is not None,
                "visits": result.visits.tolist() if result is not None else None,
            },
            handle,
        )


def test_two_processes_score_each_image_once(tiny_weights, make_image_folder, tmp_path):
    data = make_image_folder(tmp_path / "val", per_class=1)  # 5 images: an odd number
    mp.spawn(
        _worker,
        args=(2, _free_port(), str(tiny_weights), str(data), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["returned"] for r in ranks] == [True, False]  # rank 0 holds the gathered result
    assert ranks[0]["visits"] == [1, 1, 1, 1, 1]  # each image once, over both processes
    first, second = set(ranks[0]["batches"]), set(ranks[1]["batches"])
    assert first and second and not first & second and first | second == set(range(5))
    assert not list(
        tmp_path.glob("scores.safetensors.part*")
    )  # per-process partial files cleaned up

    together = load_scores(tmp_path / "scores.safetensors")
    alone = evaluate([str(tiny_weights)], data, **OPTIONS).scores
    assert together.complete and together.paths == alone.paths
    for key, array in alone.values.items():
        np.testing.assert_allclose(together.values[key], array, atol=1e-6)
