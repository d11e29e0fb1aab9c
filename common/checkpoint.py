"""Output folders and checkpoints shared by the trainers.

A run owns its ``output_dir``: ``check_output_dir`` refuses a folder that holds checkpoints unless the
run resumes (``--resume_from_checkpoint``) or starts over (``--overwrite_output_dir``, which removes the
old checkpoints and logs first, so two runs are never mixed), and refuses a folder another live run
is writing (``RunLock``: ``.lock`` with the owner's pid and host; a lock whose process is gone on this
host is stale and taken over with a warning).

``checkpoint-{step}/`` holds the model export (``save_pretrained``: safetensors, config, tokenizer),
``training_args.json``, ``trainer_state.json`` (step, process count) and, for the newest
``--save_state_limit`` checkpoints, ``accelerate_state/`` (optimizer, scheduler, RNG of every process,
as ``Accelerator.save_state`` writes them). Without DeepSpeed the resume state holds no second copy of
the weights: they are read back from the export, which is written in the dtype of the trained weights
(fp32 master weights under bf16 autocast), so a resume is exact. Under DeepSpeed the engine's own
checkpoint is kept whole. A checkpoint is written as ``checkpoint-{step}.tmp``; every process finishes
writing before the main process writes ``trainer_state.json`` last and renames the folder, so a crash
never leaves a folder that looks complete, and ``latest`` only takes a checkpoint whose resume state has
every process's files.

Several nodes: when the nodes do not share ``output_dir`` (node-local disks, or another folder per node;
``prepare_output_dir`` finds out, ``--save_on_each_node`` declares it), every node's folder receives complete
checkpoints of its own: the export, the optimizer and scheduler (the same on every DDP process), the RNG
states of the node's processes (``trainer_state.json`` lists them as ``ranks``), renamed and pruned by the
node's first process, which also holds that folder's lock. ``--resume_from_checkpoint latest`` starts the
run afresh where no process finds any complete checkpoint, and otherwise resumes the newest step that every
process can resume from its own folder (``agree_on_resume``), so one command serves a first start and an
elastic restart (``--max_restarts``).
"""

import atexit
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

from common.models import match_file_modes

logger = logging.getLogger(__name__)

# Arguments that may change on resume: they do not change the model, the data, the batch plan or the
# schedule (the speed options give the same losses: tests/test_speed_options.py). Everything else in
# training_args.json must match (see ``resume_argument_changes``).
BOOKKEEPING = {
    "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "logging_steps", "eval_steps", "save_steps",
    "save_total_limit", "save_state_limit", "report_to", "dataloader_num_workers", "preprocessing_num_workers",
    "max_eval_pairs", "max_eval_blocks", "torch_compile", "attn_implementation", "pad_to_multiple_of",
    "joint_forward", "pack_length", "profile_steps", "sdpa_backends", "ddp_timeout", "save_on_each_node",
}
STATE = "accelerate_state"


# ----------------------------------------------------------------------------- finding checkpoints


def sorted_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoint-{step} folders (renamed, with trainer_state.json), oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*")
             if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def folder_ranks(state: dict) -> list[int]:
    """The processes whose resume state a checkpoint folder holds (``trainer_state.json``): all of them in
    a folder shared by the nodes, a node's own processes in a node-local folder."""
    return state.get("ranks", list(range(state.get("num_processes", 1))))


