"""The models a call names: resolving folders and hub ids, their labels in the results, loading them."""

from __future__ import annotations

import gc
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from evaluation import STEP_RE, EvalError

if TYPE_CHECKING:  # the argument dataclass of eval_agreement.py
    from eval_agreement import Arguments


def looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name)) and not name.startswith((".", "/"))


def resolve_models(args: Arguments) -> list[dict]:
    """[{label, source, role}] in the order given; every problem is reported at once, before any loading.

    A label is the folder's name, extended with its parents' names until all labels are distinct.
    """
    entries, problems = [], []
    for role, names in (("checkpoint", args.models), ("baseline", args.baseline)):
        for name in names:
            if os.path.isdir(name):
                if not os.path.isfile(os.path.join(name, "config.json")):
                    problems.append(f"{name}: folder has no config.json (not a save_pretrained model folder)")
                entries.append({"source": os.path.abspath(name), "role": role, "local": True})
            elif role == "baseline" and looks_like_hub_id(name):
                entries.append({"source": name, "role": role, "local": False})
            else:
                what = "checkpoint folder" if role == "checkpoint" else "model folder (nor a hub id org/name)"
                problems.append(f"{name}: no such {what}")
    if problems:
        total = len(args.models) + len(args.baseline)
        raise EvalError(f"{len(problems)} of {total} models cannot be used:\n  " + "\n  ".join(problems))
    assign_labels(entries)
    return entries


def assign_labels(entries: list[dict], taken: dict[str, str] | None = None) -> None:
    """Set each entry's ``label``: the folder's name, with its run folder's for a checkpoint-like name
    (``run1/checkpoint-200``: two runs' checkpoints never look alike), extended with further parents' names
    until all labels are distinct, also from the labels in ``taken`` ({label: source}, kept as they are)."""
    taken = taken or {}
    parts = [Path(e["source"]).parts if e["local"] else tuple(e["source"].split("/")) for e in entries]
    depth = [min(2 if STEP_RE.search(p[-1]) else 1, len(p)) for p in parts]
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clash = [i for i, lab in enumerate(labels) if labels.count(lab) > 1 or lab in taken]
        if not clash:
            break
        if all(depth[i] >= len(parts[i]) for i in clash):
            raise EvalError(f"the same model is given twice: {', '.join(sorted({labels[i] for i in clash}))}")
        for i in clash:
            depth[i] = min(depth[i] + 1, len(parts[i]))
    for e, label in zip(entries, labels):
        e["label"] = label


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def pick_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, spec)


def load_model(entry: dict, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(entry["source"])
        model = AutoModelForCausalLM.from_pretrained(entry["source"], dtype=dtype)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalError(f"{entry['source']}: cannot load a causal LM with its tokenizer ({first})") from None
    if tokenizer.pad_token is None:  # batching needs one; the masks keep it out of every number
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model.to(device).eval(), tokenizer


def free_memory(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: cannot read the {what} ({e})") from None


def num_layers_of(folder: str) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder).get_text_config().num_hidden_layers


def num_layers_of_model(model) -> int:
    return model.config.get_text_config().num_hidden_layers
