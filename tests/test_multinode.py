"""Several nodes, on one host: two launchers as two machines (``--num_machines 2``, one process each, gloo over
127.0.0.1) against one process on the same global batch, with one output folder shared by the nodes and with
a folder per node (node-local disks); and a node whose worker is killed mid-save, both nodes then started
again with the same command through the SLURM jobs' per-node launcher (configs/slurm/launch_node.sh), against
an uninterrupted run.

These start real launchers (about 20 s each on 2 cores): ``pytest -m "not multinode"`` leaves them out.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_contrastive
import train_full
from common.checkpoint import missing_resume_files, sorted_checkpoints
from common.data import iter_mono_texts
from common.demo import tiny_llama, train_demo_tokenizer

pytestmark = pytest.mark.multinode
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
TOL = 1e-6  # fp32: the two-node run sums the same numbers in another order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process below it: torch elastic starts its workers in sessions of their
    own, so killing the launcher's process group would leave them running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, found = [pid], []
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    for target in found:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)


def launch_two_nodes(script: str, args: list[str], outs: list[Path], logs: Path, slurm: bool = False,
                     env: dict | None = None, timeout: int = 300,
                     launcher: tuple[str, ...] = ("--multi_gpu", "--mixed_precision", "no")) \
        -> list[subprocess.CompletedProcess]:
    """One launcher per machine rank, started together, each with its own --output_dir; both are waited
    for (and killed with their workers if they outlive ``timeout``). The launcher is ``accelerate launch
    --num_machines 2`` (static rendezvous), or with ``slurm`` the per-node script of the SLURM jobs,
    configs/slurm/launch_node.sh, given what srun would set on each node.
    ``launcher``: the distributed flags (DDP on CPU by default, or DeepSpeed's)."""
    port = free_port()  # only machine rank 0 checks that its port is free: every launch gets its own
    cpu = {"ACCELERATE_USE_CPU": "1"} if "--multi_gpu" in launcher else {}  # DeepSpeed on CPU takes gloo itself
    env = {**os.environ, **cpu, "OMP_NUM_THREADS": "1",
           # the DeepSpeed op compiled at first use is cached here, once per checkout (as tests/test_deepspeed.py)
           "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions"), **(env or {})}
    procs = []
    for rank, out in enumerate(outs):
        trainer = ["-m", "tests.node_worker", script, *args, "--output_dir", str(out)]
        if slurm:
            cmd = ["bash", "configs/slurm/launch_node.sh", *trainer]
            # No elastic restart here: with both launchers on one host, a restart by --max_restarts hung in the
            # next rendezvous in 2 of 3 tries with c10d and 1 of 3 with static (the restarted worker found the
            # other's stale address); the relaunch is the test's to do.
            node_env = {**env, "SLURM_NNODES": "2", "SLURM_NODEID": str(rank), "MAIN_HOST": "127.0.0.1",
                        "PORT": str(port), "GPUS_PER_NODE": "1", "MAX_RESTARTS": "0", "RDZV_BACKEND": "static",
                        "PYTHON": sys.executable}
        else:
            cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_machines", "2",
                   "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(port), "--dynamo_backend", "no", *trainer]
            node_env = env
        log = open(logs / f"node{rank}.log", "w")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=node_env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True), log))
        if slurm and rank == 0:
            # On one host every node's launcher matches the rendezvous address and would host the c10d store;
            # machine rank 0 must take the port first (it checks that the port is free), the other then joins.
            wait_for_port(port, procs[0][0])
    deadline = time.monotonic() + timeout
    results = []
    for proc, log in procs:
        try:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                kill_tree(p.pid)
            proc.wait()
        log.close()
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode,
                                                   (logs / f"node{len(results)}.log").read_text()))
    return results


def read_log(out: Path) -> dict[int, dict]:
    merged: dict[int, dict] = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        merged.setdefault(record["step"], {}).update(record)
    return merged


