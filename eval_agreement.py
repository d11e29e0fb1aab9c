"""Evaluate checkpoints on paired English/Korean multiple-choice tasks through lm-eval, and measure
per layer how well Korean and English sentence representations align.

For every model and every task pair (default: koen_arc_challenge_en / koen_arc_challenge_ko, tag koen_arc in
tasks/; a pair may also name lm-eval's built-in tasks):
accuracy in each language (``acc``: argmax of the per-choice log-likelihoods; ``acc_norm``: argmax
of log-likelihood / number of characters of the choice), agreement (share of items with the same
predicted choice in both languages), Cohen's kappa of the two predictions, the 2x2 table of
correctness (both right / only EN right / only KO right / both wrong) and the agreement among the
items answered right in English. The log-likelihoods come from lm-eval (``simple_evaluate`` with
``log_samples``); this script only reads them, joins the two languages by document id and counts.
On a parallel file (--parallel_file), on a seeded sample of --max_pairs pairs over the whole file,
stratified by its ``source`` field (common/data.py ``sample_indices``, as train_contrastive.py samples its
validation pairs: the same file, n and seed give the same pairs):

- "representation": the sentence vectors as the model's run pooled them. A checkpoint of
  train_contrastive.py is pooled from its ``training_args.json`` and ``layer_weights.json``: the layer or
  the mixture of layers with the trained weights and per-layer normalisation, mean or last-token pooling,
  BOS handling, max length, the validation batching and padding, bf16 autocast when it trained with
  --bf16, float32 weights; the English side through the frozen starting model for a frozen-English run
  (--english_model overrides). So its metrics equal the training log's eval at that checkpoint's step
  (overall, per source, the mixture's layer shares). A stage-2/3 checkpoint is pooled as the stage-1
  checkpoint it started from (English shared). A model no run trained (a baseline) is pooled as the runs
  it is compared with at their step 0 (same layers, uniform mixture weights; the checkpoints of the call
  and --pool_like), one "representations" entry per distinct pooling, else by --pooling at --report_layer.
- "layers": for every layer 0..N (0 = embeddings, L = output of decoder layer L, N = the last decoder layer
  BEFORE the final norm, as in training, see common/pooling.py), both languages through the model itself,
  pooled as its run pooled (else by --pooling, --include_bos, --max_seq_length): parallel and random-pair
  cosine, their gap, per-language-centred cosine and its random-pair level, retrieval P@1 ko->en and
  en->ko (definitions: common/metrics.py ``alignment_metrics``; pairs of identical text are neither
  random pairs nor retrieval misses), overall and for every source with at least --min_source_pairs
  sampled pairs.

Before anything is evaluated, the tasks are checked: the two tasks of a pair must hold the same items
(ids, number of choices, gold answers), the English task's documents must not be mostly Hangul and the
Korean task's must be (swapped files are refused), and a task that reads a hub dataset fails at once
with a clear message when the machine is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE and no cached
copy) or the hub cannot be reached.

Commands:
    python eval_agreement.py runs/stage1/checkpoint-200 runs/stage1/checkpoint-400 \\
        --baseline /models/Sheared-LLaMA-1.3B-ShareGPT /models/polyglot-ko-1.3b \\
        --en_data ../shared/data/arc_challenge_en_ko/ai2_arc-ARC-Challenge-test.jsonl \\
        --ko_data ../shared/data/arc_challenge_en_ko/ko_ai2_arc-ARC-Challenge-test.jsonl \\
        --parallel_file data/parallel/validation.jsonl --output_dir runs/eval
    python eval_agreement.py CKPT --en_data EN.jsonl --ko_data KO.jsonl --limit 50 --output_dir /tmp/quick
    python eval_agreement.py CKPT --pair my_en_task:my_ko_task --include_path my_tasks/ --output_dir DIR
    python eval_agreement.py CKPT --skip_tasks --parallel_file pairs.jsonl --output_dir DIR   # layers only
    python eval_agreement.py eval.yaml --limit 5     # settings from a config file, one of them overridden
    python eval_agreement.py --watch runs/stage1 --skip_tasks --parallel_file VAL.jsonl --max_pairs 1000 \
        --seed 42 --output_dir runs/eval_stage1    # follow a training run: each new checkpoint, once
    python eval_agreement.py CKPT --english_model self ...   # a frozen run's checkpoint encoding English itself
    lm_eval --model hf --model_args pretrained=CKPT --include_path tasks \\
        --tasks koen_arc   # same YAMLs, but their hub datasets: for local files see the YAMLs' comments

Checkpoints come first (positional) or through ``--models``; ``--help`` documents every option. A
.json/.yaml config file may come first instead: its settings are the defaults, and the flags after it
override them (common/args.py).

Writes to --output_dir: results.json ``{model: {"source", "role", pair: {...}, "representation": {metrics...,
"by_source", "layer_share", "pooled": {how}, "pairs": {sample}}, "trained_layer": L, "layers": [...],
"best_layer": L, "layers_by_source": {source: [...]}, "layers_pooled", "layer_pairs": {"sampled",
"rows_in_file", "seed", "by_source"}}}`` (models labelled ``run/checkpoint-N`` for a checkpoint, so two runs'
checkpoints never look alike), results.md (one table, models in the order given, with the representation
as trained; the per-layer and per-source metrics at --report_layer, by default the trained layer),
``<model>/<pair>.items.jsonl`` (one line per item: id, gold, pred_en, pred_ko, pred_norm_en, pred_norm_ko,
loglik_en, loglik_ko), eval_args.json, and PNG plots (accuracy/agreement against checkpoint step when the
names carry one; retrieval per layer).
"""

import gc
import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from common.args import parse_arguments
from common.cli import run_main
from common.data import DataError, iter_parallel_jsonl, sample_indices, text_key
from common.metrics import alignment_metrics
from common.pooling import LayerMixture, layer_states, pool, pooled_layers, pooling_mask

logger = logging.getLogger("eval_agreement")
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DEFAULT_PAIR = "koen_arc_challenge_en:koen_arc_challenge_ko"


class EvalError(ValueError):
    """Bad input (files, checkpoints, task pairs): the message says what and where. A ``ValueError``, so
    ``common.cli.run_main`` prints it as one line with exit status 2."""