def missing_resume_files(ckpt: Path, process_index: int | None = None) -> list[str]:
    """What the checkpoint's resume state lacks (empty: it can be resumed from); with ``process_index``,
    also whether the folder holds that process's state at all (a node-local folder holds its node's)."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    if not (ckpt / STATE).is_dir():
        return [f"{STATE}/ (only the newest --save_state_limit checkpoints keep it)"]
    ranks = folder_ranks(state)
    missing = [f"{STATE}/random_states_{i}.pkl" for i in ranks
               if not (ckpt / STATE / f"random_states_{i}.pkl").is_file()]
    if process_index is not None and process_index not in ranks:
        missing.append(f"process {process_index}'s state (this folder holds processes {ranks}: the same node "
                       f"must be given the same --output_dir)")
    if state.get("weights_in_export") and not any(ckpt.glob("model*.safetensors")):
        missing.append("model.safetensors (the weights to resume from)")
    return missing


def find_checkpoint(spec: str, output_dir: str) -> tuple[Path, int] | None:
    """Resolve ``--resume_from_checkpoint`` ('latest' or a folder) to (folder, step).

    'latest' is the newest checkpoint whose resume state is complete, or None where ``output_dir`` holds
    no complete checkpoint at all (a first start: the run starts afresh); a folder given by name must be
    complete too, or the error says what it lacks."""
    if spec == "latest":
        complete = sorted_checkpoints(output_dir)
        if not complete:
            return None
        resumable = [c for c in complete if not missing_resume_files(c)]
        if not resumable:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint with a complete resume state "
                                    f"in {output_dir} ({complete[-1].name} lacks "
                                    f"{', '.join(missing_resume_files(complete[-1]))})")
        ckpt = resumable[-1]
    else:
        ckpt = Path(spec)
        if not (ckpt / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no trainer_state.json)")
        missing = missing_resume_files(ckpt)
        if missing:
            raise FileNotFoundError(f"{ckpt} cannot be resumed from: it lacks {', '.join(missing)}")
    return ckpt, json.loads((ckpt / "trainer_state.json").read_text())["step"]


def common_resume_step(resumable: list[list[int]], complete: list[list[int]]) -> int | None:
    """The step every process resumes from under 'latest': the newest in all ``resumable`` lists (one list
    of steps a process can resume from its own folder, per process); None for a fresh start, when no
    process holds any ``complete`` checkpoint. Checkpoints that some process cannot resume (a node that
    died before renaming its copy, a node given another node's folder) are an error, not a fresh start:
    starting afresh would overwrite them."""
    shared = set.intersection(*map(set, resumable))
    if shared:
        return max(shared)
    if not any(complete):
        return None
    held = "; ".join(f"process {i}: {steps or 'none'}" for i, steps in enumerate(resumable))
    raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint can be resumed by every process "
                            f"(steps each can resume from its --output_dir: {held}); give every node the "
                            f"--output_dir it had, or a checkpoint folder by name")


def agree_on_resume(accelerator, found: tuple[Path, int] | None, spec: str | None, output_dir: str,
                    current_args: dict) -> tuple[Path, int] | None:
    """(checkpoint, step) that every process resumes from, or None for a start from step 0. Every process
    calls it; an error is raised on all of them.

    ``found`` is what ``check_resume`` found in this process's own folder before the processes could talk.
    Under 'latest' the processes exchange the steps each can resume from its own folder and take the
    newest they all hold (``common_resume_step``): with node-local folders a node that died mid-save may
    lack the newest checkpoint another node completed. A checkpoint named by path must hold every
    process's state."""
    if not spec:
        return None
    from accelerate.utils import gather_object

    complete = sorted_checkpoints(output_dir) if spec == "latest" else []
    mine = [int(c.name.split("-")[1]) for c in complete if not missing_resume_files(c, accelerator.process_index)]
    error = None
    if spec != "latest" and found is not None:
        missing = missing_resume_files(found[0], accelerator.process_index)
        if missing:
            error = f"{found[0]} cannot be resumed from: it lacks {', '.join(missing)}"
    local = (mine, [int(c.name.split("-")[1]) for c in complete], error)
    gathered = gather_object([local]) if accelerator.num_processes > 1 else [local]
    errors = [g[2] for g in gathered if g[2]]
    if errors:
        raise FileNotFoundError(errors[0])
    if spec != "latest":
        return found
    step = common_resume_step([g[0] for g in gathered], [g[1] for g in gathered])
    if step is None:
        return None
    if found is not None and found[1] == step:
        return found
    return check_resume(str(Path(output_dir) / f"checkpoint-{step}"), output_dir, current_args)


# ----------------------------------------------------------------------------- output folder


class RunLock:
    """``output_dir/.lock``: one run at a time writes into a folder. The file holds the owner's pid,
    host and start time; a lock left by a process that no longer exists on this host is stale."""

    def __init__(self, output_dir: str):
        self.path = Path(output_dir) / ".lock"
        self.held = False

    def owner(self) -> dict | None:
        """The live run holding the lock, or None (no lock, or a stale one)."""
        try:
            info = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, OSError):
            return {"pid": "?", "host": "?", "started": "?"}  # being written by another run right now
        if info.get("host") == socket.gethostname():
            try:
                os.kill(int(info["pid"]), 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                pass  # alive, another user's
        return info

    def refusal(self) -> str | None:
        info = self.owner()
        if info is None:
            return None
        return (f"{self.path.parent} is being written by another run (pid {info.get('pid')} on {info.get('host')} "
                f"since {info.get('started')}); if that run is gone, remove {self.path}")

    def acquire(self) -> None:
        """Take the lock (main process only); a stale lock is replaced with a warning."""
        if self.path.exists():
            if self.refusal():
                raise FileExistsError(self.refusal())
            logger.warning("removing the stale lock %s: %s", self.path, self.path.read_text().strip())
            self.path.unlink(missing_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise FileExistsError(self.refusal() or f"{self.path}: another run took the lock just now") from None
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        self.held = True
        atexit.register(self.release)  # a run that dies with an exception still frees the folder

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def output_dir_refusal(output_dir: str, resume: str | None, overwrite: bool) -> str | None:
    """Why a run may not write into ``output_dir`` (None: it may). Read-only, cheap: call it before
    loading anything, on every process.

    The lock is judged here by the first process only (``RANK`` 0, or a run without a launcher): another
    node reading a folder shared with node 0 would see node 0's host in the lock and could not tell a
    crashed attempt's lock from a live one. ``claim_output_dir`` checks each folder's lock on the node that
    takes it."""
    lock = RunLock(output_dir).refusal() if os.environ.get("RANK", "0") == "0" else None
    if lock:
        return lock
    found = [p.name for p in Path(output_dir).glob("checkpoint-*")]
    if found and not resume and not overwrite:
        names = ", ".join(sorted(found, key=lambda n: int(re.sub(r"\D", "", n) or 0))[:5])
        return (f"{output_dir} already holds {len(found)} checkpoint(s) ({names}{', ...' if len(found) > 5 else ''}): "
                "pass --resume_from_checkpoint latest to continue that run, or --overwrite_output_dir to start "
                "over (its checkpoints and logs are removed first)")
    return None


def node_ranks(accelerator) -> list[int]:
    """The processes of this process's node: torchrun numbers a node's processes contiguously
    (``LOCAL_WORLD_SIZE`` of them, from global rank ``process_index - local_process_index``)."""
    first = accelerator.process_index - accelerator.local_process_index
    return list(range(first, first + int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))))