def max_abs_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def check_node_folders(outs: list[Path], steps: list[int], node_local: bool) -> None:
    """Every folder holds complete checkpoints that its node's process can resume from, the same export on
    every node, no .tmp folder and no lock left."""
    for rank, out in enumerate(outs):
        assert [c.name for c in sorted_checkpoints(out)] == [f"checkpoint-{s}" for s in steps]
        assert not list(out.glob("*.tmp")) and not (out / ".lock").exists()
        newest = out / f"checkpoint-{steps[-1]}"
        state = json.loads((newest / "trainer_state.json").read_text())
        assert state["ranks"] == ([rank] if node_local else [0, 1])
        assert missing_resume_files(newest, rank) == []
    exports = [load_file(str(out / f"checkpoint-{steps[-1]}" / "model.safetensors")) for out in outs]
    assert max_abs_diff(exports[0], exports[-1]) == 0.0


def compare(name: str, reference: Path, out: Path, keys: list[str]) -> tuple[float, float]:
    """(max relative difference of the logged values, max abs difference of the exported weights) between
    two runs' folders, after checking that both logged the same steps and keys. Relative for the losses:
    a loss of 5 in fp32 is resolved to 5e-7."""
    ref, got = read_log(reference), read_log(out)
    assert sorted(ref) == sorted(got), name
    worst_loss = 0.0
    for step, record in ref.items():
        for key in keys:
            if key in record:
                worst_loss = max(worst_loss, abs(record[key] - got[step][key]) / max(1.0, abs(record[key])))
    last = sorted_checkpoints(reference)[-1].name
    worst_weight = max_abs_diff(load_file(str(reference / last / "model.safetensors")),
                                load_file(str(out / last / "model.safetensors")))
    print(f"{name}: max rel diff of {keys} {worst_loss:.2e}, max abs diff of the exported weights {worst_weight:.2e}")
    return worst_loss, worst_weight


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()


# ----------------------------------------------------------------------------- stage 1

def stage1_args(model: Path, per_device: int) -> list[str]:
    """Frozen English copy and a layer mixture: the run-defining state beyond the export (the mixture
    logits, in the resume state) on every node."""
    return ["--model_name_or_path", str(model), "--train_file", str(DEMO / "train.jsonl"),
            "--validation_file", str(DEMO / "validation.jsonl"), "--per_device_train_batch_size", str(per_device),
            "--english_encoder", "frozen", "--mix_layers", "1-3", "--mix_temperature", "0.5",
            "--max_eval_pairs", "16", "--report_to", "none", "--logging_steps", "1", "--eval_steps", "2",
            "--max_steps", "4", "--save_steps", "2", "--resume_from_checkpoint", "latest"]


