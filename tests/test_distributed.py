"""DDP pieces that need no cluster: the batch rule, the submit-time refusal, and a real 2-process gloo group on
CPU in which sharded scoring equals one process and the stop flag is agreed."""

from __future__ import annotations

import multiprocessing
import os
import socket

import numpy as np
import pytest

from medminds_hpc import distributed
from medminds_hpc.errors import UserError
from medminds_hpc.training.engine import per_device_batch
from tests.helpers import assert_user_error, one_thread, run_cli


@pytest.mark.parametrize("batch,accum,world,per_device", [(16, 1, 1, 16), (16, 2, 2, 4), (12, 1, 3, 4), (16, 4, 1, 4)])
def test_per_device_batch_keeps_the_global_batch(batch, accum, world, per_device):
    assert per_device_batch(batch, accum, world) == per_device


def test_per_device_batch_refuses_what_does_not_divide():
    with pytest.raises(UserError) as e:
        per_device_batch(10, 2, 2, where="experiment x")
    text = str(e.value)
    assert "batch_size = 10 is not divisible by grad_accum x ranks = 2 x 2" in text and "multiple of 4" in text and "\n" not in text


def test_submit_refuses_a_batch_the_ranks_cannot_share(medminds_home):
    p = run_cli("submit", "baseline-classifier-task", "-d", "micro", "--cluster", "dev", "--executor", "local", "--dry-run",
                "-o", "resources.gpu=a100", "-o", "resources.gpus=2", "-o", "resources.nodes=2", "-o", "batch_size=6")
    assert_user_error(p, "baseline-classifier-task", "4 ranks", "batch_size = 6 is not divisible by grad_accum x ranks = 1 x 4")
    assert not any((medminds_home / "runs").glob("*"))  # nothing submitted or half-written


def test_a_resolvable_host_is_kept_and_an_unknown_one_asks_slurm(monkeypatch, tmp_path):
    assert distributed.node_address("localhost") == "localhost"
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho 'NodeName=gpu042 Arch=x86_64 CoresPerSocket=1'\necho '   NodeAddr=10.1.2.3 NodeHostName=gpu042'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert distributed.node_address("gpu042.invalid") == "10.1.2.3"


def test_master_port_is_shared_by_a_start_and_changes_on_requeue():
    assert distributed.master_port("123", 0) == distributed.master_port("123", 0) != distributed.master_port("123", 1)
    assert 20000 <= distributed.master_port("123", 5) < 60000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: "multiprocessing.Queue") -> None:
    """One rank: joins the group, scores its share of the questions, agrees on a flag only rank 1 raised."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch

    torch.set_num_threads(1)
    from medminds_hpc.data import synthetic
    from medminds_hpc.modeling.loading import load_model
    from medminds_hpc.modeling.scoring import letter_logprobs

    model, tok = load_model("tiny")
    rows = synthetic.medmcqa_rows(7, seed=3, split="validation")
    scores = letter_logprobs(model, tok, rows, batch_size=2)
    (agreed,) = distributed.any_rank(rank == 1)
    out.put((rank, scores, agreed, len(distributed.my_share(7))))
    distributed.shutdown()


@pytest.mark.slow  # two processes importing torch: ~15 s on 2 cores
def test_sharded_scoring_in_a_two_rank_gloo_group_equals_one_process(monkeypatch):
    monkeypatch.delenv("MEDMINDS_TOKENIZER", raising=False)
    from medminds_hpc.data import synthetic
    from medminds_hpc.modeling.loading import load_model
    from medminds_hpc.modeling.scoring import letter_logprobs

    with one_thread():
        model, tok = load_model("tiny")  # built once here: the ranks load it from the cache
        want = letter_logprobs(model, tok, synthetic.medmcqa_rows(7, seed=3, split="validation"), batch_size=2)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted((out.get(timeout=120) for _ in procs), key=lambda g: g[0])
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0]
    for rank, scores, agreed, share in got:
        assert agreed  # rank 1 alone raised it; both see it
        assert share == (4 if rank == 0 else 3)
        assert scores.shape == (7, 4)
        np.testing.assert_allclose(scores, want, rtol=0, atol=1e-5)


def test_a_lost_peer_is_told_from_other_errors():
    import torch  # noqa: F401  (peer_lost answers only once torch is loaded, as in a job of several ranks)

    gloo = "[third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:33198"
    assert distributed.peer_lost(RuntimeError(gloo))
    assert not distributed.peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not distributed.peer_lost(ValueError(gloo))