@dataclass
class Arguments:
    models: list[str] = field(default_factory=list, metadata={"help": (
        "Checkpoint folders (save_pretrained: config, weights, tokenizer). Usually given positionally, before "
        "any option: `eval_agreement.py CKPT [CKPT ...] --output_dir DIR`."
    )})
    baseline: list[str] = field(default_factory=list, metadata={"help": (
        "Baseline models: Hugging Face causal LM folders (Llama, GPT-NeoX, ...) or hub ids where the machine "
        "is online. Listed after the checkpoints."
    )})
    output_dir: str = field(default="runs/eval", metadata={"help": (
        "Where results.json, results.md, the per-item files and the plots go."
    )})
    # tasks
    pair: list[str] = field(default_factory=lambda: [DEFAULT_PAIR], metadata={"help": (
        "Paired tasks 'EN_TASK:KO_TASK' (lm-eval multiple_choice tasks whose docs share an id field), from the "
        "project's tasks/, --include_path or lm-eval's built-in tasks. Several allowed."
    )})
    include_path: list[str] = field(default_factory=list, metadata={"help": (
        "Extra folders of lm-eval task YAMLs (the project's tasks/ is always included)."
    )})
    en_data: str | None = field(default=None, metadata={"help": (
        "ARC-format JSONL (id, question, choices {text, label}, answerKey) that replaces the English task's "
        "dataset. Unset: the dataset named in the YAML (hub: online machines only)."
    )})
    ko_data: str | None = field(default=None, metadata={"help": "Korean counterpart of --en_data, joined to it by id."})
    id_field: str = field(default="id", metadata={"help": (
        "Document field that joins the English and Korean items; 'doc_id' joins by position instead."
    )})
    limit: int | None = field(default=None, metadata={"help": (
        "Evaluate only the first N English items (and the Korean items with the same ids). "
        "The whole files are still checked to pair up."
    )})
    batch_size: int = field(default=32, metadata={"help": (
        "Log-likelihood requests per forward pass (lm-eval sorts them by length, so padding is small). On CPU, "
        "8 was faster than 32 (bench/bench_eval.py)."
    )})
    max_length: int | None = field(default=None, metadata={"help": (
        "Context window for lm-eval (longer requests are cut from the left). "
        "Unset: the model's max_position_embeddings."
    )})
    skip_tasks: bool = field(default=False, metadata={"help": "Skip the paired tasks (representation metrics only)."})
    # representation
    parallel_file: str | None = field(default=None, metadata={"help": (
        "Parallel JSONL {\"ko\", \"en\"} for the per-layer alignment metrics. Unset: no representation metrics."
    )})
    max_pairs: int = field(default=1000, metadata={"help": (
        "Use a seeded random sample of N pairs over the whole --parallel_file (all of them when it has fewer), "
        "stratified by the 'source' field: proportional shares, every source at least one pair when N allows. "
        "Retrieval is among these N (chance about 1/N); the sample depends only on the file, N and --seed."
    )})
    min_source_pairs: int = field(default=50, metadata={"help": (
        "When --parallel_file has several sources, each source with at least this many sampled pairs also gets "
        "its own per-layer metrics (results.json 'layers_by_source'; retrieval among that source's pairs)."
    )})
    pooling: str = field(default="mean", metadata={"help": (
        "Pooling of the models no stage-1 run trained (baselines): 'mean' over real tokens, or 'last' real "
        "token. A checkpoint of a run is pooled as it was trained (its training_args.json), whatever this says."
    )})
    include_bos: bool = field(default=False, metadata={"help": (
        "Include BOS in mean pooling, for the models no stage-1 run trained (excluded by default, as in training)."
    )})
    max_seq_length: int = field(default=128, metadata={"help": (
        "Parallel sentences are truncated to this many tokens (BOS included), for the models no stage-1 run "
        "trained (a run's checkpoint: its own --max_seq_length)."
    )})
    rep_batch_size: int = field(default=64, metadata={"help": (
        "Sentences per forward pass for the per-layer metrics (the representation as trained uses the run's "
        "--per_device_train_batch_size, as its validation did)."
    )})
    report_layer: str = field(default="trained", metadata={"help": (
        "Layer whose per-layer gap and retrieval go into results.md: 'trained' (a run's pooled layer; for a "
        "mixture the layer of largest weight; for a baseline the trained layer of the runs it is pooled like, "
        "else the middle one), an integer, 'middle' (N // 2) or 'best' (each model's best layer)."
    )})
    english_model: str | None = field(default=None, metadata={"help": (
        "Who encodes the English side of each checkpoint's \"representation\". Unset: as in training, i.e. the "
        "starting model named in training_args.json for a frozen-English run (the research's frozen-vs-shared "
        "cosine), the checkpoint itself for a shared one. 'self': the checkpoint itself. A folder or hub id: "
        "that model, for every checkpoint (baselines always encode both languages themselves)."
    )})
    pool_like: list[str] = field(default_factory=list, metadata={"help": (
        "Run folders or checkpoints whose pooling the baselines' \"representation\" follows, as the run's "
        "step 0 (same layer or layers, with uniform mixture weights; pooling, BOS, max length, precision). "
        "The checkpoints evaluated in the same call count too. Without either: --pooling at --report_layer."
    )})
    # following a run
    watch: list[str] = field(default_factory=list, metadata={"help": (
        "Run folders (output_dir of a trainer, or a folder of such runs) to follow: every complete "
        "checkpoint-{step} is evaluated once, as it appears (a .tmp folder is still being written), and "
        "results.json in --output_dir is extended; a second start resumes where the first stopped. Returns "
        "when no watched run is training any more (no live .lock) and every checkpoint is evaluated."
    )})
    watch_interval: float = field(default=60.0, metadata={"help": "Seconds between two looks at the --watch folders."})
    watch_timeout: float | None = field(default=None, metadata={"help": (
        "Stop watching after this many seconds without a new checkpoint, even when a run still holds its lock."
    )})
    # runtime
    device: str = field(default="auto", metadata={"help": (
        "'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."
    )})
    dtype: str = field(default="auto", metadata={"help": (
        "'auto' (bfloat16 on CUDA with bf16 support, else float32), 'float32', 'bfloat16' or 'float16'."
    )})
    seed: int = field(default=1234, metadata={"help": (
        "Seed handed to lm-eval, and of the sample of --parallel_file pairs (the metrics themselves are "
        "deterministic)."
    )})
    plots: bool = field(default=True, metadata={"help": "Write PNG plots (needs matplotlib); --no_plots skips them."})


# ----------------------------------------------------------------------------- arguments


USAGE = "eval_agreement.py CKPT [CKPT ...] [--baseline MODEL ...] --output_dir DIR [options]"
DESCRIPTION = "EN/KO agreement on paired lm-eval tasks and per-layer alignment metrics (see the module docstring)."


def parse_args(argv: list[str] | None = None) -> Arguments:
    """Leading non-option arguments are checkpoints; a first .json/.yaml argument is a config file whose
    settings the flags after it override (``common.args.parse_arguments``)."""
    try:
        return parse_arguments(Arguments, argv, positional="models", usage=USAGE, description=DESCRIPTION)
    except (FileNotFoundError, ValueError) as e:  # a missing or malformed config file
        raise EvalError(str(e)) from e


def check_args(args: Arguments) -> None:
    if not args.models and not args.baseline and not args.watch:
        raise EvalError("no model given: eval_agreement.py CKPT [CKPT ...] [--baseline MODEL ...] --output_dir DIR "
                        "(or --watch RUN_DIR)")
    if args.skip_tasks and not args.parallel_file:
        raise EvalError("--skip_tasks without --parallel_file leaves nothing to evaluate")
    if args.pooling not in ("mean", "last"):
        raise EvalError(f"--pooling must be 'mean' or 'last', got {args.pooling!r}")
    if args.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise EvalError(f"--dtype must be auto, float32, bfloat16 or float16, got {args.dtype!r}")
    if not (args.report_layer in ("trained", "middle", "best") or re.fullmatch(r"\d+", args.report_layer)):
        raise EvalError(f"--report_layer must be 'trained', an integer, 'middle' or 'best', got {args.report_layer!r}")
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be >= 1, got {args.limit}")
    if args.max_pairs < 2:
        raise EvalError(f"--max_pairs must be >= 2 (retrieval needs candidates), got {args.max_pairs}")
    if args.min_source_pairs < 2:
        raise EvalError(f"--min_source_pairs must be >= 2 (retrieval needs candidates), got {args.min_source_pairs}")
    if args.seed < 0:
        raise EvalError(f"--seed must be >= 0, got {args.seed}")
    if (args.en_data is None) != (args.ko_data is None):
        raise EvalError("give both --en_data and --ko_data, or neither")
    if args.en_data and not args.skip_tasks and len(args.pair) != 1:
        raise EvalError("--en_data/--ko_data replace the data of a single pair; for several pairs, "
                        "put the data files in the task YAMLs (--include_path)")
    for name in ("en_data", "ko_data", "parallel_file"):
        path = getattr(args, name)
        if path and not os.path.isfile(path):
            raise EvalError(f"--{name} {path}: no such file")
    for p in args.include_path:
        if not os.path.isdir(p):
            raise EvalError(f"--include_path {p}: no such folder")
    for name in ("watch", "pool_like"):
        for p in getattr(args, name):
            if not os.path.isdir(p):
                raise EvalError(f"--{name} {p}: no such folder")
    if args.english_model not in (None, "self") and not (os.path.isdir(args.english_model)
                                                        or looks_like_hub_id(args.english_model)):
        raise EvalError(f"--english_model {args.english_model}: no such model folder (nor a hub id org/name)")
    if args.watch_interval <= 0:
        raise EvalError(f"--watch_interval must be > 0, got {args.watch_interval}")
    for p in args.pair:
        if p.count(":") != 1 or not all(p.split(":")):
            raise EvalError(f"--pair must be EN_TASK:KO_TASK, got {p!r}")


# ----------------------------------------------------------------------------- models


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


# ----------------------------------------------------------------------------- how a run pooled


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: cannot read the {what} ({e})") from None


def num_layers_of(folder: str) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder).get_text_config().num_hidden_layers


