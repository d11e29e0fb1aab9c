"""Checkpoints shared by the trainers: a ``save_pretrained`` folder plus the state to resume from.

``checkpoint-{step}/`` holds the model (safetensors, config, tokenizer), ``training_args.json``,
``trainer_state.json`` (the step) and ``accelerate_state/`` (weights, optimizer, scheduler, RNG of
every process, as ``Accelerator.save_state`` writes them). It is written as ``checkpoint-{step}.tmp``
and renamed once complete, so a crash never leaves a folder that looks finished.
"""

import json
import os
import re
import shutil
from pathlib import Path


def sorted_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoint-{step} folders, oldest first (the .tmp ones of a crashed save are ignored)."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def find_checkpoint(spec: str, output_dir: str) -> tuple[Path, int]:
    """Resolve ``--resume_from_checkpoint`` ('latest' or a folder) to (folder, step)."""
    ckpt = Path(spec)
    if spec == "latest":
        found = sorted_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint-* in {output_dir}")
        ckpt = found[-1]
    if not (ckpt / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no trainer_state.json)")
    return ckpt, json.loads((ckpt / "trainer_state.json").read_text())["step"]


def save_checkpoint(accelerator, model, tokenizer, output_dir: str, step: int, training_args: dict,
                    save_total_limit: int | None = None, submodule: str | None = None,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write ``output_dir/checkpoint-{step}``; every process must call it.

    ``model`` is the prepared model. With ``submodule`` (e.g. "lm"), the Hugging Face folder is that
    attribute of the unwrapped model, saved from the matching keys of the full state dict, which
    ``accelerator.get_state_dict`` gathers on the main process even under ZeRO-3. ``extra_files``
    are written beside it (name -> text).
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "accelerate_state"))
    state = accelerator.get_state_dict(model)
    hf_model = accelerator.unwrap_model(model)
    if submodule is not None:
        hf_model = getattr(hf_model, submodule)
        prefix = submodule + "."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} if state is not None else None
    if accelerator.is_main_process:
        hf_model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "training_args.json").write_text(json.dumps(training_args, indent=2))
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if save_total_limit:
            for old in sorted_checkpoints(output_dir)[:-save_total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
