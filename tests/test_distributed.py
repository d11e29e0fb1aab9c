"""2 processes against 1: the gradient all-reduce and the gathered negatives (tests/dist_worker.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.distributed import parameter_dims, process_group_kwargs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "results.json"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "tests.dist_worker", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


VARIANTS = ["top_layer_unused_head", "truncated_middle_layer", "layer_0", "last_token", "frozen_english",
            "mixture", "mixture_unnormalised", "frozen_english_mixture", "duplicates_masked", "one_directional",
            "lm_loss", "two_gradients_summed", "chunked_gradient_cache", "packed", "packed_frozen_last_token",
            "packed_joint_chunked_mixture"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_processes_match_one_process_reference(two_process_results, variant):
    r = two_process_results[variant]
    assert r["world_size"] == 2  # a launcher that silently starts 1 process would prove nothing
    assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5)
    assert r["params_with_grad"] > 0
    assert r["max_rel_grad_err"] < 1e-5


def test_several_processes_on_cpu_without_accelerate_use_cpu_are_refused(monkeypatch):
    """Without ACCELERATE_USE_CPU, accelerate would run each CPU rank as if it were alone: the negatives of
    the other ranks and the gradient averaging would be silently missing."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="ACCELERATE_USE_CPU=1"):
        process_group_kwargs()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert [k.backend for k in process_group_kwargs()] == ["gloo"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert process_group_kwargs() == []


def test_weight_decay_grouping_reads_a_zero3_shard_by_its_full_shape():
    shard = torch.nn.Parameter(torch.empty(0))  # ZeRO-3 leaves an empty 1-D shard and records the real shape
    shard.ds_shape = torch.Size([4, 8])
    assert parameter_dims(shard) == 2  # a matrix: decayed
    assert parameter_dims(torch.nn.Parameter(torch.ones(8))) == 1  # a norm's weight: not decayed
