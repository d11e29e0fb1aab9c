"""Runs you can trust: the output folder, the lock, resume arguments, complete checkpoints, one-line errors.

The trainers share this code through identical blocks (tests/test_script_consistency.py), so most of it
is exercised through stage 1 with a tiny model; stage 2 covers its own default block size.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

import train_contrastive as tc
import train_full
import train_lm_head
from common.checkpoint import (
    RunLock,
    common_resume_step,
    find_checkpoint,
    missing_resume_files,
    nodes_have_own_folders,
    output_dir_refusal,
    resume_argument_changes,
    sorted_checkpoints,
)
from common.data import iter_parallel_jsonl
from common.demo import tiny_llama, train_demo_tokenizer
from common.distributed import process_group_kwargs

pytestmark = pytest.mark.usefixtures("reset_accelerate")
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
TRAIN, VALID = str(DEMO / "train.jsonl"), str(DEMO / "validation.jsonl")


@pytest.fixture
def tiny_model(tiny_pair_model) -> Path:
    return tiny_pair_model


def run(tiny_model, out, *extra):
    return tc.main(["--model_name_or_path", str(tiny_model), "--train_file", TRAIN, "--validation_file", VALID,
                    "--output_dir", str(out), "--per_device_train_batch_size", "8", "--max_eval_pairs", "16",
                    "--report_to", "none", "--logging_steps", "1", "--eval_steps", "100", *extra])


def steps_logged(out) -> list[int]:
    return [json.loads(line)["step"] for line in (Path(out) / "log.jsonl").read_text().splitlines()
            if "cl_loss" in line]


def test_a_folder_with_checkpoints_is_refused_then_started_over(tiny_model, tmp_path, reset_accelerate):
    run(tiny_model, tmp_path, "--max_steps", "4", "--save_steps", "1")
    reset_accelerate()
    with pytest.raises(FileExistsError, match=r"already holds 4 checkpoint.*--resume_from_checkpoint latest.*"
                                              r"--overwrite_output_dir"):
        run(tiny_model, tmp_path, "--max_steps", "2", "--save_steps", "1")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*"))[-1] == "checkpoint-4"  # nothing was touched
    reset_accelerate()
    run(tiny_model, tmp_path, "--max_steps", "2", "--save_steps", "1", "--overwrite_output_dir")
    # the old run's checkpoints and log are gone, not mixed with the new ones
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert steps_logged(tmp_path) == [1, 2]
    assert not (tmp_path / ".lock").exists()
    # every file of a checkpoint has one mode, the weights included (safetensors alone would write them 0600)
    newest = tmp_path / "checkpoint-2"
    modes = {str(p.relative_to(newest)): p.stat().st_mode & 0o777 for p in newest.rglob("*") if p.is_file()}
    assert "model.safetensors" in modes and set(modes.values()) == {modes["config.json"]}, modes


def test_a_live_lock_is_refused_and_a_stale_one_taken_over(tiny_model, tmp_path, reset_accelerate):
    lock = tmp_path / ".lock"
    tmp_path.mkdir(exist_ok=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "today"}))
    with pytest.raises(FileExistsError, match=rf"another run \(pid {os.getpid()} on "):
        run(tiny_model, tmp_path, "--max_steps", "1")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname(), "started": "yesterday"}))
    assert RunLock(str(tmp_path)).owner() is None  # its process has exited: stale
    reset_accelerate()
    run(tiny_model, tmp_path, "--max_steps", "1")
    assert (tmp_path / "checkpoint-1").is_dir() and not lock.exists()


@pytest.mark.parametrize("flags, refused", [
    (["--per_device_train_batch_size", "4"], "--per_device_train_batch_size: checkpoint 8, now 4"),
    (["--seed", "1"], "--seed: checkpoint 42, now 1"),
    (["--pool_layer", "2"], "--pool_layer: checkpoint None, now 2"),
    (["--mix_layers", "0-2"], "--mix_layers: checkpoint None, now '0-2'"),
    (["--english_encoder", "frozen"], "--english_encoder: checkpoint 'shared', now 'frozen'"),
    (["--learning_rate", "1e-3"], "--learning_rate"),
    (["--max_steps", "6"], "--max_steps: checkpoint 4, now 6"),
])
def test_resume_refuses_arguments_that_change_the_run(tiny_model, tmp_path, reset_accelerate, flags, refused):
    run(tiny_model, tmp_path, "--max_steps", "4", "--save_steps", "2", "--save_state_limit", "0")
    reset_accelerate()
    base = ["--max_steps", "4", "--save_steps", "2", "--resume_from_checkpoint", str(tmp_path / "checkpoint-2")]
    with pytest.raises(ValueError, match="belongs to a run with other settings") as err:
        run(tiny_model, tmp_path, *base, *flags)
    assert refused in str(err.value)


def test_resume_accepts_bookkeeping_changes():
    saved = {"eval_steps": 100, "save_steps": 2, "report_to": "none", "seed": 42, "train_file": TRAIN}
    current = {**saved, "eval_steps": 5, "report_to": "tensorboard", "train_file": os.path.relpath(TRAIN),
               "torch_compile": True}  # a speed option: a run may resume compiled on another machine
    refused, allowed = resume_argument_changes(saved, current)
    assert refused == []  # the same file named another way is the same file
    assert [line.split(":")[0] for line in allowed] == ["--eval_steps", "--report_to", "--torch_compile"]


@pytest.mark.parametrize("name, before, after", [
    ("temperature", 0.05, 0.1), ("symmetric", True, False), ("cl_weight", 1.0, 0.5), ("lm_weight", 0.0, 0.1),
    ("learning_rate", 2e-5, 1e-4), ("pooling", "mean", "last"), ("trainable", "all", "embeddings"),
    ("mask_duplicates", True, False), ("block_size", 512, 1024),
])
def test_resume_refuses_a_change_to_the_loss_or_the_optimizer(name, before, after):
    refused, allowed = resume_argument_changes({name: before}, {name: after})
    assert [line.split(":")[0] for line in refused] == [f"--{name}"] and allowed == []


def test_resume_refuses_another_file_and_accepts_the_same_file_by_another_path(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("x\n")
    b.write_text("x\n")  # the same bytes, another file: a resume may not swap it in
    (tmp_path / "link.jsonl").symlink_to(a)
    refused, _ = resume_argument_changes({"train_file": str(a)}, {"train_file": str(b)})
    assert [line.split(":")[0] for line in refused] == ["--train_file"]
    assert resume_argument_changes({"train_file": str(a)}, {"train_file": str(tmp_path / "link.jsonl")}) == ([], [])


def write_checkpoint(folder: Path, step: int, processes: int, states: list[int], export=True):
    (folder / "accelerate_state").mkdir(parents=True)
    for rank in states:
        (folder / "accelerate_state" / f"random_states_{rank}.pkl").write_bytes(b"x")
    if export:
        (folder / "model.safetensors").write_bytes(b"x")
    (folder / "trainer_state.json").write_text(json.dumps({"step": step, "num_processes": processes,
                                                           "weights_in_export": True}))


def test_latest_never_takes_an_incomplete_checkpoint(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-2", 2, 2, [0, 1])
    write_checkpoint(tmp_path / "checkpoint-4", 4, 2, [0])  # rank 1's state never arrived
    write_checkpoint(tmp_path / "checkpoint-6", 6, 2, [0, 1], export=False)  # weights missing
    (tmp_path / "checkpoint-8.tmp").mkdir()  # a save that crashed
    assert find_checkpoint("latest", str(tmp_path)) == (tmp_path / "checkpoint-2", 2)
    with pytest.raises(FileNotFoundError, match=r"checkpoint-4 cannot be resumed from: it lacks "
                                                r"accelerate_state/random_states_1.pkl"):
        find_checkpoint(str(tmp_path / "checkpoint-4"), str(tmp_path))


def test_latest_is_the_highest_step_not_the_last_name(tmp_path):
    for step in (2, 9, 10):
        write_checkpoint(tmp_path / f"checkpoint-{step}", step, 1, [0])
    assert [c.name for c in sorted_checkpoints(str(tmp_path))] == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]
    assert find_checkpoint("latest", str(tmp_path)) == (tmp_path / "checkpoint-10", 10)


def test_two_processes_write_complete_checkpoints_even_when_one_lags(tmp_path):
    """tests/checkpoint_worker.py: rank 1 is slow to write its resume state; every checkpoint must still
    hold both processes' files, and no .tmp folder may be left."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "tests.checkpoint_worker", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoints = sorted(tmp_path.glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    for ckpt in checkpoints:
        state = ckpt / "accelerate_state"
        assert {f.name for f in state.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
        assert json.loads((ckpt / "trainer_state.json").read_text())["num_processes"] == 2


def test_bad_input_is_one_line_not_a_traceback(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ko": "안녕", "en": "hi"}\n{"ko": "네"}\n', encoding="utf-8")
    args = ["train_contrastive.py", "--model_name_or_path", str(tiny_model), "--train_file", str(bad),
            "--output_dir", str(tmp_path / "o"), "--report_to", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("KOEN_ALIGN_DEBUG", None)
    for cmd in ([sys.executable, *args],
                [sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", *args]):
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert lines[-1] == f"train_contrastive.py: error: {bad}:2: missing field 'en' (fields: ['ko'])", lines[-5:]
        assert "Traceback" not in proc.stderr
    # KOEN_ALIGN_DEBUG=1 keeps the traceback for whoever wants it
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env={**env, "KOEN_ALIGN_DEBUG": "1"},
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" in proc.stderr and proc.returncode != 0


def test_lm_head_block_size_defaults_to_the_model_context(tmp_path, reset_accelerate):
    tokenizer = train_demo_tokenizer([row[s] for row in iter_parallel_jsonl(TRAIN) for s in ("ko", "en")])
    model = tiny_llama(len(tokenizer), hidden_size=32, num_layers=1, max_position_embeddings=128)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    train_lm_head.main(["--model_name_or_path", str(tmp_path / "m"), "--train_file", str(DEMO / "mono_ko_train.txt"),
                        "--output_dir", str(tmp_path / "o"), "--max_steps", "1", "--report_to", "none",
                        "--per_device_train_batch_size", "2"])
    assert json.loads((tmp_path / "o" / "checkpoint-1" / "training_args.json").read_text())["block_size"] == 128
    shutil.rmtree(tmp_path / "o")


def test_a_loss_that_goes_nan_stops_the_run_before_it_is_saved(tiny_model, tmp_path):
    with pytest.raises(FloatingPointError, match=r"step 2: cl_loss=nan"):
        run(tiny_model, tmp_path / "out", "--learning_rate", "1e30", "--max_grad_norm", "0", "--max_steps", "6",
            "--logging_steps", "2", "--save_steps", "2")
    assert not list((tmp_path / "out").glob("checkpoint-*")), "a checkpoint of non-finite weights was written"


# ----------------------------------------------------------------------------- several nodes (tests/test_multinode.py
# runs them for real; these are the decisions, case by case)


def test_latest_starts_afresh_only_where_there_is_no_complete_checkpoint(tmp_path):
    assert find_checkpoint("latest", str(tmp_path / "never_created")) is None
    (tmp_path / "checkpoint-2.tmp" / "accelerate_state").mkdir(parents=True)  # a first attempt died saving
    assert find_checkpoint("latest", str(tmp_path)) is None
    write_checkpoint(tmp_path / "checkpoint-4", 4, 2, [0])  # complete, but its resume state lacks process 1
    with pytest.raises(FileNotFoundError, match=r"no checkpoint with a complete resume state.*checkpoint-4 lacks "
                                                r"accelerate_state/random_states_1.pkl"):
        find_checkpoint("latest", str(tmp_path))


def test_latest_after_a_crashed_first_attempt_starts_the_run_afresh(tiny_model, tmp_path, reset_accelerate):
    """The command that starts a run also restarts it (an elastic launcher's --max_restarts): with no
    complete checkpoint yet, 'latest' trains from step 0 and clears the first attempt's leftovers."""
    (tmp_path / "checkpoint-2.tmp" / "accelerate_state").mkdir(parents=True)
    (tmp_path / "log.jsonl").write_text('{"step": 1, "cl_loss": 9.0}\n{"step": 2, "cl_loss": 9.0}\n')
    run(tiny_model, tmp_path, "--max_steps", "2", "--save_steps", "2", "--resume_from_checkpoint", "latest")
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-2"]
    assert steps_logged(tmp_path) == [1, 2]
    assert all(json.loads(line).get("cl_loss") != 9.0 for line in (tmp_path / "log.jsonl").read_text().splitlines())
    reset_accelerate()
    # the same command again resumes that checkpoint (and has nothing left to do)
    run(tiny_model, tmp_path, "--max_steps", "2", "--save_steps", "2", "--resume_from_checkpoint", "latest")
    assert steps_logged(tmp_path) == [1, 2]


def test_latest_on_several_nodes_takes_the_newest_step_every_process_holds():
    # node 1 died before renaming its checkpoint-6: the run resumes step 4 on both
    assert common_resume_step([[2, 4, 6], [2, 4]], [[2, 4, 6], [2, 4]]) == 4
    assert common_resume_step([[], []], [[], []]) is None  # nothing anywhere: a first start
    # checkpoints that some process cannot resume are never overwritten by a fresh start
    with pytest.raises(FileNotFoundError, match=r"process 0: \[2\]; process 1: none"):
        common_resume_step([[2], []], [[2], [2]])


def test_a_node_local_folder_holds_its_own_processes_states_only(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-2", 2, 2, [1])
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({**state, "ranks": [1]}))
    assert missing_resume_files(tmp_path / "checkpoint-2", 1) == []
    # another node's folder (the launch gave node 0 node 1's --output_dir): not resumable by process 0
    assert "process 0's state" in missing_resume_files(tmp_path / "checkpoint-2", 0)[0]


@pytest.mark.parametrize("views, flag, deepspeed, expected", [
    ({0: [0, 1], 1: [0, 1]}, False, False, False),  # one folder on a shared filesystem
    ({0: [0], 1: [1]}, False, False, True),  # node-local disks: found without the flag
    ({0: [0], 1: [1]}, True, False, True),
    ({0: [0, 1], 1: [0, 1]}, True, False, "--save_on_each_node: .* is one folder shared by all 2 nodes"),
    ({0: [0, 2], 1: [1], 2: [0, 2]}, False, False, "some nodes share it and others do not"),
    ({0: [0], 1: [1]}, False, True, "node-local checkpoint folders work with DDP"),
])
def test_the_nodes_probe_decides_one_folder_or_one_per_node(views, flag, deepspeed, expected):
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            nodes_have_own_folders(views, "out", flag, deepspeed)
    else:
        assert nodes_have_own_folders(views, "out", flag, deepspeed) is expected


def test_another_hosts_lock_is_never_stale_and_only_the_first_process_judges_it_early(tmp_path, monkeypatch):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(json.dumps({"pid": int(gone.stdout), "host": "another-host", "started": "now"}))
    assert RunLock(str(tmp_path)).owner()["host"] == "another-host"  # its pid means nothing here
    monkeypatch.setenv("RANK", "0")
    assert "pid " + gone.stdout.strip() + " on another-host" in output_dir_refusal(str(tmp_path), None, False)
    # another node reading a shared folder cannot tell node 0's crashed attempt from a live run: it leaves the
    # lock to the process that takes it
    monkeypatch.setenv("RANK", "1")
    assert output_dir_refusal(str(tmp_path), None, False) is None


@pytest.mark.parametrize("script", [tc, train_lm_head, train_full])
def test_ddp_timeout_reaches_the_process_group(script, tiny_model, tmp_path, monkeypatch):
    assert process_group_kwargs(7) == []  # one process: no process group
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert [k.timeout for k in process_group_kwargs(7)] == [timedelta(seconds=7)]
    seen = []

    def record(timeout_s=None):
        seen.append(timeout_s)
        raise KeyboardInterrupt  # stop before the process group starts

    monkeypatch.setattr(script, "process_group_kwargs", record)
    with pytest.raises(KeyboardInterrupt):
        script.main(["--model_name_or_path", str(tiny_model), "--train_file", TRAIN if script is tc else
                     str(DEMO / "mono_ko_train.txt"), "--output_dir", str(tmp_path), "--ddp_timeout", "7"])
    assert seen == [7]