def folder_writer(accelerator) -> bool:
    """Whether this process writes, renames and prunes its output folder: the first process of the
    run, or of each node when the nodes have folders of their own (``prepare_output_dir``)."""
    if accelerator.project_configuration.save_on_each_node:
        return accelerator.is_local_main_process
    return accelerator.is_main_process


def nodes_have_own_folders(views: dict[int, list[int]], output_dir: str, save_on_each_node: bool,
                           deepspeed: bool = False) -> bool:
    """Whether every node has an output folder of its own, from the probe of ``prepare_output_dir``:
    ``views`` maps each node's first process to the first processes whose probe files it saw in its
    ``output_dir``. All of them everywhere: one shared folder (False); only its own everywhere: node-local
    folders (True). Anything else, ``save_on_each_node`` on a shared folder, and node-local folders under
    DeepSpeed are refused (ValueError)."""
    firsts = sorted(views)
    if all(seen == firsts for seen in views.values()):
        if save_on_each_node:
            raise ValueError(f"--save_on_each_node: {output_dir} is one folder shared by all {len(firsts)} nodes "
                             f"(each saw the others' files there), so the nodes would write the same files: drop "
                             f"the flag; the run's first process writes the shared folder")
        return False
    if all(seen == [index] for index, seen in views.items()):
        if deepspeed:
            raise ValueError(f"--output_dir {output_dir} is not shared by the nodes: node-local checkpoint folders "
                             "work with DDP; a DeepSpeed ZeRO checkpoint needs every process's optimizer partition "
                             "in one folder, so give every node the same --output_dir on a shared filesystem")
        return True
    raise ValueError(f"--output_dir {output_dir}: some nodes share it and others do not (the first process of each "
                     f"node saw these nodes' files: {views}); give every node the same folder on a shared "
                     f"filesystem, or every node a folder of its own")