def trained_pooling(folder: str, max_depth: int = 8) -> dict | None:
    """How the stage-1 run behind the model ``folder`` pooled its sentence vectors; None when no stage-1 run
    trained it (a base model: no training_args.json, or a lineage that leaves the local disk).

    From the checkpoint's ``training_args.json`` (train_contrastive.py's arguments) and, for a mixture,
    ``layer_weights.json`` (the trained weights, at the run's final temperature): the layers (``pool_layer``,
    unset = N // 2; or the mixture's layers), the weights, per-layer normalisation (``mix_normalize``),
    ``pooling``, BOS handling, ``max_seq_length``, the validation batch size (``per_device_train_batch_size``),
    bf16 autocast, and the English side: ``shared``, or ``frozen`` with the starting model
    (``model_name_or_path``) as its encoder. A stage-2/3 checkpoint (training_args.json without these settings)
    is pooled as the stage-1 checkpoint it descends from (its ``model_name_or_path``, followed up to
    ``max_depth`` times), with the English side shared: its own frozen copy is gone."""
    path, descendants = Path(folder), []
    for _ in range(max_depth):
        if not (path / "training_args.json").is_file():
            return None
        targs = read_json(path / "training_args.json", "training arguments")
        if "pool_layer" in targs or "mix_layers" in targs:
            break
        start = targs.get("model_name_or_path")
        if not start or not os.path.isdir(start):
            if descendants or start:
                logger.warning("%s: the model it started from (%s) is not a local folder; no stage-1 pooling known",
                               folder, start)
            return None
        descendants.append(str(path))
        path = Path(start)
    else:
        return None
    if targs.get("mix_layers"):
        weights_file = path / "layer_weights.json"
        if not weights_file.is_file():
            raise EvalError(f"{path}: trained with --mix_layers {targs['mix_layers']} but has no layer_weights.json")
        saved = read_json(weights_file, "layer weights")
        layers = sorted(int(k) for k in saved)
        weights = [float(saved[str(layer)]) for layer in layers]
    else:
        layer = targs.get("pool_layer")
        layers, weights = [num_layers_of(str(path)) // 2 if layer is None else int(layer)], None
    frozen = targs.get("english_encoder") == "frozen" and not descendants
    return {
        "layers": layers, "weights": weights, "normalize": bool(targs.get("mix_normalize", True)),
        "pooling": targs.get("pooling", "mean"), "include_bos": bool(targs.get("include_bos", False)),
        "max_seq_length": int(targs.get("max_seq_length", 128)),
        "batch_size": int(targs.get("per_device_train_batch_size", 32)), "bf16": bool(targs.get("bf16", False)),
        "english_encoder": "frozen" if frozen else "shared",
        "english_model": targs.get("model_name_or_path") if frozen else None,
        "trained_by": str(path.resolve()), "descendant_of_run": bool(descendants),
    }


def flags_pooling(args: Arguments) -> dict:
    """The pooling of a model no run trained, from --pooling, --include_bos, --max_seq_length at an integer
    --report_layer (else the model's middle layer: ``layers`` None)."""
    layer = int(args.report_layer) if re.fullmatch(r"\d+", args.report_layer) else None
    return {"layers": None if layer is None else [layer], "weights": None, "normalize": True, "pooling": args.pooling,
            "include_bos": args.include_bos, "max_seq_length": args.max_seq_length, "batch_size": args.rep_batch_size,
            "bf16": False, "english_encoder": "shared", "english_model": None, "trained_by": None}


def as_step_zero(spec: dict) -> dict:
    """A run's pooling as it was at step 0, for a baseline: the same layers with uniform mixture weights, its
    pooling, BOS handling, max length and precision, English through the model itself."""
    k = len(spec["layers"])
    return {**spec, "weights": [1.0 / k] * k if spec["weights"] is not None else None, "english_encoder": "shared",
            "english_model": None, "like_run": spec["trained_by"], "trained_by": None, "descendant_of_run": False}


def pooling_key(spec: dict) -> tuple:
    """What makes two poolings the same representation (mixture weights aside): layers, mean/last, BOS, max
    length, and for a mixture the per-layer normalisation."""
    layers = tuple(spec["layers"] or ())
    return (layers, spec["pooling"], bool(spec["include_bos"]), int(spec["max_seq_length"]),
            bool(spec["normalize"]) if len(layers) > 1 else None)


def describe_pooling(spec: dict) -> str:
    """'layer 17, mean' / 'mix 1-24 (top 17: 0.081), mean, BOS' / '..., EN frozen' for the tables."""
    layers, weights = spec["layers"], spec.get("weights")
    if weights is not None and len(layers) > 1:
        contiguous = layers == list(range(layers[0], layers[-1] + 1))
        span = f"{layers[0]}-{layers[-1]}" if contiguous else ",".join(map(str, layers))
        top = max(range(len(layers)), key=weights.__getitem__)
        text = f"mix {span} (top {layers[top]}: {weights[top]:.3f})"
    else:
        text = f"layer {layers[0]}"
    text += f", {spec['pooling']}" + (", BOS" if spec["include_bos"] else "")
    english = {"frozen": "frozen start", "other model": "other model", "self": "through itself"}
    if spec.get("english_encoder") in english:
        text += ", EN " + english[spec["english_encoder"]]
    return text


def top_layer(spec: dict) -> int:
    """The pooled layer, or for a mixture the layer of largest weight (ties: the first)."""
    if spec["weights"] is None:
        return spec["layers"][0]
    return spec["layers"][max(range(len(spec["layers"])), key=spec["weights"].__getitem__)]


def run_checkpoints(folder: str) -> list[Path]:
    """The complete checkpoints of a run folder (``common.checkpoint.sorted_checkpoints``: renamed, with
    trainer_state.json), or of the runs directly inside it; oldest first within a run."""
    from common.checkpoint import sorted_checkpoints

    found = sorted_checkpoints(folder)
    if found:
        return found
    return [c for sub in sorted(Path(folder).iterdir()) if sub.is_dir() for c in sorted_checkpoints(str(sub))]


def pool_like_specs(args: Arguments, entries: list[dict]) -> list[dict]:
    """The distinct run poolings that baselines follow (as at step 0): those of --pool_like (a checkpoint, or a
    run folder's newest checkpoint, or each run's in a folder of runs) and of the checkpoints in ``entries``."""
    specs = []
    sources = []
    for folder in args.pool_like:
        if (Path(folder) / "training_args.json").is_file():
            sources.append(folder)
        else:
            found = run_checkpoints(folder)
            if not found:
                raise EvalError(f"--pool_like {folder}: neither a checkpoint nor a run folder with a complete "
                                "checkpoint")
            newest: dict[Path, Path] = {}
            for c in found:
                newest[c.parent] = c
            sources += [str(c) for c in newest.values()]
    sources += [e["source"] for e in entries if e["role"] == "checkpoint" and e["local"]]
    seen = set()
    for source in sources:
        spec = trained_pooling(source)
        if spec is not None and pooling_key(spec) not in seen:
            seen.add(pooling_key(spec))
            specs.append(as_step_zero(spec))
    return specs


# ----------------------------------------------------------------------------- tasks


def absolutise_data_files(cfg: dict, yaml_path: str | None) -> None:
    """lm-eval resolves relative ``data_files`` against the current directory; here a relative path is
    taken from the YAML's folder when the file is there, else from the current directory (what the
    lm_eval command line does), and made absolute so that nothing depends on where we run."""
    kwargs = cfg.get("dataset_kwargs") or {}
    files = kwargs.get("data_files")
    if not files:
        return

    def fix(p: str) -> str:
        if os.path.isabs(p) or "://" in p:
            return p
        candidates = ([os.path.join(os.path.dirname(yaml_path), p)] if yaml_path else []) + [os.path.abspath(p)]
        for c in candidates:
            if os.path.exists(c):
                return os.path.abspath(c)
        raise EvalError(f"task {cfg.get('task')}: data file {p!r} not found (looked at {', '.join(candidates)})")

    if isinstance(files, str):
        kwargs["data_files"] = fix(files)
    elif isinstance(files, list):
        kwargs["data_files"] = [fix(p) for p in files]
    elif isinstance(files, dict):
        kwargs["data_files"] = {k: ([fix(p) for p in v] if isinstance(v, list) else fix(v)) for k, v in files.items()}


def task_config(task_manager, name: str, data_file: str | None) -> dict | str:
    """The task's YAML config as a dict (includes and !function resolved), its data files made absolute,
    its dataset replaced by ``data_file`` (an ARC-format JSONL, split 'test') when given."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager.task_index.get(name)
    if entry is None:
        known = ", ".join(task_manager.all_subtasks[:20]) or "none"
        folders = [str(TASKS_DIR)] + [str(p) for p in task_manager.include_path[1:]]
        raise EvalError(f"unknown task {name!r}; tasks found in {folders}: {known}")
    if entry.yaml_path is None:
        if data_file:
            raise EvalError(f"task {name} has no YAML config, so its data cannot be replaced")
        return name
    cfg = load_yaml(str(entry.yaml_path), resolve_func=True)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    if cfg.get("output_type") != "multiple_choice":
        raise EvalError(f"task {name} has output_type {cfg.get('output_type')!r}; pairs need multiple_choice tasks")
    if data_file:
        cfg.update(dataset_path="json", dataset_name=None,
                   dataset_kwargs={"data_files": {"test": os.path.abspath(data_file)}},
                   test_split="test", training_split=None, validation_split=None, fewshot_split=None)
        if cfg.get("num_fewshot"):
            raise EvalError(f"task {name} asks for {cfg['num_fewshot']}-shot prompts, which need a training split "
                            "that --en_data/--ko_data do not give")
    else:
        absolutise_data_files(cfg, str(entry.yaml_path))
    return cfg


# builders of the datasets library that read local files named in data_files, not a hub dataset
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "xml", "sql", "webdataset", "imagefolder",
                  "audiofolder", "videofolder"}
_hub_probe: dict[str, str | None] = {}


def hub_dataset(cfg) -> str | None:
    """The hub dataset a task config reads (its ``dataset_path``), or None when it reads local files."""
    if not isinstance(cfg, dict):  # a task without a YAML config: what it reads is not known here
        return None
    path = cfg.get("dataset_path")
    if not path or path in LOCAL_BUILDERS or os.path.exists(path):
        return None
    return path


def offline_setting() -> str | None:
    """'HF_HUB_OFFLINE=1' (or HF_DATASETS_OFFLINE) when the environment puts the hub libraries offline."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var}={os.environ[var]}"
    return None


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the hub (HF_ENDPOINT, default https://huggingface.co) cannot be reached, or None when it answers.
    One HEAD request with no retry (proxies from the environment apply), asked once per process: the
    libraries would otherwise retry for about half a minute before failing."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if endpoint not in _hub_probe:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            _hub_probe[endpoint] = None
        except urllib.error.HTTPError:  # the server answered, if with an error status: it is reachable
            _hub_probe[endpoint] = None
        except (urllib.error.URLError, OSError, ValueError) as e:
            _hub_probe[endpoint] = f"{endpoint}: {getattr(e, 'reason', None) or e}"
    return _hub_probe[endpoint]


def hub_hint(name: str, cfg) -> str:
    """The hint added to a failure to load task ``name``; raises ``EvalError`` at once when ``cfg`` reads a
    hub dataset and the hub cannot be reached (offline settings leave the local cache to try first)."""
    hub = hub_dataset(cfg)
    if hub is None:
        return ""
    fix = ("pass --en_data/--ko_data (local ARC-format JSONL files), or give the task YAML local data_files "
           "(--include_path)")
    offline = offline_setting()
    if offline:
        return (f" (task {name} reads the hub dataset {hub!r} and {offline} is set, so only a cached copy could "
                f"be read: {fix})")
    why = hub_unreachable()
    if why:
        raise EvalError(f"task {name} reads the hub dataset {hub!r}, but the hub cannot be reached ({why}): {fix}; "
                        "or set HF_DATASETS_OFFLINE=1 to use a cached copy")
    return f" (task {name} reads the hub dataset {hub!r}; {fix} to read local files instead)"


HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7a3\ud7b0-\ud7ff]")


def hangul_share(task, max_docs: int = 300) -> tuple[float | None, int]:
    """(share, number) of the task's evaluation documents that are mostly Hangul: more than half of the letters
    of their question text (``doc_to_text``, the prompt included) and choices are Hangul. At most ``max_docs``
    documents spread evenly over the task are read (rendering the prompts of every document of a large task
    would take seconds); documents without a letter are not counted; the share is None when none has one."""
    docs = task.eval_docs
    m = min(max_docs, len(docs))
    picked = sorted({round(k * (len(docs) - 1) / max(m - 1, 1)) for k in range(m)})
    korean = counted = 0
    for i in picked:
        doc = docs[i]
        text = task.doc_to_text(doc)
        parts = ([text] if isinstance(text, str) else []) + [str(c) for c in task.doc_to_choice(doc)]
        letters = [c for part in parts for c in part if c.isalpha()]
        if letters:
            counted += 1
            korean += 2 * sum(1 for c in letters if HANGUL.match(c)) > len(letters)
    return (korean / counted if counted else None), counted


def check_languages(en_task, ko_task, en_where: str, ko_where: str) -> None:
    """Refuse an English task whose documents are mostly Hangul and a Korean task whose documents are not
    (more than half of its documents mostly Hangul), e.g. --en_data and --ko_data swapped, which lm-eval
    would score without a word."""
    problems = []
    share, n = hangul_share(en_task)
    if share is not None and share > 0.5:
        problems.append(f"{en_where} is the English task, but {share:.1%} of its documents are mostly Hangul "
                        f"(of {n} read)")
    share, n = hangul_share(ko_task)
    if share is not None and share <= 0.5:
        problems.append(f"{ko_where} is the Korean task, but only {share:.1%} of its documents are mostly Hangul "
                        f"(of {n} read)")
    if problems:
        swapped = " (are the English and Korean files swapped?)" if len(problems) == 2 else ""
        raise EvalError("wrong language" + swapped + ":\n  " + "\n  ".join(problems)
                        + "\n  (a document is mostly Hangul when more than half of the letters of its question "
                        "text and choices are Hangul; at most 300 documents spread over the task are read)")


def load_task(task_manager, spec, where: str, hint: str = ""):
    """Build the lm-eval Task (this reads its dataset)."""
    try:
        loaded = task_manager.load([spec])["tasks"]
    except Exception as e:  # datasets / lm-eval wrap the cause in many types; say which task and file
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise EvalError(f"cannot load task {where}: {type(cause).__name__}: {first}{hint}") from None
    return next(iter(loaded.values()))


def task_items(task, id_field: str, where: str) -> list[dict]:
    """[{id, gold, choices}] of the task's evaluation docs, in order."""
    items, missing = [], 0
    for i, doc in enumerate(task.eval_docs):
        if id_field == "doc_id":
            doc_id = i
        elif id_field in doc:
            doc_id = doc[id_field]
        else:
            missing += 1
            continue
        choices = task.doc_to_choice(doc)
        gold = task.doc_to_target(doc)
        if isinstance(gold, str):
            gold = choices.index(gold) if gold in choices else -1
        if isinstance(gold, list) or not 0 <= gold < len(choices):
            raise EvalError(f"{where}: item {doc_id!r} has gold {gold!r}; "
                            f"a single gold index within its {len(choices)} choices is required")
        items.append({"id": doc_id, "gold": int(gold), "choices": list(choices)})
    if missing:
        raise EvalError(f"{where}: {missing} of {missing + len(items)} docs have no field {id_field!r} to join on "
                        "(--id_field doc_id joins by position)")
    return items


def pair_items(en: list[dict], ko: list[dict], en_where: str, ko_where: str, show: int = 5) -> dict:
    """Check that the two tasks hold the same items; return {id: ko position}.
    Errors list counts and first mismatches."""
    problems = []
    for items, where in ((en, en_where), (ko, ko_where)):
        seen, dups = set(), []
        for it in items:
            if it["id"] in seen:
                dups.append(it["id"])
            seen.add(it["id"])
        if dups:
            problems.append(f"{len(dups)} duplicate ids in {where} (first: {dups[:show]})")
    ko_pos = {it["id"]: i for i, it in enumerate(ko)}
    en_ids = {it["id"] for it in en}
    only_en = [it["id"] for it in en if it["id"] not in ko_pos]
    only_ko = [it["id"] for it in ko if it["id"] not in en_ids]
    if only_en:
        problems.append(f"{len(only_en)} ids only in {en_where} (first: {only_en[:show]})")
    if only_ko:
        problems.append(f"{len(only_ko)} ids only in {ko_where} (first: {only_ko[:show]})")
    n_choice, gold = [], []
    for it in en:
        j = ko_pos.get(it["id"])
        if j is None:
            continue
        if len(it["choices"]) != len(ko[j]["choices"]):
            n_choice.append(f"{it['id']}: {len(it['choices'])} vs {len(ko[j]['choices'])}")
        elif it["gold"] != ko[j]["gold"]:
            gold.append(f"{it['id']}: {it['gold']} vs {ko[j]['gold']}")
    if n_choice:
        problems.append(f"{len(n_choice)} ids with a different number of choices (EN vs KO; first: {n_choice[:show]})")
    if gold:
        problems.append(f"{len(gold)} ids with a different gold answer index (EN vs KO; first: {gold[:show]})")
    if problems:
        raise EvalError(f"{en_where} ({len(en)} items) and {ko_where} ({len(ko)} items) do not pair up:\n  "
                        + "\n  ".join(problems))
    return ko_pos


class TaskLookup:
    """Finds tasks in the project's tasks/ and the --include_path folders, and a name not there among lm-eval's
    built-in tasks: their index (about 4 s to build) is made only when a pair names such a task."""

    def __init__(self, include_path: list[str]):
        from lm_eval.tasks import TaskManager

        self.include_path = [str(TASKS_DIR)] + [os.path.abspath(p) for p in include_path]
        self.ours = TaskManager(include_path=self.include_path, include_defaults=False)
        self._with_defaults = None

    @property
    def with_defaults(self):
        """A TaskManager of our folders and lm-eval's built-in tasks."""
        if self._with_defaults is None:
            from lm_eval.tasks import TaskManager

            logger.info("indexing lm-eval's built-in tasks")
            self._with_defaults = TaskManager(include_path=self.include_path, include_defaults=True)
        return self._with_defaults

    def manager_for(self, *names: str):
        """Our TaskManager when it knows every name, else the one with lm-eval's built-in tasks as well."""
        if all(n in self.ours.task_index for n in names):
            return self.ours
        manager = self.with_defaults
        unknown = [n for n in names if n not in manager.task_index]
        if unknown:
            known = ", ".join(self.ours.all_subtasks[:20]) or "none"
            raise EvalError(f"unknown task {unknown[0]!r}: not among lm-eval's built-in tasks, nor in "
                            f"{self.include_path} (tasks there: {known})")
        return manager


def prepare_pairs(args: Arguments) -> list[dict]:
    """Load and cross-check every pair's tasks once, before any model is loaded."""
    lookup = TaskLookup(args.include_path)
    pairs = []
    for spec in args.pair:
        en_name, ko_name = spec.split(":")
        task_manager = lookup.manager_for(en_name, ko_name)
        en_where = f"{en_name} ({args.en_data})" if args.en_data else en_name
        ko_where = f"{ko_name} ({args.ko_data})" if args.ko_data else ko_name
        en_cfg = task_config(task_manager, en_name, args.en_data)
        ko_cfg = task_config(task_manager, ko_name, args.ko_data)
        en_task = load_task(task_manager, en_cfg, en_where, hub_hint(en_name, en_cfg))
        ko_task = load_task(task_manager, ko_cfg, ko_where, hub_hint(ko_name, ko_cfg))
        check_languages(en_task, ko_task, en_where, ko_where)
        en_items = task_items(en_task, args.id_field, en_where)
        ko_items = task_items(ko_task, args.id_field, ko_where)
        ko_pos = pair_items(en_items, ko_items, en_where, ko_where)
        en_idx = list(range(len(en_items)))[: args.limit]
        ko_idx = [ko_pos[en_items[i]["id"]] for i in en_idx]
        pairs.append({
            "name": f"{en_name}__{ko_name}", "en": en_name, "ko": ko_name, "en_task": en_task, "ko_task": ko_task,
            "en_items": en_items, "ko_items": ko_items, "en_idx": en_idx, "ko_idx": ko_idx,
            "task_manager": task_manager, "id_field": args.id_field,
        })
    return pairs


# ----------------------------------------------------------------------------- agreement


def cohen_kappa(a, b) -> float | None:
    """Cohen's kappa of two labelings of the same items: (p_o - p_e) / (1 - p_e), with p_o the observed
    agreement and p_e = sum_k p_a(k) p_b(k) the agreement expected from the two marginals.
    None when p_e = 1 (both always give the same single label: kappa is undefined)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two label lists of the same non-zero length, got {a.size} and {b.size}")
    labels = np.union1d(a, b)
    p_o = float(np.mean(a == b))
    p_e = float(sum(np.mean(a == k) * np.mean(b == k) for k in labels))
    if math.isclose(p_e, 1.0):
        return None
    return (p_o - p_e) / (1 - p_e)


def agreement_stats(gold, pred_en, pred_ko) -> dict:
    """Accuracy per language, agreement of the predicted choices, Cohen's kappa, the 2x2 table of
    correctness and the agreement among the items answered right in English."""
    gold, pred_en, pred_ko = (np.asarray(x) for x in (gold, pred_en, pred_ko))
    right_en, right_ko = pred_en == gold, pred_ko == gold
    n_en_right = int(right_en.sum())
    return {
        "n": int(gold.size),
        "acc_en": float(right_en.mean()),
        "acc_ko": float(right_ko.mean()),
        "agreement": float(np.mean(pred_en == pred_ko)),
        "kappa": cohen_kappa(pred_en, pred_ko),
        "table": {
            "both_right": int((right_en & right_ko).sum()),
            "only_en_right": int((right_en & ~right_ko).sum()),
            "only_ko_right": int((~right_en & right_ko).sum()),
            "both_wrong": int((~right_en & ~right_ko).sum()),
        },
        "agreement_en_right": float(np.mean(pred_ko[right_en] == pred_en[right_en])) if n_en_right else None,
    }


def predictions(lls: list[float], choices: list[str]) -> tuple[int, int]:
    """(acc prediction, acc_norm prediction), exactly as lm-eval's multiple_choice: argmax of the
    log-likelihoods, and of log-likelihood / len(choice) in characters; ties go to the first choice."""
    lls_arr = np.asarray(lls, dtype=np.float64)
    lengths = np.asarray([float(len(c)) for c in choices])
    return int(np.argmax(lls_arr)), int(np.argmax(lls_arr / lengths))


def read_samples(samples: list[dict], task: str, items: list[dict], id_field: str) -> dict[int, dict]:
    """{doc position: {lls, pred, pred_norm}} from lm-eval's logged samples of one task, each checked
    against its item (id, number of choices) and against lm-eval's own acc/acc_norm."""
    by_doc = {}
    for s in samples:
        lls = [float(r[0]) for r in s["filtered_resps"]]
        position = s["doc_id"]  # the doc's position in the task's evaluation split
        item = items[position]
        if id_field != "doc_id" and s["doc"].get(id_field) != item["id"]:
            raise RuntimeError(f"{task}: lm-eval's doc {s['doc_id']} is not item {item['id']!r}")
        if len(lls) != len(item["choices"]):
            raise RuntimeError(f"{task} doc {s['doc_id']}: {len(lls)} log-likelihoods "
                               f"for {len(item['choices'])} choices")
        pred, pred_norm = predictions(lls, item["choices"])
        # our reading of the samples must reproduce lm-eval's own per-item scores
        if (("acc" in s and s["acc"] != float(pred == item["gold"]))
                or ("acc_norm" in s and s["acc_norm"] != float(pred_norm == item["gold"]))):
            raise RuntimeError(f"{task} doc {s['doc_id']}: predictions disagree with lm-eval's acc/acc_norm")
        by_doc[position] = {"lls": lls, "pred": pred, "pred_norm": pred_norm}
    return by_doc


def evaluate_pair(lm, pair: dict, seed: int) -> tuple[dict, list[dict]]:
    """Run both tasks of a pair through lm-eval and join the per-item results by id."""
    from lm_eval import simple_evaluate

    en, ko = pair["en"], pair["ko"]
    whole = len(pair["en_idx"]) == len(pair["en_items"])
    out = simple_evaluate(
        model=lm, tasks=[pair["en_task"], pair["ko_task"]], task_manager=pair["task_manager"],
        # sorted: lm-eval 0.4.13 labels the k-th selected doc (in file order) with samples[k], so an
        # unsorted list would attach the wrong doc_id to a sample
        samples=None if whole else {en: sorted(pair["en_idx"]), ko: sorted(pair["ko_idx"])},
        log_samples=True, bootstrap_iters=0,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )
    per_lang = {lang: read_samples(out["samples"][task], task, pair[f"{lang}_items"], pair["id_field"])
                for lang, task in (("en", en), ("ko", ko))}
    rows = []
    for i, j in zip(pair["en_idx"], pair["ko_idx"]):
        e, k = per_lang["en"][i], per_lang["ko"][j]
        rows.append({
            "id": pair["en_items"][i]["id"], "gold": pair["en_items"][i]["gold"],
            "pred_en": e["pred"], "pred_ko": k["pred"], "pred_norm_en": e["pred_norm"], "pred_norm_ko": k["pred_norm"],
            "loglik_en": e["lls"], "loglik_ko": k["lls"],
        })
    gold = [r["gold"] for r in rows]
    acc = agreement_stats(gold, [r["pred_en"] for r in rows], [r["pred_ko"] for r in rows])
    norm = agreement_stats(gold, [r["pred_norm_en"] for r in rows], [r["pred_norm_ko"] for r in rows])
    result = {
        "en_task": en, "ko_task": ko, "n_items": acc["n"],
        "acc_en": acc["acc_en"], "acc_ko": acc["acc_ko"], "acc_norm_en": norm["acc_en"], "acc_norm_ko": norm["acc_ko"],
        "agreement": acc["agreement"], "kappa": acc["kappa"], "table": acc["table"],
        "agreement_en_right": acc["agreement_en_right"],
        "agreement_norm": norm["agreement"], "kappa_norm": norm["kappa"], "table_norm": norm["table"],
        "agreement_norm_en_right": norm["agreement_en_right"],
        "lm_eval": {f"{m}_{lang}": out["results"][t].get(f"{m},none")
                    for lang, t in (("en", en), ("ko", ko)) for m in ("acc", "acc_norm")},
    }
    return result, rows


def evaluate_model_on_pairs(model, tokenizer, label: str, pairs: list[dict], args: Arguments, out_dir: Path,
                            bar) -> dict:
    """{pair name: stats} of one model over every pair; the per-item rows go to
    ``out_dir/label/<pair>.items.jsonl``."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, max_length=args.max_length)
    stats = {}
    for pair in pairs:
        bar.set_postfix_str(f"{label}: {pair['en']} / {pair['ko']}")
        stats[pair["name"]], rows = evaluate_pair(lm, pair, args.seed)
        item_path = out_dir / label / f"{pair['name']}.items.jsonl"
        item_path.parent.mkdir(parents=True, exist_ok=True)
        with open(item_path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        bar.update(1)
    return stats


# ----------------------------------------------------------------------------- representation


def autocast(device, bf16: bool):
    """The training's precision: float32 weights, under bf16 autocast when the run trained with --bf16
    (accelerate's ``Accelerator.autocast`` is this ``torch.autocast``)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def encode_layers(model, tokenizer, texts: list[str], pooled: dict, batch_size: int, device,
                  label: str) -> torch.Tensor:
    """(N + 1, len(texts), D) float32: the pooled vector of every text at every layer, layers numbered as
    in ``common.pooling`` (N = the last decoder layer's output before the final norm). ``pooled`` gives
    ``pooling``, ``include_bos``, ``max_seq_length`` and ``bf16`` (autocast)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: little padding
    out = [None] * len(texts)
    saved_side, tokenizer.padding_side = tokenizer.padding_side, "right"
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=pooled["max_seq_length"],
                        return_tensors="pt").to(device)
        try:
            with autocast(device, pooled["bf16"]):
                states = layer_states(model, enc["input_ids"], enc["attention_mask"])
        except TypeError as e:  # common.pooling cannot find this model's decoder layers
            raise EvalError(f"{label}: no representation metrics for this model ({e})") from e
        mask = pooling_mask(enc["input_ids"], enc["attention_mask"], tokenizer.bos_token_id,
                            exclude_bos=not pooled["include_bos"])
        vectors = torch.stack([pool(h, mask, pooled["pooling"]).float() for h in states], dim=1).cpu()  # (B, N+1, D)
        for row, i in enumerate(idx):
            out[i] = vectors[row]
    tokenizer.padding_side = saved_side
    return torch.stack(out, dim=1)


NO_SOURCE = "(no source)"


def read_pairs(path: str, max_pairs: int, seed: int) -> dict:
    """The seeded sample of ``max_pairs`` pairs of ``path`` (``common.data.sample_indices``, stratified by
    source, exactly as train_contrastive.py samples its validation pairs: the same file, n and seed give the
    same pairs): ``{"ko", "en", "source"}`` lists in file order (rows without a source are the source
    '(no source)'), and ``rows_in_file``. The whole file is checked (``DataError`` names the line) and read
    twice: once for the sources, once for the sampled rows."""
    try:
        sources = [row["source"] for row in iter_parallel_jsonl(path)]
        if len(sources) < 2:
            raise EvalError(f"{path}: {len(sources)} pairs; the retrieval metrics need at least 2")
        keep = set(sample_indices(sources, max_pairs, seed))
        pairs = {"ko": [], "en": [], "source": [], "rows_in_file": len(sources)}
        for i, row in enumerate(iter_parallel_jsonl(path)):
            if i in keep:
                for key in ("ko", "en"):
                    pairs[key].append(row[key])
                pairs["source"].append(sources[i] or NO_SOURCE)
    except DataError as e:
        raise EvalError(str(e)) from None
    return pairs


def source_groups(sources: list[str], min_pairs: int) -> dict[str, list[int]]:
    """{source: row positions} for the sources with at least ``min_pairs`` rows, when there are several
    sources (with one, the per-source metrics would repeat the overall ones); sorted by name."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        groups.setdefault(s, []).append(i)
    if len(groups) < 2:
        return {}
    return {s: groups[s] for s in sorted(groups) if len(groups[s]) >= min_pairs}


def layer_metrics(model, tokenizer, ko: list[str], en: list[str], args: Arguments, device, label: str,
                  sources: list[str] | None = None, pooled: dict | None = None) -> tuple[list, dict]:
    """``alignment_metrics`` of the Korean and English vectors at every layer 0..N, over all the pairs and
    per source (``source_groups`` of ``sources`` with --min_source_pairs); the texts are the keys, so
    repeated sentences are neither random pairs nor retrieval misses. ``pooled``: pooling, BOS, max length and
    precision (default: the flags). Returns (layers, {source: layers})."""
    pooled = pooled or flags_pooling(args)
    ko_vecs = encode_layers(model, tokenizer, ko, pooled, args.rep_batch_size, device, label)
    en_vecs = encode_layers(model, tokenizer, en, pooled, args.rep_batch_size, device, label)

    def per_layer(rows: list[int] | None) -> list[dict]:
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])
        ko_keys = ko if rows is None else [ko[i] for i in rows]
        en_keys = en if rows is None else [en[i] for i in rows]
        return [{"layer": layer, **alignment_metrics(pick(ko_vecs[layer]), pick(en_vecs[layer]), ko_keys, en_keys)}
                for layer in range(len(ko_vecs))]

    groups = source_groups(sources, args.min_source_pairs) if sources is not None else {}
    return per_layer(None), {s: per_layer(rows) for s, rows in groups.items()}


