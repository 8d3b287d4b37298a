"""Two gloo ranks: per-rank seeds (different masks, identical weights) and a non-finite loss on one rank
stopping both together. The ranks are started as torchrun starts them (environment variables), as two
processes of this test's own, so a hang is bounded and both are killed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(data: Path, out: Path, device: str = "cpu") -> None:
    """Both ranks of ``two_ranks.py`` (gloo on ``cpu``, NCCL on ``cuda``: rank r on cuda:r)."""
    script = Path(__file__).with_name("two_ranks.py")
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        log = open(out / f"rank{rank}.log", "w")  # noqa: SIM115 (closed below)
        procs.append((subprocess.Popen([sys.executable, str(script), str(data), str(out), device], stdout=log,
                                       stderr=subprocess.STDOUT, env=env), log))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(p.poll() is None for p, _ in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        hung = [p for p, _ in procs if p.poll() is None]
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            log.close()
    logs = "\n".join((out / f"rank{r}.log").read_text()[-1500:] for r in range(2))
    assert not hung, f"a rank still ran after {TIMEOUT_S} s (waiting for the other?)\n{logs}"
    assert all(p.returncode == 0 for p, _ in procs), logs


@pytest.fixture(scope="module")
def ranks(motion_train: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """What rank 0 and rank 1 recorded in a 2-rank MAE run whose rank 1 gets a NaN loss in step 3."""
    out = tmp_path_factory.mktemp("two_ranks")
    run_two_ranks(motion_train, out)
    return tuple(torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2))


def test_ranks_start_identical_and_draw_their_own_masks(ranks: tuple[dict, dict]) -> None:
    r0, r1 = ranks
    for k in r0["init"]:  # the same weights before DDP's broadcast, and after two steps
        assert torch.equal(r0["init"][k], r1["init"][k]), k
        assert torch.equal(r0["after_2_steps"][k], r1["after_2_steps"][k]), k
    key = "encoder.patch_embed.weight"
    assert not torch.equal(r0["after_2_steps"][key], r0["init"][key])  # and they did train
    assert len(r0["masks"]) == len(r1["masks"]) == 3
    for m0, m1 in zip(r0["masks"], r1["masks"], strict=True):
        assert not torch.equal(m0, m1)  # seed + rank: each rank masks its clips differently
    assert r0["buffers_synced"] is False and r1["buffers_synced"] is False  # sin-cos buffers never change


def test_a_nan_on_one_rank_stops_every_rank_with_the_same_message(ranks: tuple[dict, dict]) -> None:
    e0, e1 = ranks[0]["error"], ranks[1]["error"]
    assert e0 is not None and e0 == e1 and e0.startswith("step 3:") and "non-finite" in e0, (e0, e1)