def prepare_output_dir(accelerator, output_dir: str, save_on_each_node: bool = False) -> bool:
    """Create ``output_dir`` and find out whether the nodes share it; every process calls it. Returns True
    (and sets accelerate's ``ProjectConfiguration.save_on_each_node``) when every node has a folder of its
    own, so that each writes complete checkpoints there (``save_checkpoint``).

    The first process of each node writes a probe file named for it into its ``output_dir``; after a
    barrier each looks for the others' files. All seen: one shared folder, which the run's first process
    writes. None seen: node-local folders. Anything between (some nodes sharing a folder) is refused, as is
    ``save_on_each_node`` on one shared folder (the nodes would write the same files)."""
    out = Path(output_dir)
    if accelerator.num_processes == 1 or accelerator.num_processes == int(os.environ.get("LOCAL_WORLD_SIZE", "0")):
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
        accelerator.project_configuration.save_on_each_node = False
        return False
    from accelerate.utils import broadcast_object_list, gather_object

    token = broadcast_object_list([f".node-probe-{os.getpid()}-{time.time_ns()}"])[0]
    mine = out / f"{token}-{accelerator.process_index}"
    if accelerator.is_local_main_process:
        out.mkdir(parents=True, exist_ok=True)
        mine.touch()
    accelerator.wait_for_everyone()
    seen = sorted(int(p.name.rsplit("-", 1)[1]) for p in out.glob(f"{token}-*")) \
        if accelerator.is_local_main_process else None
    gathered = gather_object([(accelerator.process_index, seen)])
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process:
        mine.unlink(missing_ok=True)
    views = {index: seen for index, seen in gathered if seen is not None}
    node_local = nodes_have_own_folders(views, output_dir, save_on_each_node,
                                        deepspeed=accelerator.state.deepspeed_plugin is not None)
    if node_local:
        logger.info("%s is a folder of each node's own (%d nodes): every node writes complete checkpoints there",
                    output_dir, len(views))
    accelerator.project_configuration.save_on_each_node = node_local
    return node_local


def claim_output_dir(accelerator, output_dir: str, overwrite: bool, resume_step: int | None) -> RunLock:
    """Take the folder for this run (every process calls it; the process that writes each folder acts,
    ``folder_writer``): the lock, then either clear the folder of an earlier run (``overwrite``) or, on
    resume, drop the log records after the resumed step. A refusal reaches every process. Returns the
    lock; release it when the run ends."""
    from accelerate.utils import gather_object

    lock = RunLock(output_dir)
    error = None
    if folder_writer(accelerator):
        try:
            _claim(lock, output_dir, overwrite, resume_step)
        except FileExistsError as e:
            error = str(e)
    if accelerator.num_processes > 1:
        errors = [e for e in gather_object([error]) if e]
        error = errors[0] if errors else None
    if error:
        raise FileExistsError(error)
    return lock