@torch.no_grad()
def pooled_representation(model, tokenizer, spec: dict, pairs: dict, device, label: str, min_source_pairs: int = 50,
                          english: tuple | None = None) -> dict:
    """The sentence vectors exactly as train_contrastive.py's validation computes them, and their metrics.

    Each side is tokenized alone (truncated to ``max_seq_length``), batched in file order by ``batch_size`` and
    padded to the longest of the batch as the trainer's collator does (the tokenizer's own padding side; to a
    multiple of 8 on CUDA), pooled with ``common.pooling.pooled_layers`` at ``layers`` (mean or last, BOS
    excluded unless ``include_bos``), mixed by a ``LayerMixture`` holding the trained weights (per-layer L2
    normalisation by ``normalize``), under the run's autocast. The English side goes through ``english``
    ((model, tokenizer): the frozen starting model or --english_model) or the model itself. Duplicate texts are
    recognised by their token ids (``common.data.text_key``), as in training. Returns the overall metrics
    (``common.metrics.alignment_metrics``), ``by_source`` (sources with at least ``min_source_pairs`` pairs,
    when there are several) and, for a mixture, ``layer_share`` (each layer's effective share)."""
    en_model, en_tokenizer = english if english is not None else (model, tokenizer)
    layers = spec["layers"] or [num_layers_of_model(model) // 2]
    mixture = None
    if spec["weights"] is not None:
        mixture = LayerMixture(layers, temperature=1.0, normalize=spec["normalize"]).to(device)
        mixture.logits.copy_(torch.tensor(spec["weights"], dtype=torch.float32).log())  # softmax(log w) = w
    pad8 = 8 if device.type == "cuda" else None
    ids = {"ko": tokenizer(pairs["ko"], truncation=True, max_length=spec["max_seq_length"])["input_ids"],
           "en": en_tokenizer(pairs["en"], truncation=True, max_length=spec["max_seq_length"])["input_ids"]}
    sides = {"ko": (model, tokenizer), "en": (en_model, en_tokenizer)}
    vectors, shares = {"ko": [], "en": []}, []
    for start in range(0, len(ids["ko"]), spec["batch_size"]):
        per_layer = {}
        for side, (encoder, tok) in sides.items():
            batch = tok.pad({"input_ids": ids[side][start : start + spec["batch_size"]]}, padding="longest",
                            pad_to_multiple_of=pad8, return_tensors="pt").to(device)
            try:
                with autocast(device, spec["bf16"]):
                    per_layer[side] = pooled_layers(encoder, batch["input_ids"], batch["attention_mask"], layers=layers,
                                                    pooling=spec["pooling"], exclude_bos=not spec["include_bos"],
                                                    bos_token_id=tok.bos_token_id)
                    vectors[side].append((mixture(per_layer[side]) if mixture is not None else per_layer[side][0])
                                         .float())
            except TypeError as e:  # common.pooling cannot find this model's decoder layers
                raise EvalError(f"{label}: no representation metrics for this model ({e})") from e
        if mixture is not None:
            both = torch.cat([per_layer["ko"], per_layer["en"]], dim=1)
            shares.append(mixture.shares(both) * both.shape[1])
    ko, en = torch.cat(vectors["ko"]), torch.cat(vectors["en"])
    ko_keys, en_keys = [text_key(x) for x in ids["ko"]], [text_key(x) for x in ids["en"]]
    result = alignment_metrics(ko, en, ko_keys, en_keys)
    result["by_source"] = {
        source: alignment_metrics(ko[rows], en[rows], [ko_keys[i] for i in rows], [en_keys[i] for i in rows])
        for source, rows in source_groups(pairs["source"], min_source_pairs).items()}
    if mixture is not None:
        total = torch.stack(shares).sum(dim=0) / (2 * len(ko))
        result["layer_share"] = {str(layer): s.item() for layer, s in zip(layers, total)}
    return result


def num_layers_of_model(model) -> int:
    return model.config.get_text_config().num_hidden_layers


def layer_pairs_summary(pairs: dict, seed: int) -> dict:
    """What the layer metrics were computed on: sample size, rows in the file, seed, sampled pairs per source."""
    by_source: dict[str, int] = {}
    for s in pairs["source"]:
        by_source[s] = by_source.get(s, 0) + 1
    return {"sampled": len(pairs["ko"]), "rows_in_file": pairs["rows_in_file"], "seed": seed,
            "by_source": dict(sorted(by_source.items()))}


def best_layer(layers: list[dict]) -> int:
    """The layer with the highest mean retrieval (ko->en, en->ko), ties broken by the larger gap."""
    return max(layers, key=lambda m: ((m["retrieval_ko_en"] + m["retrieval_en_ko"]) / 2, m["gap"]))["layer"]


# ----------------------------------------------------------------------------- output


def fmt(x, digits=4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def report_layer_of(result: dict, spec: str) -> int | None:
    layers = result.get("layers")
    if not layers:
        return None
    if spec == "best":
        return result["best_layer"]
    if spec == "middle" or (spec == "trained" and result.get("trained_layer") is None):
        return (len(layers) - 1) // 2
    if spec == "trained":
        return min(result["trained_layer"], len(layers) - 1)
    return min(int(spec), len(layers) - 1)


def table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join([f"| {' | '.join(head)} |", "|" + "---|" * len(head)] + [f"| {' | '.join(r)} |" for r in rows])


def write_markdown(path: Path, results: dict, pairs: list[dict], args: Arguments) -> None:
    many = len(pairs) > 1
    head = ["model"]
    for p in pairs:
        suffix = f" ({p['en']}/{p['ko']})" if many else ""
        head += [f"{p['en']} acc", f"{p['ko']} acc", f"agreement{suffix}", f"kappa{suffix}",
                 f"both right / only EN / only KO / both wrong{suffix}"]
    has_rep = any(r.get("representation") for r in results.values())
    if has_rep:
        head += ["pooled (as trained)", "cos", "gap", "retrieval ko->en", "retrieval en->ko"]
    rows = []
    for model, r in results.items():
        row = [model]
        for p in pairs:
            s = r.get(p["name"])
            if s is None:
                row += ["-"] * 5
                continue
            t = s["table"]
            row += [fmt(s["acc_en"]), fmt(s["acc_ko"]), fmt(s["agreement"]), fmt(s["kappa"]),
                    f"{t['both_right']} / {t['only_en_right']} / {t['only_ko_right']} / {t['both_wrong']}"]
        if has_rep:
            rep = r.get("representation")
            if rep is None:
                row += ["-"] * 5
            else:
                row += [describe_pooling(rep["pooled"]) + (" (as step 0)" if rep["pooled"].get("like_run") else ""),
                        fmt(rep["parallel_cos"]), fmt(rep["gap"]), fmt(rep["retrieval_ko_en"]),
                        fmt(rep["retrieval_en_ko"])]
        rows.append(row)
    lines = [table(head, rows)]
    layer_rows = []
    for model, r in results.items():
        layer = report_layer_of(r, args.report_layer)
        if layer is not None:
            m, pooled = r["layers"][layer], r.get("layers_pooled", {})
            layer_rows.append([model, str(layer), fmt(m["parallel_cos"]), fmt(m["gap"]), fmt(m["retrieval_ko_en"]),
                               fmt(m["retrieval_en_ko"]), str(r["best_layer"]),
                               pooled.get("pooling", "-") + (", BOS" if pooled.get("include_bos") else "")])
    if layer_rows:
        lines.append(f"\nPer-layer metrics (both languages through the model) at the reported layer "
                     f"({args.report_layer}):\n")
        lines.append(table(["model", "layer", "cos", "gap", "retrieval ko->en", "retrieval en->ko", "best layer",
                            "pooling"], layer_rows))
    text = "# EN/KO agreement\n\n" + "\n".join(lines) + "\n"
    if pairs:
        norm_head = ["model"]
        for p in pairs:
            norm_head += [f"{p['en']} acc_norm", f"{p['ko']} acc_norm", "agreement", "kappa"]
        norm = [f"| {' | '.join(norm_head)} |", "|" + "---|" * len(norm_head)]
        for model, r in results.items():
            row = [model]
            for p in pairs:
                s = r.get(p["name"], {})
                row += [fmt(s.get("acc_norm_en")), fmt(s.get("acc_norm_ko")), fmt(s.get("agreement_norm")),
                        fmt(s.get("kappa_norm"))]
            norm.append(f"| {' | '.join(row)} |")
        text += "\nWith acc_norm predictions (log-likelihood / characters of the choice):\n\n" + "\n".join(norm) + "\n"
    by_source = [(model, r) for model, r in results.items() if r.get("layers_by_source")]
    if by_source:
        src_head = ["model", "source", "pairs", "layer", "gap", "centred cos", "centred random cos",
                    "retrieval ko->en", "retrieval en->ko"]
        src = [f"| {' | '.join(src_head)} |", "|" + "---|" * len(src_head)]
        for model, r in by_source:
            layer = report_layer_of(r, args.report_layer)
            for source, layers in r["layers_by_source"].items():
                m = layers[layer]
                src.append(f"| {model} | {source} | {r['layer_pairs']['by_source'][source]} | {layer} | "
                           f"{fmt(m['gap'])} | {fmt(m['centred_cos'])} | {fmt(m['centred_random_cos'])} | "
                           f"{fmt(m['retrieval_ko_en'])} | {fmt(m['retrieval_en_ko'])} |")
        text += "\nLayer metrics per source (retrieval among the pairs of that source):\n\n" + "\n".join(src) + "\n"
    n = {p["name"]: len(p["en_idx"]) for p in pairs}
    text += f"\nItems per pair: {n}. Layers: 0 = embeddings, L = output of decoder layer L (N before the final norm); "
    text += (f"reported layer: {args.report_layer}. \"pooled (as trained)\": each checkpoint as its run pooled "
             "(training_args.json, layer_weights.json; English through the frozen starting model for a frozen run), "
             "each baseline as the runs it is compared with at their step 0.\n")
    sample = next((r["layer_pairs"] for r in results.values() if r.get("layer_pairs")), None)
    if sample:
        text += (f"Layer metrics on {sample['sampled']} of the {sample['rows_in_file']} pairs of "
                 f"{args.parallel_file} (seeded sample, seed {sample['seed']}, stratified by source: "
                 f"{sample['by_source']}).\n")
    path.write_text(text, encoding="utf-8")


STEP_RE = re.compile(r"(?:checkpoint|step|ckpt|iter)[-_]?(\d+)$")


def plot_accuracy_vs_step(plt, path: Path, results: dict, pairs: list[dict], stepped: dict[str, int]) -> None:
    """One panel per pair: acc_en, acc_ko and agreement against the step of the models named like a
    checkpoint (``stepped``: {model: step}), one line per run folder."""
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4), squeeze=False)
    for ax, p in zip(axes[0], pairs):
        runs = {}
        for m, step in stepped.items():
            if p["name"] in results[m]:
                folder = Path(results[m]["source"]).parent.name or "run"
                runs.setdefault(folder, []).append((step, results[m][p["name"]]))
        for run, points in runs.items():
            points.sort(key=lambda x: x[0])
            steps = [s for s, _ in points]
            for key, style in (("acc_en", "o-"), ("acc_ko", "s-"), ("agreement", "^--")):
                ax.plot(steps, [r[key] for _, r in points], style, label=f"{run}: {key}" if len(runs) > 1 else key)
        ax.set_xlabel("step")
        ax.set_title(f"{p['en']} / {p['ko']}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_layers(plt, path: Path, with_layers: dict[str, list[dict]]) -> None:
    """Retrieval both ways and the cosine gap against the layer, one line per model."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for m, layers in with_layers.items():
        xs = [x["layer"] for x in layers]
        for ax, key in zip(axes, ("retrieval_ko_en", "retrieval_en_ko", "gap")):
            ax.plot(xs, [x[key] for x in layers], marker=".", label=m)
    for ax, key in zip(axes, ("retrieval ko->en (P@1)", "retrieval en->ko (P@1)", "parallel - random cosine")):
        ax.set_xlabel("layer (0 = embeddings)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(out_dir: Path, results: dict, pairs: list[dict]) -> list[str]:
    """The PNG plots that the results allow; returns their file names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no PNG plots")
        return []
    written = []
    stepped = {m: int(STEP_RE.search(m.split("/")[-1]).group(1)) for m in results if STEP_RE.search(m.split("/")[-1])}
    if stepped and pairs:
        plot_accuracy_vs_step(plt, out_dir / "accuracy_vs_step.png", results, pairs, stepped)
        written.append("accuracy_vs_step.png")
    with_layers = {m: r["layers"] for m, r in results.items() if r.get("layers")}
    if with_layers:
        plot_layers(plt, out_dir / "retrieval_per_layer.png", with_layers)
        written.append("retrieval_per_layer.png")
    return written


def json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x


# ----------------------------------------------------------------------------- main


class Evaluator:
    """Evaluates one model at a time into ``results`` (written to results.json after each model): the task pairs,
    the per-layer metrics and the representation as trained. Holds what every model shares: the prepared
    tasks, the sampled parallel pairs, the device and the English encoders of frozen runs (loaded once)."""

    def __init__(self, args: Arguments, pairs: list[dict], layer_pairs: dict | None, out_dir: Path, results: dict):
        self.args, self.pairs, self.layer_pairs, self.out_dir, self.results = args, pairs, layer_pairs, out_dir, results
        self.device = pick_device(args.device)
        self.dtype = pick_dtype(args.dtype, self.device)
        self.english_cache: dict[tuple, tuple] = {}
        self.bar = tqdm(desc="eval_agreement", unit="step", total=0)

    def english_source(self, spec: dict) -> str | None:
        """Who encodes English for a run's representation (None: the model itself); see --english_model."""
        if self.args.english_model == "self":
            return None
        if self.args.english_model is not None:
            return self.args.english_model
        return spec["english_model"]

    def check_english(self, entries: list[dict]) -> None:
        """Before anything is loaded: every frozen run's starting model must be reachable."""
        problems = []
        for e in entries:
            spec = trained_pooling(e["source"]) if e["local"] else None
            source = self.english_source(spec) if spec else None
            if source and not os.path.isdir(source) and not looks_like_hub_id(source):
                problems.append(f"{e['source']}: its English encoder {source} (the run's starting model) is not found "
                                "from here; give --english_model PATH (or 'self')")
        if problems:
            raise EvalError("\n".join(problems))

    def english(self, source: str, bf16: bool):
        """(model, tokenizer) encoding English, cached; in bf16 when the run trained under --bf16 (its frozen copy
        was moved to bf16), else float32."""
        dtype = torch.bfloat16 if bf16 else torch.float32
        key = (source, dtype)
        if key not in self.english_cache:
            entry = {"source": source, "local": os.path.isdir(source)}
            self.english_cache[key] = load_model(entry, self.device, dtype)
        return self.english_cache[key]

    def evaluate(self, entry: dict, base_specs: list[dict]) -> dict:
        args, label, device = self.args, entry["label"], self.device
        self.bar.total += 1 + len(self.pairs) + (1 if self.layer_pairs else 0)
        self.bar.refresh()
        self.bar.set_postfix_str(f"{label}: loading")
        model, tokenizer = load_model(entry, device, self.dtype)
        self.bar.update(1)
        result = {"source": entry["source"], "role": entry["role"]}
        if self.pairs:
            result.update(evaluate_model_on_pairs(model, tokenizer, label, self.pairs, args, self.out_dir, self.bar))
        if self.layer_pairs:
            self.bar.set_postfix_str(f"{label}: layers")
            if model.dtype != torch.float32:  # representation metrics in the training's precision
                del model
                free_memory(device)
                model, tokenizer = load_model(entry, device, torch.float32)
            result.update(self.representation(model, tokenizer, entry, base_specs))
            self.bar.update(1)
        self.results[label] = result
        del model
        free_memory(device)
        # written after every model, so a crash late in a long list keeps the finished ones
        (self.out_dir / "results.json").write_text(json.dumps(json_safe(self.results), indent=2, ensure_ascii=False),
                                                   encoding="utf-8")
        return result

    def representation(self, model, tokenizer, entry: dict, base_specs: list[dict]) -> dict:
        """Per-layer metrics, and "representation": the run's own pooling (a run's checkpoint) or, for a model
        no run trained, the pooling of the runs it is compared with (as at their step 0), else the flags'."""
        args, lp, label = self.args, self.layer_pairs, entry["label"]
        sample = {"file": os.path.abspath(args.parallel_file), **layer_pairs_summary(lp, args.seed)}
        spec = trained_pooling(entry["source"]) if entry["local"] else None
        n_layers = num_layers_of_model(model)
        out = {}
        if spec is not None:
            english_source = self.english_source(spec)
            english = self.english(english_source, spec["bf16"]) if english_source else None
            rep = pooled_representation(model, tokenizer, spec, lp, self.device, label, args.min_source_pairs, english)
            if english_source is None:  # a frozen run's checkpoint encoding English itself: --english_model self
                encoder = "self" if spec["english_encoder"] == "frozen" else "shared"
            elif spec["english_encoder"] == "frozen" and english_source == spec["english_model"]:
                encoder = "frozen"
            else:
                encoder = "other model"
            pooled = {**spec, "english_model": english_source, "english_encoder": encoder}
            out["representation"] = {**rep, "pooled": pooled, "pairs": sample}
            out["trained_layer"] = top_layer(spec)
            layer_pooling = spec
        else:
            reps = []
            for base in base_specs or [flags_pooling(args)]:
                base = {**base, "layers": base["layers"] or [n_layers // 2]}
                if max(base["layers"]) > n_layers:
                    logger.warning("%s has %d layers: not pooled like %s (layers %s)", label, n_layers,
                                   base.get("like_run"), base["layers"])
                    continue
                rep = pooled_representation(model, tokenizer, base, lp, self.device, label, args.min_source_pairs)
                reps.append({**rep, "pooled": base, "pairs": sample})
            if reps:
                out["representation"] = reps[0]
                followed = reps[0]["pooled"]["layers"]  # a mixture at step 0 has no top layer: the middle one
                out["trained_layer"] = followed[0] if len(followed) == 1 else None
                if len(reps) > 1:
                    out["representations"] = reps
            layer_pooling = flags_pooling(args)
        out["layers"], out["layers_by_source"] = layer_metrics(model, tokenizer, lp["ko"], lp["en"], args, self.device,
                                                               label, lp["source"], pooled=layer_pooling)
        out["best_layer"] = best_layer(out["layers"])
        out["layer_pairs"] = layer_pairs_summary(lp, args.seed)
        out["layers_pooled"] = {k: layer_pooling[k] for k in ("pooling", "include_bos", "max_seq_length", "bf16")}
        return out

    def finish(self) -> list[str]:
        """results.md and the plots from everything in ``results``; returns the plot names."""
        write_markdown(self.out_dir / "results.md", self.results, self.pairs, self.args)
        return write_plots(self.out_dir, self.results, self.pairs) if self.args.plots else []

    def close(self) -> None:
        self.bar.close()
        self.english_cache.clear()
        free_memory(self.device)


def free_memory(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_is_live(folder: str) -> bool:
    """Whether a trainer still writes into ``folder`` or a run directly inside it (a live ``.lock``)."""
    from common.checkpoint import RunLock

    folders = [Path(folder)] + [p for p in Path(folder).iterdir() if p.is_dir() and not STEP_RE.search(p.name)]
    return any(RunLock(str(f)).owner() is not None for f in folders)


def watch(args: Arguments, evaluator: Evaluator, entries: list[dict]) -> None:
    """Follow the --watch folders: evaluate the given models and every complete checkpoint once, as it appears;
    the baselines once every watched run has a checkpoint (their pooling follows the runs) or training ended.
    Return when no watched run is live (no live ``.lock``; looked at before listing the checkpoints, so the
    last ones are not missed) and everything found is evaluated, or after --watch_timeout seconds without news."""
    results = evaluator.results
    given = [e for e in entries if e["role"] == "checkpoint"]
    baselines = [e for e in entries if e["role"] == "baseline"]
    last_news = time.monotonic()
    while True:
        live = any(run_is_live(folder) for folder in args.watch)
        found = [{"source": str(c.resolve()), "role": "checkpoint", "local": True}
                 for folder in args.watch for c in run_checkpoints(folder)]
        done = {r["source"] for r in results.values()}
        new = [e for e in given if e["source"] not in done]
        new += [e for e in found if e["source"] not in done and e["source"] not in {g["source"] for g in given}]
        assign_labels(new, {label: r["source"] for label, r in results.items()})
        specs = pool_like_specs(args, given + found) if evaluator.layer_pairs else []
        for entry in new:
            logger.info("evaluating %s (%s)", entry["label"], entry["source"])
            evaluator.evaluate(entry, specs)
        pending = [e for e in baselines if e["source"] not in done]
        if pending and (not live or all(run_checkpoints(folder) for folder in args.watch)):
            assign_labels(pending, {label: r["source"] for label, r in results.items()})
            for entry in pending:
                evaluator.evaluate(entry, specs)
        else:
            pending = []
        if new or pending:
            evaluator.finish()
            last_news = time.monotonic()
        if not live:
            return
        if args.watch_timeout is not None and time.monotonic() - last_news > args.watch_timeout:
            logger.warning("no new checkpoint for %.0f s (--watch_timeout): stopping", args.watch_timeout)
            return
        time.sleep(args.watch_interval)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_args(args)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)

    # everything that can be wrong with the input is found before any model is loaded
    entries = resolve_models(args) if args.models or args.baseline else []
    pairs = [] if args.skip_tasks else prepare_pairs(args)
    layer_pairs = read_pairs(args.parallel_file, args.max_pairs, args.seed) if args.parallel_file else None
    base_specs = pool_like_specs(args, entries) if layer_pairs else []

    out_dir = Path(args.output_dir)
    results = {}
    if args.watch and (out_dir / "results.json").is_file():  # resume: what is there is not evaluated again
        results = read_json(out_dir / "results.json", "results of an earlier --watch")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval_args.json").write_text(json.dumps(asdict(args), indent=2), encoding="utf-8")
    evaluator = Evaluator(args, pairs, layer_pairs, out_dir, results)
    watched = [{"source": str(c), "local": True} for folder in args.watch for c in run_checkpoints(folder)]
    evaluator.check_english(entries + watched)
    try:
        if args.watch:
            watch(args, evaluator, entries)
        else:
            for entry in entries:
                evaluator.evaluate(entry, base_specs)
    finally:
        evaluator.close()
    plots = evaluator.finish()
    print((out_dir / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {out_dir / 'results.json'}, results.md, per-item files" + (f", {', '.join(plots)}" if plots else ""))
    return results


if __name__ == "__main__":
    run_main(main)
