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
    "joint_forward", "pack_length", "profile_steps", "sdpa_backends",
}
STATE = "accelerate_state"


# ----------------------------------------------------------------------------- finding checkpoints


def sorted_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoint-{step} folders (renamed, with trainer_state.json), oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*")
             if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def missing_resume_files(ckpt: Path) -> list[str]:
    """What the checkpoint's resume state lacks (empty: it can be resumed from)."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    if not (ckpt / STATE).is_dir():
        return [f"{STATE}/ (only the newest --save_state_limit checkpoints keep it)"]
    world = state.get("num_processes", 1)
    missing = [f"{STATE}/random_states_{i}.pkl" for i in range(world)
               if not (ckpt / STATE / f"random_states_{i}.pkl").is_file()]
    if state.get("weights_in_export") and not any(ckpt.glob("model*.safetensors")):
        missing.append("model.safetensors (the weights to resume from)")
    return missing


def find_checkpoint(spec: str, output_dir: str) -> tuple[Path, int]:
    """Resolve ``--resume_from_checkpoint`` ('latest' or a folder) to (folder, step).

    'latest' is the newest checkpoint whose resume state is complete; a folder given by name must be
    complete too, or the error says what it lacks."""
    if spec == "latest":
        resumable = [c for c in sorted_checkpoints(output_dir) if not missing_resume_files(c)]
        if not resumable:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint with a complete resume state "
                                    f"in {output_dir}")
        ckpt = resumable[-1]
    else:
        ckpt = Path(spec)
        if not (ckpt / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no trainer_state.json)")
        missing = missing_resume_files(ckpt)
        if missing:
            raise FileNotFoundError(f"{ckpt} cannot be resumed from: it lacks {', '.join(missing)}")
    return ckpt, json.loads((ckpt / "trainer_state.json").read_text())["step"]


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
    loading anything, on every process."""
    lock = RunLock(output_dir).refusal()
    if lock:
        return lock
    found = [p.name for p in Path(output_dir).glob("checkpoint-*")]
    if found and not resume and not overwrite:
        names = ", ".join(sorted(found, key=lambda n: int(re.sub(r"\D", "", n) or 0))[:5])
        return (f"{output_dir} already holds {len(found)} checkpoint(s) ({names}{', ...' if len(found) > 5 else ''}): "
                "pass --resume_from_checkpoint latest to continue that run, or --overwrite_output_dir to start "
                "over (its checkpoints and logs are removed first)")
    return None


def claim_output_dir(accelerator, output_dir: str, overwrite: bool, resume_step: int | None) -> RunLock:
    """Take the folder for this run (every process calls it; the main process acts): the lock, then
    either clear the folder of an earlier run (``overwrite``) or, on resume, drop the log records after
    the resumed step. A refusal reaches every process. Returns the lock; release it when the run ends."""
    from accelerate.utils import broadcast_object_list

    lock = RunLock(output_dir)
    error = [None]
    if accelerator.is_main_process:
        try:
            _claim(lock, output_dir, overwrite, resume_step)
        except FileExistsError as e:
            error = [str(e)]
    if accelerator.num_processes > 1:
        error = broadcast_object_list(error)
    if error[0]:
        raise FileExistsError(error[0])
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


def check_resume(spec: str, output_dir: str, current_args: dict) -> tuple[Path, int]:
    """(checkpoint, step) to resume from, after checking that this run's arguments are the checkpoint's
    (``resume_argument_changes``): a refused change raises ValueError naming each argument and both values."""
    ckpt, step = find_checkpoint(spec, output_dir)
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
    (``restore_frozen``).
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / STATE))
    state = accelerator.get_state_dict(model)
    # Every process's part of the resume state (its RNG, its optimizer shard) is on disk before the
    # main process completes the folder and renames it.
    accelerator.wait_for_everyone()
    hf_model = accelerator.unwrap_model(model)
    if submodule is not None:
        hf_model = getattr(hf_model, submodule)
        prefix = submodule + "."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} if state is not None else None
    if accelerator.is_main_process:
        if accelerator.state.deepspeed_plugin is not None:
            restore_frozen(state, hf_model, frozen_source)
        hf_model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "training_args.json").write_text(json.dumps(training_args, indent=2))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        trainer_state = {"step": step, "num_processes": accelerator.num_processes,
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