def _claim(lock: RunLock, output_dir: str, overwrite: bool, resume_step: int | None) -> None:
    lock.acquire()
    out = Path(output_dir)
    if overwrite and resume_step is None:
        for old in out.glob("checkpoint-*"):
            shutil.rmtree(old)
        for name in ("log.jsonl", "tensorboard"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if resume_step is not None and (out / "log.jsonl").is_file():
        kept = [line for line in (out / "log.jsonl").read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step]
        (out / "log.jsonl").write_text("".join(line + "\n" for line in kept))


# ----------------------------------------------------------------------------- resume


def _same(name: str, a, b) -> bool:
    if a == b:
        return True
    paths = name.endswith(("_file", "_files")) or name == "model_name_or_path"
    if paths and isinstance(a, str) and isinstance(b, str) and os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return False


def resume_argument_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(refused, allowed): the arguments that differ between a checkpoint's training_args.json and this
    run, as ``--name: checkpoint X, now Y``. Bookkeeping (``BOOKKEEPING``) may change; anything else
    changes the model, the representation, the data, the batch plan or the schedule, so a resume with it
    would not continue the same run."""
    refused, allowed = [], []
    for name in sorted(set(saved) | set(current)):
        if name in saved and name in current and _same(name, saved[name], current[name]):
            continue
        line = f"--{name}: checkpoint {saved.get(name, '(absent)')!r}, now {current.get(name, '(absent)')!r}"
        (allowed if name in BOOKKEEPING else refused).append(line)
    return refused, allowed


def check_resume(spec: str, output_dir: str, current_args: dict) -> tuple[Path, int] | None:
    """(checkpoint, step) to resume from, after checking that this run's arguments are the checkpoint's
    (``resume_argument_changes``): a refused change raises ValueError naming each argument and both values.
    None: 'latest' found no complete checkpoint (a fresh start)."""
    found = find_checkpoint(spec, output_dir)
    if found is None:
        return None
    ckpt, step = found
    saved = json.loads((ckpt / "training_args.json").read_text())
    refused, allowed = resume_argument_changes(saved, current_args)
    if refused:
        raise ValueError(f"{ckpt} belongs to a run with other settings, and a resume continues that run unchanged "
                         f"(to change them, start a new --output_dir): {'; '.join(refused)}")
    for change in allowed:
        logger.info("resume with a bookkeeping change: %s", change)
    return ckpt, step


def read_tensors(folder: Path, names: set[str] | None = None) -> dict:
    """The tensors ``names`` (None: all) of a safetensors model folder (one file or an index of shards),
    reading only the files that hold them."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {file for name, file in weight_map.items() if names is None or name in names}
    else:
        files = {"model.safetensors"}
    found = {}
    for file in sorted(files):
        with safe_open(str(folder / file), framework="pt") as f:
            for name in f.keys():
                if names is None or name in names:
                    found[name] = f.get_tensor(name)
    return found


def restore_frozen(state: dict, model, source: str | None) -> list[str]:
    """Under DeepSpeed with bf16 the engine holds every parameter in bf16, so the export of a parameter
    that never trained would be a rounded copy. Put back, bitwise, the starting checkpoint's tensors of
    the parameters that do not train (``requires_grad`` False), when ``source`` is a local safetensors
    folder. Trainable tensors stay as the engine holds them (bf16 under a bf16 config, rows that never
    received a gradient included). Returns the names restored."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad and name in state}
    if not frozen or not source or not Path(source, "config.json").is_file():
        return []
    original = read_tensors(Path(source), frozen)
    if len(original) < len(frozen):
        logger.warning("%s lacks %d frozen tensors; the export keeps the engine's copies of those",
                       source, len(frozen) - len(original))
    state.update(original)
    return sorted(original)


def register_weights_in_export(accelerator, submodule: str | None = None) -> None:
    """Keep the model weights out of the resume state (they are in the export beside it) and read them
    back from the export on resume. Without DeepSpeed only: its engine writes its own checkpoint.

    ``submodule`` is the attribute of the prepared module that is exported (e.g. "lm"); the module's
    other parameters (e.g. a layer mixture's logits) stay in the resume state."""
    if accelerator.state.deepspeed_plugin is not None:
        return
    prefix = f"{submodule}." if submodule else ""

    def drop_exported(models, weights, output_dir):
        for i, state in enumerate(weights):  # keys carry "module." under DDP
            weights[i] = {k: v for k, v in state.items() if prefix and not k.removeprefix("module.").startswith(prefix)}

    def load_exported(models, input_dir):
        ckpt = Path(input_dir).parent
        for model in models:
            target = accelerator.unwrap_model(model)
            target = getattr(target, submodule) if submodule else target
            state = read_tensors(ckpt)
            missing, unexpected = target.load_state_dict(state, strict=False)
            tied = {k for k in missing if "lm_head" in k and getattr(target.config, "tie_word_embeddings", False)}
            if set(missing) - tied or unexpected:
                raise ValueError(f"{ckpt}: the export does not match the model "
                                 f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]})")

    accelerator.register_save_state_pre_hook(drop_exported)
    accelerator.register_load_state_pre_hook(load_exported)


