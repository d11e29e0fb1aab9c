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
loglik_en, loglik_ko, jsd, ko_prob_of_en_pred, and cluster where the pair has one), eval_args.json, and PNG plots
(accuracy/agreement against checkpoint step with their intervals, a panel per training stage, when the names
carry a step; retrieval per layer).

Every score and representation metric has a ``<metric>_ci`` beside it: a seeded percentile bootstrap over items
(--bootstrap_iters, --seed; clustered by the pair's cluster field), one set of resamples per pair shared by all
models. ``results[model]["compare"][other][pair][metric]`` = {delta, ci, p_mcnemar, n_discordant} compares each
model with every baseline and each checkpoint with the previous one of its run (evaluation/compare.py); with
several pairs, ``results[model]["suite"]`` pools their items. The order of work: check the arguments, resolve the
models, prepare the pairs (evaluation/tasks.py) and the parallel sample, then per model the tasks and the
representation (evaluation/representation.py), then the comparisons, results.md and the plots
(evaluation/render.py).
"""

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from common.args import parse_arguments
from common.cli import run_main
from common.metrics import pair_cosine
from evaluation import EvalError
from evaluation.compare import add_comparisons, add_suite, item_link, pair_counts, read_items
from evaluation.models import (
    free_memory,
    load_model,
    looks_like_hub_id,
    pick_device,
    pick_dtype,
    read_json,
    resolve_models,
)
from evaluation.presets import resolve_pairs
from evaluation.render import json_safe, write_markdown, write_plots
from evaluation.representation import (
    best_layer,
    describe_pooling,
    flags_pooling,
    layer_metrics,
    layer_pairs_summary,
    num_layers_of_model,
    pool_like_specs,
    pooled_representation,
    pooled_vectors,
    read_pairs,
    run_checkpoints,
    top_layer,
    trained_pooling,
)
from evaluation.tasks import DEFAULT_PAIR, evaluate_model_on_pairs, prepare_pairs
from evaluation.watch import watch

logger = logging.getLogger("eval_agreement")


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
        "Paired tasks: a preset (arc, belebele, global_mmlu_lite, global_mmlu, paws_x, demo: lm-eval's parallel "
        "tasks with their join and cluster fields, see evaluation/presets.py) or 'EN_TASK:KO_TASK' (lm-eval "
        "multiple_choice tasks whose docs share an id field, from the project's tasks/, --include_path or "
        "lm-eval's built-in tasks). Several allowed."
    )})
    suite: str | None = field(default=None, metadata={"help": (
        "A named set of presets evaluated after the --pair ones: 'koen' (arc, belebele, global_mmlu_lite, paws_x)."
    )})
    include_path: list[str] = field(default_factory=list, metadata={"help": (
        "Extra folders of lm-eval task YAMLs (the project's tasks/ is always included)."
    )})
    en_data: str | None = field(default=None, metadata={"help": (
        "JSONL that replaces the English task's dataset, in the rows' format the task reads (the default ARC "
        "pair: id, question, choices {text, label}, answerKey; a preset: its hub dataset's fields); the task's "
        "prompt, choices and target stay. Unset: the dataset named in the YAML (hub: online machines only)."
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
    # uncertainty
    bootstrap_iters: int = field(default=1000, metadata={"help": (
        "Resamples of the seeded percentile bootstrap over items (--seed) behind every interval (results.json "
        "'<metric>_ci') and every paired comparison ('compare'); clustered where a pair's items share a context. "
        "0: no intervals (deltas and McNemar p-values are still given)."
    )})
    ci_level: float = field(default=0.95, metadata={"help": (
        "Coverage of the intervals (0.95: from the 2.5th to the 97.5th percentile of the resamples)."
    )})


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
    if args.bootstrap_iters < 0:
        raise EvalError(f"--bootstrap_iters must be >= 0, got {args.bootstrap_iters}")
    if not 0 < args.ci_level < 1:
        raise EvalError(f"--ci_level must be between 0 and 1, got {args.ci_level}")
    if args.seed < 0:
        raise EvalError(f"--seed must be >= 0, got {args.seed}")
    if (args.en_data is None) != (args.ko_data is None):
        raise EvalError("give both --en_data and --ko_data, or neither")
    pairs = resolve_pairs(args.pair, args.suite, args.id_field)  # an unknown preset: one line naming them
    if args.en_data and not args.skip_tasks and len(pairs) != 1:
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
        # one set of resampled item counts per pair, shared by every model: intervals and comparisons are paired
        self.counts = {p["name"]: pair_counts(len(p["en_idx"]), args.bootstrap_iters, args.seed, p.get("cluster"))
                       for p in pairs}
        self.pair_counts = (pair_counts(len(layer_pairs["ko"]), args.bootstrap_iters, args.seed)
                            if layer_pairs else None)  # the parallel pairs, resampled for the representation's
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
            result.update(evaluate_model_on_pairs(model, tokenizer, label, self.pairs, args, self.out_dir, self.bar,
                                                  self.counts))
        if model.dtype != torch.float32:  # representation metrics in the training's precision
            del model
            free_memory(device)
            model, tokenizer = load_model(entry, device, torch.float32)
        if self.pairs:
            self.item_links(model, tokenizer, entry, base_specs, result)
        if self.layer_pairs:
            self.bar.set_postfix_str(f"{label}: layers")
            result.update(self.representation(model, tokenizer, entry, base_specs))
            self.bar.update(1)
        self.results[label] = result
        del model
        free_memory(device)
        self.write_results()  # after every model, so a crash late in a long list keeps the finished ones
        return result

    def write_results(self) -> None:
        (self.out_dir / "results.json").write_text(json.dumps(json_safe(self.results), indent=2, ensure_ascii=False),
                                                   encoding="utf-8")

    def link_pooling(self, entry: dict, model, base_specs: list[dict]) -> tuple[dict, tuple | None]:
        """(pooling, English encoder) of the model's representation as in "representation": its run's (English
        through the frozen start for a frozen run), else the first run pooling it follows as at step 0 that its
        depth allows, else the flags'."""
        spec = trained_pooling(entry["source"]) if entry["local"] else None
        if spec is not None:
            source = self.english_source(spec)
            return spec, (self.english(source, spec["bf16"]) if source else None)
        n_layers = num_layers_of_model(model)
        for base in [*base_specs, flags_pooling(self.args)]:
            base = {**base, "layers": base["layers"] or [n_layers // 2]}
            if max(base["layers"]) <= n_layers:
                return base, None
        return {**flags_pooling(self.args), "layers": [n_layers // 2]}, None

    def item_links(self, model, tokenizer, entry: dict, base_specs: list[dict], result: dict) -> None:
        """Per pair, ``item_link`` (evaluation/compare.py): each item's Korean and English question (the prompts)
        pooled as the model's representation, their cosine written into the items file, and the AUC with which
        it separates the agreeing items from the others, into ``result[pair]["item_link"]``."""
        spec, english = self.link_pooling(entry, model, base_specs)
        for p in self.pairs:
            path = self.out_dir / entry["label"] / f"{p['name']}.items.jsonl"
            rows = read_items(path)
            v = pooled_vectors(model, tokenizer, spec, [p["ko_items"][j]["text"] for j in p["ko_idx"]],
                               [p["en_items"][i]["text"] for i in p["en_idx"]], self.device, entry["label"], english)
            similarity = pair_cosine(v["ko"], v["en"])
            result[p["name"]]["item_link"] = {**item_link(rows, similarity, self.counts[p["name"]], self.args.ci_level),
                                              "pooled": describe_pooling(spec)}
            with open(path, "w", encoding="utf-8") as f:
                for row, sim in zip(rows, similarity.tolist()):
                    f.write(json.dumps({**row, "similarity": sim}, ensure_ascii=False) + "\n")

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
            rep = pooled_representation(model, tokenizer, spec, lp, self.device, label, args.min_source_pairs, english,
                                        self.pair_counts, args.ci_level)
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
                rep = pooled_representation(model, tokenizer, base, lp, self.device, label, args.min_source_pairs,
                                            counts=self.pair_counts, level=args.ci_level)
                reps.append({**rep, "pooled": base, "pairs": sample})
            if reps:
                out["representation"] = reps[0]
                followed = reps[0]["pooled"]["layers"]  # a mixture at step 0 has no top layer: the middle one
                out["trained_layer"] = followed[0] if len(followed) == 1 else None
                if len(reps) > 1:
                    out["representations"] = reps
            layer_pooling = flags_pooling(args)
        out["layers"], out["layers_by_source"] = layer_metrics(model, tokenizer, lp["ko"], lp["en"], args, self.device,
                                                               label, lp["source"], pooled=layer_pooling,
                                                               counts=self.pair_counts)
        out["best_layer"] = best_layer(out["layers"])
        out["layer_pairs"] = layer_pairs_summary(lp, args.seed)
        out["layers_pooled"] = {k: layer_pooling[k] for k in ("pooling", "include_bos", "max_seq_length", "bf16")}
        return out

    def finish(self) -> list[str]:
        """The paired comparisons and the suite scores (from the per-item files, so a resumed --watch compares
        with the models of earlier starts too), results.json, results.md and the plots; returns the plot names."""
        if self.pairs:
            add_comparisons(self.results, self.pairs, self.out_dir, self.counts, self.args.ci_level)
            if len(self.pairs) > 1:
                add_suite(self.results, self.pairs, self.out_dir, self.args.bootstrap_iters, self.args.seed,
                          self.args.ci_level)
            self.write_results()
        write_markdown(self.out_dir / "results.md", self.results, self.pairs, self.args)
        return write_plots(self.out_dir, self.results, self.pairs) if self.args.plots else []

    def close(self) -> None:
        self.bar.close()
        self.english_cache.clear()
        free_memory(self.device)


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