@pytest.fixture(scope="module")
def stage1_reference(tiny_pair_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage1_one_process")
    reset_accelerate()
    train_contrastive.main([*stage1_args(tiny_pair_model, 8), "--output_dir", str(out)])
    reset_accelerate()
    return out


@pytest.mark.parametrize("folders", ["shared", "node_local"])
def test_stage1_on_two_nodes_matches_one_process(stage1_reference, tiny_pair_model, tmp_path, folders):
    outs = [tmp_path / "out"] * 2 if folders == "shared" else [tmp_path / "node0", tmp_path / "node1"]
    nodes = launch_two_nodes("train_contrastive.py", stage1_args(tiny_pair_model, 4), outs, tmp_path)
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stdout[-3000:] + nodes[1].stdout[-3000:]
    assert "over 2 process(es)" in nodes[0].stdout
    check_node_folders(outs, [2, 4], node_local=folders == "node_local")
    losses, weights = compare(f"stage 1, {folders}", stage1_reference, outs[0], ["cl_loss", "eval/gap"])
    assert losses < TOL and weights < TOL
    # the mixture's logits live in the resume state, not the export: every node's copy is the trained one
    mixtures = [load_file(str(out / "checkpoint-4" / "accelerate_state" / "model.safetensors")) for out in outs]
    reference = load_file(str(stage1_reference / "checkpoint-4" / "accelerate_state" / "model.safetensors"))
    for mixture in mixtures:
        torch.testing.assert_close(mixture["mixture.logits"], reference["mixture.logits"], rtol=0, atol=TOL)


# ----------------------------------------------------------------------------- stage 3

@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text_model")
    texts = [t for lang in ("ko", "en") for t in iter_mono_texts(str(DEMO / f"mono_{lang}_train.txt"))]
    tokenizer = train_demo_tokenizer(texts)
    tiny_llama(len(tokenizer), hidden_size=32, num_layers=2, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def stage3_args(model: Path, per_device: int) -> list[str]:
    return ["--model_name_or_path", str(model), "--train_file", str(DEMO / "mono_ko_train.txt"),
            "--en_train_file", str(DEMO / "mono_en_train.txt"), "--ko_ratio", "0.5",
            "--validation_file", str(DEMO / "mono_ko_validation.txt"), "--block_size", "32",
            "--per_device_train_batch_size", str(per_device), "--learning_rate", "1e-3", "--warmup_ratio", "0.25",
            "--report_to", "none", "--logging_steps", "1", "--max_eval_blocks", "8", "--eval_steps", "2",
            "--max_steps", "6", "--save_steps", "2", "--save_state_limit", "0", "--resume_from_checkpoint", "latest"]


@pytest.fixture(scope="module")
def stage3_reference(text_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage3_one_process")
    reset_accelerate()
    train_full.main([*stage3_args(text_model, 4), "--output_dir", str(out)])
    reset_accelerate()
    return out


@pytest.mark.parametrize("folders", ["shared", "node_local"])
def test_stage3_on_two_nodes_matches_one_process(stage3_reference, text_model, tmp_path, folders):
    outs = [tmp_path / "out"] * 2 if folders == "shared" else [tmp_path / "node0", tmp_path / "node1"]
    nodes = launch_two_nodes("train_full.py", stage3_args(text_model, 2), outs, tmp_path)
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stdout[-3000:] + nodes[1].stdout[-3000:]
    check_node_folders(outs, [2, 4, 6], node_local=folders == "node_local")
    losses, weights = compare(f"stage 3, {folders}", stage3_reference, outs[0], ["loss", "eval/ko_loss"])
    assert losses < TOL and weights < TOL


def test_stage3_on_two_nodes_under_zero2_matches_one_process(stage3_reference, text_model, tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "out"
    zero2 = ("--use_deepspeed", "--deepspeed_config_file", str(ROOT / "ds_configs" / "zero2.json"),
             "--zero3_init_flag", "false", "--deepspeed_multinode_launcher", "standard")
    nodes = launch_two_nodes("train_full.py", stage3_args(text_model, 2), [out, out], tmp_path, launcher=zero2)
    assert [n.returncode for n in nodes] == [0, 0], nodes[0].stdout[-3000:] + nodes[1].stdout[-3000:]
    assert (out / "checkpoint-6" / "accelerate_state" / "pytorch_model").is_dir()  # the engine's own checkpoint
    check_node_folders([out, out], [2, 4, 6], node_local=False)
    losses, weights = compare("stage 3, ZeRO-2, shared", stage3_reference, out, ["loss", "eval/ko_loss"])
    assert losses < TOL and weights < TOL


def test_a_killed_node_relaunched_with_the_same_command_ends_like_an_uninterrupted_run(stage3_reference, text_model,
                                                                                       tmp_path):
    """Node 1's worker dies by SIGKILL inside the save of step 4 (tests/node_worker.py): both nodes' launchers
    (the SLURM jobs' per-node script) exit non-zero. The same command started again resumes checkpoint-2, the
    newest complete on both nodes, and ends equal to the uninterrupted one-process run, each node's folder
    complete."""
    outs = [tmp_path / "node0", tmp_path / "node1"]
    marker = tmp_path / "killed"
    kill = {"KOEN_TEST_KILL": f"4:{marker}"}  # only while the marker does not exist: the first attempt
    first = launch_two_nodes("train_full.py", stage3_args(text_model, 2), outs, tmp_path, slurm=True, env=kill)
    assert marker.exists(), "the worker was never killed"
    assert all(n.returncode != 0 for n in first), "a node whose worker died must not end as a success"
    assert [c.name for c in sorted_checkpoints(outs[1])] == ["checkpoint-2"]
    again = launch_two_nodes("train_full.py", stage3_args(text_model, 2), outs, tmp_path, slurm=True, env=kill)
    assert [n.returncode for n in again] == [0, 0], again[0].stdout[-3000:] + again[1].stdout[-3000:]
    assert "checkpoint-2 at step 2" in again[0].stdout  # logged by the first process
    check_node_folders(outs, [2, 4, 6], node_local=True)
    losses, weights = compare("stage 3, killed and relaunched", stage3_reference, outs[0], ["loss", "eval/ko_loss"])
    assert losses < TOL and weights < TOL