def load_resume_state(accelerator, ckpt: Path) -> None:
    """Weights, optimizer, scheduler and RNG from ``ckpt`` (the weights from the export when the resume
    state does not hold them; see ``register_weights_in_export``)."""
    kwargs = {}
    if json.loads((ckpt / "trainer_state.json").read_text()).get("weights_in_export"):
        kwargs["strict"] = False  # the resume state holds only what the export does not
    accelerator.load_state(str(ckpt / STATE), **kwargs)


# ----------------------------------------------------------------------------- saving


def save_checkpoint(accelerator, model, tokenizer, output_dir: str, step: int, training_args: dict,
                    save_total_limit: int | None = None, submodule: str | None = None,
                    extra_files: dict[str, str] | None = None, save_state_limit: int = 1,
                    frozen_source: str | None = None) -> Path:
    """Write ``output_dir/checkpoint-{step}``; every process must call it.

    ``model`` is the prepared model. With ``submodule`` (e.g. "lm"), the Hugging Face folder is that
    attribute of the unwrapped model, saved from the matching keys of the full state dict, which
    ``accelerator.get_state_dict`` gathers on the main process even under ZeRO-3. ``extra_files``
    are written beside it (name -> text). Only the newest ``save_state_limit`` checkpoints keep their
    resume state (0: all); only the newest ``save_total_limit`` checkpoints are kept at all. Under
    DeepSpeed, the frozen parameters are exported from ``frozen_source`` (the starting checkpoint), exactly
    (``restore_frozen``). With node-local folders (``prepare_output_dir``) each node's first process writes
    its folder the same way: the export (DDP: every process holds the whole state dict), the optimizer and
    scheduler (accelerate's ``save_on_each_node``) and its node's processes' RNG states.
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = final.with_name(final.name + ".tmp")
    writer = folder_writer(accelerator)  # the run's first process, or each node's with node-local folders
    if writer and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / STATE))
    state = accelerator.get_state_dict(model)
    # Every process's part of the resume state (its RNG, its optimizer shard) is on disk before the
    # writer of each folder completes it and renames it.
    accelerator.wait_for_everyone()
    hf_model = accelerator.unwrap_model(model)
    if submodule is not None:
        hf_model = getattr(hf_model, submodule)
        prefix = submodule + "."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} if state is not None else None
    if writer:
        if accelerator.state.deepspeed_plugin is not None:
            restore_frozen(state, hf_model, frozen_source)
        if not accelerator.is_main_process:
            # transformers writes an export on global rank 0 only (``should_save_on_this_rank``); a node-local
            # folder's writer on another node needs its own copy to resume from
            hf_model.should_save_on_this_rank = lambda is_main_process: is_main_process
        try:
            hf_model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        finally:
            hf_model.__dict__.pop("should_save_on_this_rank", None)
        tokenizer.save_pretrained(tmp)
        (tmp / "training_args.json").write_text(json.dumps(training_args, indent=2))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        ranks = node_ranks(accelerator) if accelerator.project_configuration.save_on_each_node \
            else list(range(accelerator.num_processes))
        trainer_state = {"step": step, "num_processes": accelerator.num_processes, "ranks": ranks,
                         "weights_in_export": accelerator.state.deepspeed_plugin is None}
        match_file_modes(tmp, pattern="**/*.safetensors")  # written 0600 by safetensors: as the files beside them
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state))  # last: marks the folder complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        checkpoints = sorted_checkpoints(output_dir)
        if save_state_limit:
            for old in checkpoints[:-save_state_limit]:
                shutil.rmtree(old / STATE, ignore_errors=True)
        if save_total_limit:
            for old in checkpoints[:-save_total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
