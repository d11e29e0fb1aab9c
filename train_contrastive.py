"""Stage 1: align Korean and English sentence representations with InfoNCE on parallel pairs.

The Korean side goes through the model being trained; the English side through the same model
(``--english_encoder shared``) or a frozen copy of the starting model (``frozen``). A sentence vector
is the pooled hidden state of one layer (``--pool_layer``) or a trainable softmax mixture of layers
(``--mix_layers A-B``). Optionally a next-token loss on monolingual text is added (``--lm_weight``),
one batch of it per batch of pairs. Layer numbering: 0 = embeddings, L = output of decoder layer L
(see common/pooling.py).

Launch:
    accelerate launch train_contrastive.py                       # embedded demo: data/demo/stage1.yaml
    accelerate launch train_contrastive.py data/demo/stage1.yaml --pool_layer 1 --output_dir runs/demo_l1
    accelerate launch train_contrastive.py \\
        --model_name_or_path princeton-nlp/Sheared-LLaMA-1.3B-ShareGPT-ko \\
        --train_file data/parallel/train.jsonl --validation_file data/parallel/validation.jsonl \\
        --pool_layer 12 --english_encoder frozen --bf16 --output_dir runs/stage1
    accelerate launch --config_file ds_configs/accelerate_zero2.yaml train_contrastive.py stage1.yaml
    accelerate launch train_contrastive.py --resume_from_checkpoint latest --output_dir runs/stage1 ...

A .json or .yaml config file may come first; flags after it override its values (common/args.py).
"""

import json
import logging
import math
import os
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from datasets import Dataset
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer, get_scheduler

from common.args import DISTRIBUTED_NOTE, SCHEDULERS, TRACKERS, parse_arguments
from common.checkpoint import (
    agree_on_resume,
    check_resume,
    claim_output_dir,
    load_resume_state,
    output_dir_refusal,
    prepare_output_dir,
    register_weights_in_export,
    save_checkpoint,
)
from common.cli import run_main
from common.data import (
    LengthGroupedBatchSampler,
    ParallelCollator,
    ShardedBatches,
    dataset_from_rows,
    iter_parallel_jsonl,
    load_text_blocks,
    sample_indices,
    text_key,
    trim_padding,
)
from common.demo import demo_config
from common.distributed import (
    configure_deepspeed,
    full_parameters,
    parameter_dims,
    process_group_kwargs,
    unpartitioned,
)
from common.flops import layer_params, lm_params, peak_flops, stage1_flops
from common.losses import duplicate_mask, gather, info_nce
from common.metrics import alignment_metrics, cka_debiased, language_probe, require_finite
from common.models import check_model_path
from common.pooling import LayerMixture, is_llama_family, pack_sentences, pooled_layers
from common.speed import compile_decoder_layers, load_lm, parse_profile_steps, set_sdpa_backends, step_profiler

logger = logging.getLogger("train_contrastive")
DEMO_CONFIG = demo_config("stage1")


@dataclass
class Arguments:
    HELP_NOTES: ClassVar[dict[str, str]] = {"distributed": DISTRIBUTED_NOTE}  # --help's last section
    model_name_or_path: str | None = field(default=None, metadata={"group": "model and pooling", "help": (
        "Hugging Face causal LM folder or hub id (the embedded demo's: data/demo/model, a tiny random Llama "
        "and a tokenizer trained on the shipped demo pairs)."
    )})
    train_file: str | None = field(default=None, metadata={"group": "data", "help": (
        "Parallel JSONL, one {\"ko\", \"en\", \"source\"} a line (the demo's: data/demo/train.jsonl)."
    )})
    validation_file: str | None = field(default=None, metadata={"group": "data", "help": (
        "Parallel JSONL for the alignment metrics every --eval_steps (the demo's: "
        "data/demo/validation.jsonl)."
    )})
    output_dir: str = field(default="runs/contrastive", metadata={"group": "logging and saving", "help": (
        "Where checkpoint-{step} folders, log.jsonl and TensorBoard logs go."
    )})
    max_seq_length: int = field(default=128, metadata={"group": "data", "help": (
        "Sentences are truncated to this many tokens (BOS included)."
    )})
    group_by_length: bool = field(default=True, metadata={"group": "data", "help": (
        "Batch sentences of similar length together (less padding); contents stay random at the scale of 64 "
        "batches."
    )})
    preprocessing_num_workers: int | None = field(default=None, metadata={"group": "speed", "help": (
        "Processes that tokenize the pairs (datasets.map num_proc); the result is the same as with one, row for "
        "row, and cached. Monolingual text for --lm_train_file is best packed beforehand with "
        "data_prep/prepare_mono.py --num_proc N (a packed folder loads as is)."
    )})
    pad_to_multiple_of: int = field(default=8, metadata={"group": "speed", "help": (
        "Pad each batch's sentences to a multiple of N tokens (tensor-core friendly shapes, and fewer distinct "
        "shapes under --torch_compile); 0 pads to the longest only. Padding is masked: it changes no result."
    )})
    joint_forward: bool = field(default=False, metadata={"group": "speed", "help": (
        "With the English side shared: encode a step's Korean and English sentences in one forward, both padded "
        "to the longer side (half the forwards, twice the rows per matrix product, more padding); the same "
        "vectors. Not with --english_encoder frozen."
    )})
    pack_length: int = field(default=0, metadata={"group": "speed", "help": (
        "Pack each forward's sentences end to end, without padding, into rows of N tokens (wider for a longer "
        "sentence; N >= --max_seq_length keeps one width, which --torch_compile prefers), each sentence "
        "attending to itself only and its positions counted from 0: the same vectors, no position spent on "
        "padding (--pad_to_multiple_of then only shapes gradient caching's chunks). 0 pads every sentence to the "
        "longest instead. Llama-family models."
    )})
    dataloader_num_workers: int = field(default=0, metadata={"group": "speed", "help": (
        "DataLoader worker processes per training process."
    )})
    pool_layer: int | None = field(default=None, metadata={"group": "model and pooling", "help": (
        "Pool the hidden state of this layer: 0 = embedding output, L = output of decoder layer L (1..N). "
        "Unset and no --mix_layers: the middle layer N // 2."
    )})
    mix_layers: str | None = field(default=None, metadata={"group": "model and pooling", "help": (
        "A trainable softmax-weighted mixture of the pooled vectors of these layers instead of one layer: a range "
        "'A-B' (inclusive) or a list '1,5,9-12,17'."
    )})
    mix_learning_rate: float = field(default=1e-2, metadata={"group": "optimisation", "help": (
        "Learning rate of the mixture logits (at a model's rate they barely move)."
    )})
    mix_temperature_final: float | None = field(default=None, metadata={"group": "model and pooling", "help": (
        "Anneal the mixture temperature linearly from --mix_temperature (step 0) to this (last step); "
        "mix_temperature is logged."
    )})
    mix_entropy_weight: float = field(default=0.0, metadata={"group": "objective", "help": (
        "Add this times the entropy of the layer weights, H(w) = -sum_k w_k log w_k, to the loss: > 0 pushes the "
        "weights apart (the research saw a spread of 0.0025). mix_entropy is logged."
    )})
    mix_temperature: float = field(default=1.0, metadata={"group": "model and pooling", "help": (
        "Softmax temperature of the mixture; below 1 separates the weights faster."
    )})
    mix_normalize: bool = field(default=True, metadata={"group": "model and pooling", "help": (
        "L2-normalise each layer's pooled vector before the weighted sum, so the mixture weights are layer "
        "importances. --no_mix_normalize mixes the raw vectors (the research's original mixture, in which layer "
        "k contributes w_k * |v_k|; eval/layer_share/L then shows the effective shares)."
    )})
    pooling: str = field(default="mean", metadata={"group": "model and pooling", "choices": ("mean", "last"), "help": (
        "'mean' over real tokens, or 'last' real token."
    )})
    include_bos: bool = field(default=False, metadata={"group": "model and pooling", "help": (
        "Include the BOS token in mean pooling (it is excluded by default: it carries no meaning and its "
        "hidden state is huge)."
    )})
    english_encoder: str = field(default="shared", metadata={"group": "model and pooling", "help": (
        "'shared': English through the trained model too; 'frozen': through a frozen copy of the starting "
        "model (no gradient, eval mode, not in the optimizer)."
    ), "choices": ("shared", "frozen")})
    trainable: str = field(default="all", metadata={"group": "model and pooling", "help": (
        "'all', 'embeddings' (input embeddings only), 'new_token_embeddings' (only the input-embedding rows from "
        "the base vocabulary size on: the rows a Korean vocabulary expansion added), or comma-separated regexes of "
        "parameter names (e.g. 'embed_tokens,layers\\.[0-5]\\.'); everything else is frozen and stays bitwise "
        "unchanged."
    )})
    base_vocab_size: int | None = field(default=None, metadata={"group": "model and pooling", "help": (
        "For --trainable new_token_embeddings: the vocabulary size before expansion. Unset: base_vocab_size from "
        "the model folder's expand_vocab.json (written by data_prep/expand_vocab.py)."
    )})
    lm_weight_schedule: str = field(default="constant", metadata={"group": "objective", "help": (
        "How --lm_weight evolves over the run: 'constant', 'warmup' (linear from 0 at the first step to "
        "--lm_weight at the last) or 'decay' (linear from --lm_weight to 0); the weight in use is logged as lm_weight."
    ), "choices": ("constant", "warmup", "decay")})
    objective_balance: str = field(default="sum", metadata={"group": "objective", "help": (
        "How the contrastive and LM gradients combine: 'sum', or 'pcgrad' (when they conflict, cos < 0, each is "
        "projected onto the normal plane of the other before the sum; Yu et al. 2020). pcgrad needs both losses "
        "and runs two backward passes a step; not under DeepSpeed ZeRO."
    ), "choices": ("sum", "pcgrad")})
    grad_conflict_steps: int = field(default=0, metadata={"group": "objective", "help": (
        "Every N steps (0: never), log the cosine between the gradients of the contrastive and of the LM loss "
        "(global, all-reduced) on the trainable parameters: grad_cos/all, grad_cos/embeddings, grad_cos/layers_A-B "
        "(groups of --grad_conflict_group_size decoder layers), and grad_norm/cl, grad_norm/lm. Costs a second "
        "backward pass on those steps; not under DeepSpeed ZeRO (use DDP)."
    )})
    grad_conflict_group_size: int = field(default=4, metadata={"group": "objective", "help": (
        "Decoder layers per grad_cos/layers_A-B group."
    )})
    cl_chunk_size: int = field(default=0, metadata={"group": "speed", "help": (
        "Gradient caching (GradCache): embed the pairs in chunks of this many per process without a graph, "
        "compute InfoNCE over all gathered vectors, then back-propagate chunk by chunk from the cached vector "
        "gradients. The same losses and gradients as the whole batch, with the activation memory of one chunk, "
        "so batches of thousands of pairs (more negatives) fit; costs a second forward. 0: off. One process, "
        "DDP or DeepSpeed ZeRO-2/3; with --objective_balance sum and no --grad_conflict_steps."
    )})
    mask_duplicates: bool = field(default=True, metadata={"group": "objective", "help": (
        "Leave out of the InfoNCE softmax every candidate that shares a sentence (token ids) with the anchor's "
        "pair: a repeated sentence is a translation, not a negative. dup_masked logs the count of such cells in "
        "the global batch (with --no_mask_duplicates, the count that would have been masked)."
    )})
    temperature: float = field(default=0.05, metadata={"group": "objective", "help": "InfoNCE temperature tau."})
    symmetric: bool = field(default=True, metadata={"group": "objective", "help": (
        "Average the ko->en and en->ko InfoNCE directions (else ko->en only)."
    )})
    cl_weight: float = field(default=1.0, metadata={"group": "objective", "help": (
        "Weight of the contrastive loss. 0 is the no-CL control: no contrastive forward or backward at all, the "
        "LM loss alone trains (--lm_weight > 0), and the alignment metrics are still evaluated every --eval_steps."
    )})
    lm_weight: float = field(default=0.0, metadata={"group": "objective", "help": (
        "Weight of the next-token loss on --lm_train_file; 0 turns it off (and the contrastive forward stops "
        "at the deepest pooled layer)."
    )})
    lm_train_file: str | None = field(default=None, metadata={"group": "data", "help": (
        "Monolingual text for the LM loss: JSONL {\"text\", \"lang\"} or plain text, one document a line. With "
        "--lm_en_train_file, this is the Korean text."
    )})
    lm_en_train_file: str | None = field(default=None, metadata={"group": "data", "help": (
        "English text for the LM loss, mixed with --lm_train_file (Korean) by --lm_ko_ratio in every LM batch."
    )})
    lm_ko_ratio: float = field(default=0.5, metadata={"group": "data", "help": (
        "With --lm_en_train_file: share of Korean blocks in each LM batch, rounded to whole blocks per process."
    )})
    block_size: int = field(default=512, metadata={"group": "data", "help": "Length of the packed LM blocks."})
    per_device_lm_batch_size: int = field(default=4, metadata={"group": "optimisation", "help": (
        "LM blocks per process per step."
    )})
    per_device_train_batch_size: int = field(default=32, metadata={"group": "optimisation", "help": (
        "Parallel pairs per process per step; negatives are gathered from all processes."
    )})
    learning_rate: float = field(default=2e-5, metadata={"group": "optimisation", "help": (
        "Peak learning rate of the model (the embedded demo's random model uses 1e-3)."
    )})
    weight_decay: float = field(default=0.0, metadata={"group": "optimisation", "help": (
        "AdamW weight decay for matrices; never applied to embeddings, norms, biases or mixture logits."
    )})
    lr_scheduler_type: str = field(default="linear", metadata={"group": "optimisation", "choices": SCHEDULERS, "help": (
        "transformers scheduler name: linear, cosine, constant_with_warmup, ..."
    )})
    warmup_ratio: float = field(default=0.03, metadata={"group": "optimisation", "help": (
        "Share of the steps spent warming up."
    )})
    max_grad_norm: float = field(default=1.0, metadata={"group": "optimisation", "help": (
        "Gradient clipping; 0 turns it off."
    )})
    max_steps: int = field(default=-1, metadata={"group": "optimisation", "help": (
        "Total optimizer steps; overrides --num_train_epochs when > 0."
    )})
    num_train_epochs: float = field(default=1.0, metadata={"group": "optimisation", "help": (
        "Epochs, one epoch being one pass over the larger of the pair and LM streams."
    )})
    seed: int = field(default=42, metadata={"group": "optimisation", "help": (
        "Seed for initialisation, data order and everything else."
    )})
    bf16: bool = field(default=False, metadata={"group": "speed", "help": (
        "bf16 mixed precision (ignored under a DeepSpeed config, which sets its own)."
    )})
    attn_implementation: str = field(default="sdpa", metadata={"group": "speed", "help": (
        "Attention kernel: sdpa (PyTorch's fused kernels), eager (plain, the reference) or flash_attention_2 "
        "(needs the flash-attn package)."
    )})
    torch_compile: bool = field(default=False, metadata={"group": "speed", "help": (
        "torch.compile each decoder layer (common/speed.py); the first steps are slower while it compiles."
    )})
    sdpa_backends: str = field(default="", metadata={"group": "speed", "help": (
        "The kernels sdpa attention may use on CUDA, comma-separated from flash, efficient, cudnn, math (e.g. "
        "'flash,efficient,math' leaves cuDNN's out; common/speed.py set_sdpa_backends). Empty: all of them."
    )})
    gradient_checkpointing: bool = field(default=False, metadata={"group": "speed", "help": (
        "Recompute activations in the backward pass to save memory."
    )})
    profile_steps: str = field(default="", metadata={"group": "speed", "help": (
        "Record training steps FIRST-LAST (e.g. 21-25, numbered as in log.jsonl: after compiling and warm-up) with "
        "torch.profiler, into output_dir/profile/: operators by device time, the share of the step the GPU was "
        "busy, and a Chrome trace (common/speed.py). Empty: no profiling."
    )})
    logging_steps: int = field(default=10, metadata={"group": "logging and saving", "help": (
        "Log the losses every N steps."
    )})
    eval_steps: int = field(default=100, metadata={"group": "logging and saving", "help": (
        "Alignment metrics on the validation pairs every N steps (and at step 0)."
    )})
    max_eval_pairs: int = field(default=1000, metadata={"group": "logging and saving", "help": (
        "Validation pairs per eval: a sample seeded by --seed over the whole --validation_file, stratified by "
        "source, the same at every eval and on resume. Metrics overall (eval/<metric>) and per source "
        "(eval/<source>/<metric>, sources with 50 pairs or more)."
    )})
    save_steps: int = field(default=500, metadata={"group": "logging and saving", "help": (
        "Write checkpoint-{step} every N steps and at the end; 0 writes none (a benchmark or a dry run)."
    )})
    save_total_limit: int | None = field(default=None, metadata={"group": "logging and saving", "help": (
        "Keep only the newest N checkpoints."
    )})
    resume_from_checkpoint: str | None = field(default=None, metadata={"group": "logging and saving", "help": (
        "'latest' or a checkpoint folder to continue from, exactly. 'latest' resumes the newest checkpoint that "
        "every process can resume from (with node-local folders, the newest complete on every node) and starts "
        "the run afresh where there is no checkpoint yet, so one command serves the first start and every "
        "restart (an elastic launcher's --max_restarts)."
    )})
    overwrite_output_dir: bool = field(default=False, metadata={"group": "logging and saving", "help": (
        "Start over in an --output_dir that holds checkpoints of an earlier run: its checkpoints and logs are"
        " removed first. Without it such a folder is refused, unless --resume_from_checkpoint continues that "
        "run."
    )})
    save_state_limit: int = field(default=1, metadata={"group": "logging and saving", "help": (
        "Only the newest N checkpoints keep their resume state (optimizer, scheduler, RNG); 0 keeps it in "
        "all. Every checkpoint keeps its model export, in the dtype of the trained weights: fp32 under --bf16"
        " autocast (fp32 master weights), bf16 under a DeepSpeed bf16 config."
    )})
    save_on_each_node: bool = field(default=False, metadata={"group": "distributed", "help": (
        "Several nodes, each with an --output_dir of its own (node-local disks): every node writes complete "
        "checkpoints to its folder, its own processes' resume state included. Found without the flag too (the "
        "nodes look for each other's files at start); the flag refuses a folder the nodes share."
    )})
    ddp_timeout: int = field(default=1800, metadata={"group": "distributed", "help": (
        "Seconds a process waits for the others in a collective (and at start) before the run fails: a node "
        "that hangs ends the run after this long instead of holding the others. A node that dies ends it at once."
    )})
    report_to: str = field(default="tensorboard", metadata={"group": "logging and saving", "help": (
        "accelerate tracker: 'tensorboard', 'wandb', ..., or 'none'."
    ), "choices": TRACKERS})


def parse_layers(spec: str) -> list[int]:
    """'A-B' or '1,5,9-12,17' -> the sorted distinct layers."""
    layers = set()
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(1)) > int(m.group(2))):
            raise ValueError(f"--mix_layers must be 'A-B' with 0 <= A <= B or a list such as '1,5,9-12,17', "
                             f"got {spec!r}")
        layers.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return sorted(layers)


def check_args(args: Arguments, num_layers: int) -> list[int]:
    """Reject bad combinations before any model is loaded; return the layers the representation uses.
    (Single values outside a field's choices were refused by the parser already.)"""
    if args.pool_layer is not None and args.mix_layers is not None:
        raise ValueError("give --pool_layer or --mix_layers, not both")
    if args.mix_layers is not None:
        layers = parse_layers(args.mix_layers)
    else:
        layers = [num_layers // 2 if args.pool_layer is None else args.pool_layer]
    if not all(0 <= layer <= num_layers for layer in layers):
        raise ValueError(f"layers {layers[0]}..{layers[-1]} are outside 0..{num_layers} "
                         f"(the model has {num_layers} decoder layers)")
    if args.lm_weight < 0 or args.cl_weight < 0:
        raise ValueError("--lm_weight and --cl_weight must be >= 0")
    if args.lm_weight > 0 and not args.lm_train_file:
        raise ValueError("--lm_weight > 0 needs monolingual text: give --lm_train_file")
    if args.cl_weight == 0 and args.lm_weight == 0:
        raise ValueError("--cl_weight 0 (the no-CL control) trains the LM loss alone: give --lm_weight > 0")
    if (args.objective_balance == "pcgrad" or args.grad_conflict_steps) and not (args.cl_weight and args.lm_weight):
        raise ValueError("--objective_balance pcgrad and --grad_conflict_steps compare the contrastive and the LM "
                         "gradients: they need --cl_weight > 0 and --lm_weight > 0")
    if args.joint_forward and args.english_encoder == "frozen":
        raise ValueError("--joint_forward encodes both sides with the trained model: not with --english_encoder "
                         "frozen")
    if args.pad_to_multiple_of < 0:
        raise ValueError(f"--pad_to_multiple_of must be >= 0, got {args.pad_to_multiple_of}")
    if args.pack_length < 0:
        raise ValueError(f"--pack_length must be >= 0, got {args.pack_length}")
    if args.profile_steps:
        parse_profile_steps(args.profile_steps)
    if args.cl_chunk_size < 0 or (args.cl_chunk_size and (args.objective_balance == "pcgrad"
                                                           or args.grad_conflict_steps)):
        raise ValueError("--cl_chunk_size must be >= 0, and it combines with --objective_balance sum only and "
                         "without --grad_conflict_steps")
    if args.grad_conflict_steps < 0 or args.grad_conflict_group_size < 1:
        raise ValueError("--grad_conflict_steps must be >= 0 and --grad_conflict_group_size >= 1")
    if not 0 <= args.lm_ko_ratio <= 1:
        raise ValueError(f"--lm_ko_ratio must be in [0, 1], got {args.lm_ko_ratio}")
    if (args.mix_entropy_weight or args.mix_temperature_final is not None) and args.mix_layers is None:
        raise ValueError("--mix_entropy_weight and --mix_temperature_final need a mixture (--mix_layers)")
    if args.mix_temperature_final is not None and args.mix_temperature_final <= 0:
        raise ValueError(f"--mix_temperature_final must be > 0, got {args.mix_temperature_final}")
    for name in ("train_file", "validation_file", "lm_train_file", "lm_en_train_file"):
        path = getattr(args, name)
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"--{name} {path}: no such file")
    return layers


def ddp_kwargs(lm_weight: float, cl_weight: float = 1.0) -> DistributedDataParallelKwargs:
    """Without an LM loss, lm_head and the layers above the pooled one get no gradient (without the
    contrastive loss, the mixture logits get none), and DDP then skips its gradient all-reduce silently
    unless it searches for unused parameters each step."""
    return DistributedDataParallelKwargs(find_unused_parameters=lm_weight == 0 or cl_weight == 0)


def select_trainable(model: nn.Module, spec: str, base_vocab_size: int | None = None) -> list[str]:
    """Set requires_grad from --trainable; return the names of the trainable parameters.

    'new_token_embeddings' trains the input embeddings with a gradient hook that zeroes the rows below
    ``base_vocab_size``: with no weight decay on embeddings, AdamW then leaves those rows bitwise unchanged."""
    embeddings = model.get_input_embeddings().weight
    if spec == "new_token_embeddings":
        if hasattr(embeddings, "ds_shape"):
            raise ValueError("--trainable new_token_embeddings is not supported under DeepSpeed ZeRO-3, which shards "
                             "the embedding rows: use ZeRO-2 or DDP")
        if base_vocab_size is None or not 0 < base_vocab_size < embeddings.shape[0]:
            raise ValueError(f"--trainable new_token_embeddings: the base vocabulary size {base_vocab_size} must be "
                             f"between 1 and the model's {embeddings.shape[0] - 1} (give --base_vocab_size, or "
                             "train from a folder written by data_prep/expand_vocab.py)")
        keep = torch.ones(embeddings.shape[0], 1, dtype=embeddings.dtype, device=embeddings.device)
        keep[:base_vocab_size] = 0
        embeddings.register_hook(lambda grad: grad * keep.to(grad.dtype))
    names = []
    for name, p in model.named_parameters():
        if spec == "all":
            train = True
        elif spec in ("embeddings", "new_token_embeddings"):
            train = p is embeddings
        else:
            train = any(re.search(pattern, name) for pattern in spec.split(","))
        p.requires_grad_(train)
        if train:
            names.append(name)
    if not names:
        example = ", ".join(n for n, _ in list(model.named_parameters())[:4])
        raise ValueError(f"--trainable {spec!r} matches no parameter (names look like: {example}, ...)")
    return names


class ContrastiveModel(nn.Module):
    """The trained LM and its layer mixture as one module, so DDP and DeepSpeed see one forward per
    step (two forwards before one backward would confuse DDP's unused-parameter search).

    A sentence vector is the pooled hidden state of ``layers`` (one layer, or several mixed by the
    trainable ``mixture``), pooled by ``pooling`` ('mean' or 'last') over the real tokens, BOS
    excluded when ``exclude_bos``. ``forward`` returns the Korean vectors (B, D), the English vectors
    (B, D) and the LM loss on ``lm_input_ids`` (or None). The English side goes through ``encode`` like
    the Korean one, through the trained LM or through ``english_encoder`` (a frozen copy, run without
    gradient; the mixture, trainable, still applies to its layers, so it sees both languages). With
    ``joint`` and no frozen copy, the two sides go through one forward, each padded (on the right) to the
    longer side: the same vectors, half the forwards, more padding. With ``pack_length`` every forward runs on
    its sentences packed into rows of that many tokens (``common.pooling.pack_sentences``): the same vectors,
    no padding. ``positions`` counts the token positions the forwards with gradient ran (the trained LM's and
    the frozen copy's, padding or unused row ends included), for the logged padded_tokens_per_s.
    """

    def __init__(self, lm: nn.Module, *, layers: list[int], pooling: str = "mean", exclude_bos: bool = True,
                 bos_token_id: int | None = None, mixture: LayerMixture | None = None, joint: bool = False,
                 pack_length: int = 0):
        super().__init__()
        if mixture is not None and list(mixture.layers) != list(layers):
            raise ValueError(f"the mixture is over layers {mixture.layers}, the model pools {layers}")
        if mixture is None and len(layers) != 1:
            raise ValueError(f"several layers {layers} need a mixture")
        self.lm, self.mixture, self.joint, self.pack_length = lm, mixture, joint, pack_length
        self.positions = 0
        self.pool_kwargs = dict(layers=list(layers), pooling=pooling, exclude_bos=exclude_bos,
                                bos_token_id=bos_token_id)
        self.config = lm.config  # DeepSpeed's "auto" bucket sizes are read from model.config

    @property
    def layers(self) -> list[int]:
        return self.pool_kwargs["layers"]

    def encode_layers(self, input_ids: Tensor, attention_mask: Tensor, encoder: nn.Module | None = None) -> Tensor:
        """(K, B, D) pooled vectors of each layer, through the trained LM or a frozen ``encoder`` (no gradient)."""
        packed = pack_sentences(input_ids, attention_mask, self.pack_length) if self.pack_length else None
        if torch.is_grad_enabled():  # a training forward (not gradient caching's first pass, not evaluation)
            self.positions += (packed.input_ids if packed is not None else input_ids).numel()
        with torch.no_grad() if encoder is not None else nullcontext():
            return pooled_layers(encoder if encoder is not None else self.lm, input_ids, attention_mask,
                                 packed=packed, **self.pool_kwargs)

    def combine(self, per_layer: Tensor) -> Tensor:
        """(K, B, D) -> (B, D): the mixture, or the one layer."""
        return self.mixture(per_layer) if self.mixture is not None else per_layer[0]

    def encode(self, input_ids: Tensor, attention_mask: Tensor, encoder: nn.Module | None = None) -> Tensor:
        """(B, D) sentence vectors through the trained LM, or through a frozen ``encoder`` (no gradient)."""
        return self.combine(self.encode_layers(input_ids, attention_mask, encoder))

    def forward(self, ko_input_ids=None, ko_attention_mask=None, en_input_ids=None, en_attention_mask=None,
                english_encoder=None, lm_input_ids=None):
        """(ko, en, lm_loss, mix_entropy): without pairs (the no-CL control) ko and en are None; without a
        mixture, mix_entropy is None (else H(w) = -sum_k w_k log w_k of the layer weights)."""
        ko = en = None
        if ko_input_ids is not None and self.joint and english_encoder is None:
            width = max(ko_input_ids.shape[1], en_input_ids.shape[1])
            ids = torch.cat([F.pad(x, (0, width - x.shape[1])) for x in (ko_input_ids, en_input_ids)])
            mask = torch.cat([F.pad(m, (0, width - m.shape[1])) for m in (ko_attention_mask, en_attention_mask)])
            ko, en = self.encode(ids, mask).split(ko_input_ids.shape[0])
        elif ko_input_ids is not None:
            ko = self.encode(ko_input_ids, ko_attention_mask)
            en = self.encode(en_input_ids, en_attention_mask, encoder=english_encoder)
        lm_loss = self.lm(input_ids=lm_input_ids, labels=lm_input_ids).loss if lm_input_ids is not None else None
        mix_entropy = None
        if self.mixture is not None:
            w = self.mixture.weights()
            mix_entropy = -(w * torch.log(w.clamp_min(1e-12))).sum()
        return ko, en, lm_loss, mix_entropy


def step_losses(ko: Tensor | None, en: Tensor | None, lm_loss: Tensor | None, *, temperature: float,
                symmetric: bool, cl_weight: float, lm_weight: float, pair_keys: Tensor | None = None,
                mix_entropy: Tensor | None = None, mix_entropy_weight: float = 0.0) -> tuple:
    """One step's losses (total, contrastive or None, LM or None):
    cl_weight * InfoNCE(ko, en) + lm_weight * LM + mix_entropy_weight * H(w).
    With ``pair_keys`` (B, 2), candidates sharing a sentence with the anchor's pair are not negatives.
    Without pairs (ko None: the no-CL control) there is no contrastive term."""
    cl_loss = None
    total = 0.0
    if ko is not None:
        cl_loss = info_nce(ko, en, temperature=temperature, symmetric=symmetric, pair_keys=pair_keys)
        total = cl_weight * cl_loss
    if lm_loss is not None:
        total = total + lm_weight * lm_loss
    if mix_entropy is not None and mix_entropy_weight:
        total = total + mix_entropy_weight * mix_entropy
    return total, cl_loss, lm_loss


def lm_weight_at(step: int, max_steps: int, weight: float, schedule: str) -> float:
    """The LM loss weight used at ``step`` (0-based) of ``max_steps``."""
    progress = step / max(1, max_steps - 1)
    return weight * {"constant": 1.0, "warmup": progress, "decay": 1.0 - progress}[schedule]


def pcgrad(g1: list[Tensor], g2: list[Tensor]) -> list[Tensor]:
    """PCGrad for two objectives (Yu et al. 2020), over all parameters as one vector: when g1 . g2 < 0,
    g1 <- g1 - (g1 . g2) / |g2|^2 g2 and g2 <- g2 - (g2 . g1) / |g1|^2 g1 (both from the originals); returns
    g1 + g2, which is the plain sum when the gradients do not conflict."""
    dot = sum((a.double() * b.double()).sum() for a, b in zip(g1, g2))
    if dot >= 0:
        return [a + b for a, b in zip(g1, g2)]
    n1 = sum(a.double().pow(2).sum() for a in g1)
    n2 = sum(b.double().pow(2).sum() for b in g2)
    c1, c2 = (dot / n2).to(g1[0].dtype), (dot / n1).to(g1[0].dtype)
    return [(a - c1 * b) + (b - c2 * a) for a, b in zip(g1, g2)]


def gradient_groups(names: list[str], group_size: int) -> dict[str, list[int]]:
    """Parameter indices by group: 'all', 'embeddings', and 'layers_A-B' (decoder layers A..B, 1-based)."""
    groups: dict[str, list[int]] = {"all": list(range(len(names)))}
    for i, name in enumerate(names):
        if "embed_tokens" in name:
            groups.setdefault("embeddings", []).append(i)
        m = re.search(r"\.layers\.(\d+)\.", name)
        if m:
            first = int(m.group(1)) // group_size * group_size + 1
            groups.setdefault(f"layers_{first}-{first + group_size - 1}", []).append(i)
    return groups


def combine_gradients(params: list[nn.Parameter], names: list[str], cl_term: Tensor, lm_term: Tensor,
                      balance: str, group_size: int) -> dict[str, float]:
    """Backward the contrastive and the LM terms separately, average each over the processes (the global
    gradients DDP would hold), set ``.grad`` to their sum or PCGrad combination, and return the cosines
    between them per group and their norms. The forward must have run under ``no_sync`` (this replaces
    DDP's own reduction)."""
    g_cl = torch.autograd.grad(cl_term, params, retain_graph=True, allow_unused=True)
    g_lm = torch.autograd.grad(lm_term, params, allow_unused=True)
    g_cl = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_cl)]
    g_lm = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_lm)]
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        for grads in (g_cl, g_lm):
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= torch.distributed.get_world_size()
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
    stats = {}
    for group, idx in gradient_groups(names, group_size).items():
        dot = sum((g_cl[i].double() * g_lm[i].double()).sum() for i in idx)
        n_cl = sum(g_cl[i].double().pow(2).sum() for i in idx).sqrt()
        n_lm = sum(g_lm[i].double().pow(2).sum() for i in idx).sqrt()
        if n_cl > 0 and n_lm > 0:
            stats[f"grad_cos/{group}"] = (dot / (n_cl * n_lm)).item()
        if group == "all":
            stats["grad_norm/cl"], stats["grad_norm/lm"] = n_cl.item(), n_lm.item()
    combined = pcgrad(g_cl, g_lm) if balance == "pcgrad" else [a + b for a, b in zip(g_cl, g_lm)]
    for p, g in zip(params, combined):
        p.grad = g
    return stats


def cached_backward(accelerator, model, batch: dict, chunk_size: int, *, english_encoder, lm_input_ids,
                    cl_weight: float, lm_weight: float, mix_entropy_weight: float, pad_to_multiple_of: int = 0,
                    **loss_kwargs) -> tuple:
    """Gradient caching (Gao et al. 2021, GradCache): the contrastive step on ``batch`` with the activations
    of ``chunk_size`` pairs at a time, and the gradients of the whole batch. Returns (total, cl_loss, lm_loss,
    mix_entropy) like one ordinary forward; the gradients are left in ``.grad``.

    1. Every chunk's vectors without a graph. 2. InfoNCE over all of them (gathered from every process, as
    usual), backwarded to the vectors only: d loss / d vector for every pair. 3. Chunk by chunk, the forward
    again with a graph and the backward of sum(vector * its cached gradient), which by the chain rule adds
    that chunk's share of d loss / d parameters. The LM loss and the mixture's entropy term join the last
    chunk's backward, the one DDP reduces (the others run under ``no_sync``).

    Under DeepSpeed ZeRO the chunks' backward passes are the engine's micro-steps of one gradient accumulation:
    every one but the last is off the accumulation boundary (ZeRO-2 reduces and sums each into the gradient
    partitions; ZeRO-3 gathers each layer's weights again for it), and the last one, through
    ``accelerator.backward``, is on it, where the engine steps."""
    deepspeed = accelerator.state.deepspeed_plugin is not None
    n = batch["ko_input_ids"].shape[0]
    slices = [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]
    # each chunk padded to its own longest sentence, not the whole batch's (one host sync a chunk, small next
    # to a chunk's forward); packed sentences carry no padding into the forward, so they are left as they are
    packed = accelerator.unwrap_model(model).pack_length > 0
    chunks = [{k: v[s] for k, v in batch.items()} for s in slices]
    if not packed:
        chunks = [trim_padding(chunk, pad_to_multiple_of) for chunk in chunks]
    with torch.no_grad():  # no graph: nothing for DDP or the ZeRO engine to reduce
        parts = [model(**chunk, english_encoder=english_encoder)[:2] for chunk in chunks]
    ko = torch.cat([p[0] for p in parts]).requires_grad_()
    en = torch.cat([p[1] for p in parts]).requires_grad_()
    _, cl_loss, _ = step_losses(ko, en, None, cl_weight=cl_weight, lm_weight=0.0, **loss_kwargs)
    (cl_weight * cl_loss).backward()
    for i, (s, chunk) in enumerate(zip(slices, chunks)):
        last = i == len(chunks) - 1
        with nullcontext() if last or deepspeed else accelerator.no_sync(model):
            ko_c, en_c, lm_loss, mix_entropy = model(**chunk, english_encoder=english_encoder,
                                                     lm_input_ids=lm_input_ids if last else None)
            surrogate = (ko_c * ko.grad[s]).sum() + (en_c * en.grad[s]).sum()
            if last and lm_loss is not None:
                surrogate = surrogate + lm_weight * lm_loss
            if last and mix_entropy is not None and mix_entropy_weight:
                surrogate = surrogate + mix_entropy_weight * mix_entropy
            if deepspeed and not last:  # the engine itself: accelerator.backward would step it
                model.set_gradient_accumulation_boundary(False)
                model.backward(surrogate)
            else:
                accelerator.backward(surrogate)
    total = cl_weight * cl_loss.detach()
    if lm_loss is not None:
        total = total + lm_weight * lm_loss.detach()
    return total, cl_loss.detach(), lm_loss, mix_entropy


@torch.no_grad()
def evaluate(model: ContrastiveModel, loader: DataLoader, device, english_encoder: nn.Module | None = None,
             sources: list[str] | None = None, min_source_pairs: int = 50) -> dict:
    """Alignment metrics on the validation pairs (every process computes them; they are cheap).

    Overall (``common.metrics.alignment_metrics``, duplicate texts recognised by their keys, plus
    ``cka_debiased`` and ``language_probe``, 5 folds by pair, seed 0), per source
    (``<source>/<metric>``, for sources with at least ``min_source_pairs`` pairs when there are several),
    and with a mixture each layer's effective share of the mixed vectors (``layer_share/<L>``)."""
    model.eval()
    kos, ens, keys, shares = [], [], [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        ko_layers = model.encode_layers(batch["ko_input_ids"], batch["ko_attention_mask"])
        en_layers = model.encode_layers(batch["en_input_ids"], batch["en_attention_mask"], encoder=english_encoder)
        kos.append(model.combine(ko_layers).float())
        ens.append(model.combine(en_layers).float())
        keys.append(batch["pair_keys"].cpu())
        if model.mixture is not None:
            rows = ko_layers.shape[1] + en_layers.shape[1]
            shares.append(model.mixture(torch.cat([ko_layers, en_layers], dim=1), return_shares=True)[1] * rows)
    model.train()
    ko, en, keys = torch.cat(kos), torch.cat(ens), torch.cat(keys)

    def measures(ko: torch.Tensor, en: torch.Tensor, keys: torch.Tensor) -> dict:
        out = alignment_metrics(ko, en, ko_keys=keys[:, 0].tolist(), en_keys=keys[:, 1].tolist())
        # Debiased CKA and the language probe do not read a rotated, rescaled or shifted English space as
        # misalignment, so they compare a frozen-English run with a shared one where raw cosine cannot.
        out.update(cka_debiased=cka_debiased(ko, en), language_probe=language_probe(ko, en))
        return out

    metrics = measures(ko, en, keys)
    groups: dict[str, list[int]] = {}
    for i, source in enumerate(sources or []):
        groups.setdefault(source, []).append(i)
    for source, idx in sorted(groups.items()):
        if len(groups) > 1 and len(idx) >= min_source_pairs:
            metrics.update({f"{source}/{name}": value for name, value in measures(ko[idx], en[idx], keys[idx]).items()})
    if shares:
        total = torch.stack(shares).sum(dim=0) / (2 * len(ko))
        metrics.update({f"layer_share/{layer}": s.item() for layer, s in zip(model.layers, total)})
    return metrics


def load_pairs(path: str, tokenizer, max_len: int, num_proc: int | None = None) -> Dataset:
    """Validated, tokenized pairs as a cached ``datasets.Dataset``: ko_ids, en_ids, length (both sides),
    ko_key and en_key (``text_key`` of the token ids: equal sentences, equal keys), source."""
    ds = dataset_from_rows(iter_parallel_jsonl, path, empty="no pairs")

    def tokenize(rows):
        ko = tokenizer(rows["ko"], truncation=True, max_length=max_len)["input_ids"]
        en = tokenizer(rows["en"], truncation=True, max_length=max_len)["input_ids"]
        return {"ko_ids": ko, "en_ids": en, "length": [len(a) + len(b) for a, b in zip(ko, en)],
                "ko_key": [text_key(x) for x in ko], "en_key": [text_key(x) for x in en]}

    return ds.map(tokenize, batched=True, remove_columns=["ko", "en"], num_proc=num_proc,
                  desc=f"tokenizing {Path(path).name}")


def main(argv: list[str] | None = None):
    args = parse_arguments(Arguments, argv, default_config=DEMO_CONFIG)
    if not args.model_name_or_path or not args.train_file:
        raise ValueError("give --model_name_or_path and --train_file, or a config file "
                         f"(no argument at all runs the embedded demo, {DEMO_CONFIG})")
    check_model_path(args.model_name_or_path)
    layers = check_args(args, AutoConfig.from_pretrained(args.model_name_or_path).num_hidden_layers)
    # [shared: output dir]
    # Before anything is loaded: refuse a folder that holds another run, and a resume that would change the run.
    refusal = output_dir_refusal(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    if refusal:
        raise FileExistsError(refusal)
    resume_from = None
    if args.resume_from_checkpoint:
        resume_from = check_resume(args.resume_from_checkpoint, args.output_dir, asdict(args))
    # [/shared]
    accelerator = Accelerator(
        mixed_precision="bf16" if args.bf16 else None,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        kwargs_handlers=[*process_group_kwargs(args.ddp_timeout), ddp_kwargs(args.lm_weight, args.cl_weight)],
    )
    # [shared: setup]
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    set_seed(args.seed)
    prepare_output_dir(accelerator, args.output_dir, args.save_on_each_node)  # one folder, or one per node
    # [/shared]

    # Tokenizer and model
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    if tokenizer.pad_token is None:  # Llama tokenizers have none; padded positions are masked anyway
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    set_sdpa_backends(args.sdpa_backends)
    lm = load_lm(args.model_name_or_path, args.attn_implementation)
    if args.pack_length and not is_llama_family(lm):
        raise ValueError(f"--pack_length: {type(lm).__name__} is not a Llama-family decoder (packing runs the "
                         "truncated forward, common/pooling.py)")
    if args.gradient_checkpointing:
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
    # The frozen English encoder: the starting model loaded a second time, whole on every process
    # (not partitioned into the ZeRO-3 engine), without gradient, in eval mode, outside the optimizer.
    frozen_en = None
    if args.english_encoder == "frozen":
        with unpartitioned(accelerator):
            frozen_en = load_lm(args.model_name_or_path, args.attn_implementation)
        frozen_en.requires_grad_(False).eval().to(accelerator.device, dtype=torch.bfloat16 if args.bf16 else None)
        if args.torch_compile:
            compile_decoder_layers(frozen_en)
    base_vocab_size = args.base_vocab_size
    expansion = Path(args.model_name_or_path) / "expand_vocab.json"
    if args.trainable == "new_token_embeddings" and base_vocab_size is None and expansion.is_file():
        base_vocab_size = json.loads(expansion.read_text())["base_vocab_size"]
    trainable = select_trainable(lm, args.trainable, base_vocab_size)
    if args.torch_compile:
        compile_decoder_layers(lm)
    # parameters a token passes through, for the model FLOPs behind the logged mfu (common/flops.py)
    trunc_params, full_params = layer_params(lm, max(layers)), lm_params(lm)
    mixture = LayerMixture(layers, args.mix_temperature, normalize=args.mix_normalize) if args.mix_layers else None
    model = ContrastiveModel(lm, layers=layers, pooling=args.pooling, exclude_bos=not args.include_bos,
                             bos_token_id=tokenizer.bos_token_id, mixture=mixture, joint=args.joint_forward,
                             pack_length=args.pack_length)
    logger.info("representation: %s of layer(s) %s; %d trainable parameter tensors; English encoder %s",
                args.pooling, layers, len(trainable), args.english_encoder)

    # Data: planned as global batches, each process takes its slice (common/data.py).
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = args.per_device_train_batch_size * world
    with accelerator.main_process_first():
        train_pairs = load_pairs(args.train_file, tokenizer, args.max_seq_length, args.preprocessing_num_workers)
        val_pairs = load_pairs(args.validation_file, tokenizer, args.max_seq_length) if args.validation_file else None
        # LM text: Korean (--lm_train_file) and, with --lm_en_train_file, English, mixed by --lm_ko_ratio
        lm_sets = {}
        if args.lm_weight > 0:
            n_ko = args.per_device_lm_batch_size
            if args.lm_en_train_file:
                n_ko = round(args.lm_ko_ratio * args.per_device_lm_batch_size)
            per_lang = {"ko": (args.lm_train_file, n_ko),
                        "en": (args.lm_en_train_file, args.per_device_lm_batch_size - n_ko)}
            lm_sets = {lang: (load_text_blocks(path, tokenizer, args.block_size, lm.config.max_position_embeddings), n)
                       for lang, (path, n) in per_lang.items() if n}
    pair_sampler = LengthGroupedBatchSampler(train_pairs["length"], global_batch, seed=args.seed,
                                             group_by_length=args.group_by_length)
    samplers = [pair_sampler]
    for offset, (blocks, n) in enumerate(lm_sets.values(), start=1):
        samplers.append(LengthGroupedBatchSampler([args.block_size] * len(blocks), n * world,
                                                  seed=args.seed + offset, group_by_length=False))
    steps_per_epoch = max(len(s) for s in samplers)
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)

    # Optimizer: no weight decay on embeddings (rows absent from every batch must not move), norms,
    # biases; the mixture logits get their own learning rate.
    embeddings = lm.get_input_embeddings().weight
    decay = [p for p in lm.parameters() if p.requires_grad and parameter_dims(p) >= 2 and p is not embeddings]
    no_decay = [p for p in lm.parameters() if p.requires_grad and (parameter_dims(p) < 2 or p is embeddings)]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if mixture is not None:
        groups.append({"params": list(mixture.parameters()), "weight_decay": 0.0, "lr": args.mix_learning_rate})
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, fused=accelerator.device.type == "cuda")
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=int(args.warmup_ratio * max_steps),
                              num_training_steps=max_steps)

    # Prepare. The dataloaders are not prepared: they already yield this process's slice. The
    # scheduler is stepped once per optimizer step by us and checkpointed alongside.
    configure_deepspeed(accelerator, args.per_device_train_batch_size, args.max_grad_norm)
    if accelerator.state.deepspeed_plugin is not None and (args.objective_balance == "pcgrad"
                                                            or args.grad_conflict_steps):
        raise ValueError("--objective_balance pcgrad and --grad_conflict_steps need the two objectives' gradients "
                         "apart, which the DeepSpeed ZeRO engine keeps partitioned: launch without DeepSpeed (DDP)")
    model, optimizer = accelerator.prepare(model, optimizer)
    contrastive = accelerator.unwrap_model(model)  # the ContrastiveModel itself: its counter of positions run
    accelerator.register_for_checkpointing(scheduler)
    register_weights_in_export(accelerator, submodule="lm")  # the resume state does not repeat the weights

    trainable_names = [name for name, p in model.named_parameters() if p.requires_grad]
    trainable_params = [p for p in model.parameters() if p.requires_grad]

    # [shared: resume]
    # Resume: weights, optimizer, scheduler and RNG from the checkpoint; the data position from the
    # step alone, because the batch plan depends only on (seed, epoch). Then the folder is this run's.
    # Under 'latest' the processes agree on the newest checkpoint they all hold; none anywhere is a fresh
    # start, which clears what a first attempt left (a .tmp folder, log records).
    start_step = 0
    resume_from = agree_on_resume(accelerator, resume_from, args.resume_from_checkpoint, args.output_dir, asdict(args))
    if resume_from is not None:
        ckpt, start_step = resume_from
        load_resume_state(accelerator, ckpt)
        logger.info("resumed from %s at step %d", ckpt, start_step)
    lock = claim_output_dir(accelerator, args.output_dir,
                            args.overwrite_output_dir or args.resume_from_checkpoint == "latest",
                            start_step if resume_from is not None else None)
    # [/shared]

    # Pinned host memory lets the copies to the GPU run asynchronously (the .to(..., non_blocking=True) below).
    collate = ParallelCollator(tokenizer, pad_to_multiple_of=args.pad_to_multiple_of or None)
    pin = accelerator.device.type == "cuda"
    pair_loader = DataLoader(train_pairs, batch_sampler=ShardedBatches(pair_sampler, start_step, rank, world),
                             collate_fn=collate, num_workers=args.dataloader_num_workers, pin_memory=pin)
    streams = [pair_loader]
    for (blocks, _), sampler in zip(lm_sets.values(), samplers[1:]):
        streams.append(DataLoader(blocks.with_format("torch"), num_workers=args.dataloader_num_workers,
                                  batch_sampler=ShardedBatches(sampler, start_step, rank, world), pin_memory=pin))
    # Validation: a seeded sample over the whole file, stratified by source, the same at every eval.
    val_loader = None
    if val_pairs is not None:
        val_pairs = val_pairs.select(sample_indices(val_pairs["source"], args.max_eval_pairs, args.seed))
        val_loader = DataLoader(val_pairs, batch_size=args.per_device_train_batch_size, collate_fn=collate)

    # [shared: trackers]
    if accelerator.is_main_process and args.report_to != "none":
        hparams = {k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("tensorboard" if args.report_to == "tensorboard" else "koen-align", config=hparams)
    # [/shared]
    logger.info("%d pairs, %d steps per epoch, %d steps, global batch %d over %d process(es)",
                len(train_pairs), steps_per_epoch, max_steps, global_batch, world)

    def layer_weights() -> list[float]:
        mixture = accelerator.unwrap_model(model).mixture
        with full_parameters(accelerator, [mixture.logits]), torch.no_grad():  # sharded under ZeRO-3
            return mixture.weights().tolist()

    # [shared: write_log]
    def write_log(record: dict, step: int) -> None:
        accelerator.log(record, step=step)
        if accelerator.is_main_process:  # the same numbers as JSON lines, easy to plot or diff
            with open(Path(args.output_dir) / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **record}) + "\n")
    # [/shared]

    def log_eval(step: int) -> None:
        if val_loader is None:
            return
        with accelerator.autocast():  # the same precision as the training forward
            metrics = evaluate(accelerator.unwrap_model(model), val_loader, accelerator.device, frozen_en,
                               sources=val_pairs["source"])
        write_log({f"eval/{k}": v for k, v in metrics.items()}, step)
        overall = {k: v for k, v in metrics.items() if "/" not in k}
        logger.info("step %d eval: %s", step, " ".join(f"{k}={v:.4f}" for k, v in overall.items()))

    def save(step: int) -> None:
        extra_files = {}
        if mixture is not None:  # the learned layer weights, readable without loading anything
            extra_files["layer_weights.json"] = json.dumps(dict(zip(map(str, layers), layer_weights())), indent=2)
        save_checkpoint(accelerator, model, tokenizer, args.output_dir, step, asdict(args),
                        args.save_total_limit, submodule="lm", extra_files=extra_files,
                        save_state_limit=args.save_state_limit,
                        frozen_source=args.model_name_or_path)

    # Loop
    if start_step == 0:
        log_eval(0)
    model.train()
    progress = tqdm(range(max_steps), initial=start_step, disable=not accelerator.is_main_process, desc="stage 1")
    window = {"cl_loss": [], "lm_loss": [], "dup_masked": [], "mix_entropy": []}
    work = torch.zeros(3, dtype=torch.float64)  # this process's real tokens, padded tokens, model FLOPs
    peak = peak_flops(accelerator.device, torch.bfloat16 if args.bf16 else torch.float32) \
        if accelerator.device.type == "cuda" else None
    t0 = time.perf_counter()
    step = start_step
    # --profile_steps: started here, so that only the loop's steps are recorded
    profiler = step_profiler(args.profile_steps, start_step, max_steps, args.output_dir, accelerator.process_index)
    for batches in zip(*streams):
        if step >= max_steps:
            break
        pairs, lm_cpu = batches[0], [b["input_ids"] for b in batches[1:]]
        lm_tokens = sum(b.numel() for b in lm_cpu) if args.lm_weight else 0
        # real tokens of each side (none when the pairs are not encoded): the FLOPs count them, not the padding;
        # the positions the forwards ran, padding included, are counted by the model (ContrastiveModel.positions)
        ko_real, en_real = (int(pairs[f"{s}_attention_mask"].sum()) if args.cl_weight else 0 for s in ("ko", "en"))
        work += torch.tensor([ko_real + en_real + lm_tokens, lm_tokens, stage1_flops(
            trunc_params, ko_real, en_real, frozen_en is not None, full_params, lm_tokens)], dtype=torch.float64)
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in pairs.items()}
        pair_keys = batch.pop("pair_keys")
        if args.cl_weight == 0:  # the no-CL control: the pairs are not even encoded
            batch = {}
        lm_batch = None
        if lm_cpu:
            lm_batch = torch.cat(lm_cpu).to(accelerator.device, non_blocking=True)
        if mixture is not None and args.mix_temperature_final is not None:  # annealed linearly over the run
            mixture.temperature = args.mix_temperature + (args.mix_temperature_final - args.mix_temperature) * (
                step / max(1, max_steps - 1))
        lm_weight = lm_weight_at(step, max_steps, args.lm_weight, args.lm_weight_schedule)
        # PCGrad, or a step that measures the conflict, backwards the two objectives apart (under no_sync, then
        # averaged over the processes by hand); every other step is one ordinary backward of the sum.
        two_gradients = args.objective_balance == "pcgrad" or bool(
            args.grad_conflict_steps and (step + 1) % args.grad_conflict_steps == 0)
        conflict = {}
        if args.cl_chunk_size and batch:  # gradient caching: the whole batch's gradients, one chunk's memory
            loss, cl_loss, lm_loss, mix_entropy = cached_backward(
                accelerator, model, batch, args.cl_chunk_size, english_encoder=frozen_en, lm_input_ids=lm_batch,
                cl_weight=args.cl_weight, lm_weight=lm_weight, mix_entropy_weight=args.mix_entropy_weight,
                pad_to_multiple_of=args.pad_to_multiple_of,
                temperature=args.temperature, symmetric=args.symmetric,
                pair_keys=pair_keys if args.mask_duplicates else None)
        else:
            with accelerator.no_sync(model) if two_gradients else nullcontext():
                ko, en, lm_loss, mix_entropy = model(**batch, english_encoder=frozen_en, lm_input_ids=lm_batch)
                loss, cl_loss, lm_loss = step_losses(ko, en, lm_loss, temperature=args.temperature,
                                                     symmetric=args.symmetric, cl_weight=args.cl_weight,
                                                     lm_weight=lm_weight,
                                                     pair_keys=pair_keys if args.mask_duplicates else None,
                                                     mix_entropy=mix_entropy,
                                                     mix_entropy_weight=args.mix_entropy_weight)
            if two_gradients:
                cl_term = args.cl_weight * cl_loss
                if mix_entropy is not None and args.mix_entropy_weight:
                    cl_term = cl_term + args.mix_entropy_weight * mix_entropy
                conflict = combine_gradients(trainable_params, trainable_names, cl_term, lm_weight * lm_loss,
                                             args.objective_balance, args.grad_conflict_group_size)
            else:
                accelerator.backward(loss)
        # [shared: optimizer step]
        if args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress.update(1)
        # [/shared]
        work[1] += contrastive.positions
        contrastive.positions = 0
        if conflict and args.grad_conflict_steps and step % args.grad_conflict_steps == 0:
            write_log(conflict, step)
        if cl_loss is not None:
            window["cl_loss"].append(cl_loss.detach())
        if mix_entropy is not None:
            window["mix_entropy"].append(mix_entropy.detach())
        all_keys = gather(pair_keys)  # the same count on every process: the cells of the global batch
        window["dup_masked"].append(duplicate_mask(all_keys, all_keys).sum().float())
        if lm_loss is not None:
            window["lm_loss"].append(lm_loss.detach())

        if step % args.logging_steps == 0 or step == max_steps:
            logs = {k: accelerator.reduce(torch.stack(v).mean(), "mean").item() for k, v in window.items() if v}
            logs["lr"] = scheduler.get_last_lr()[0]
            if args.lm_weight:
                logs["lm_weight"] = lm_weight
            seconds = time.perf_counter() - t0
            logs["pairs_per_s"] = len(window["dup_masked"]) * global_batch / seconds
            real, padded, flops = accelerator.reduce(work.to(accelerator.device), "sum").tolist()
            logs["tokens_per_s"], logs["padded_tokens_per_s"] = real / seconds, padded / seconds
            if peak:
                logs["mfu"] = flops / seconds / (peak * accelerator.num_processes)
            work.zero_()
            if accelerator.device.type == "cuda":
                logs["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            if mixture is not None:
                logs.update({f"layer_weight/{layer}": w for layer, w in zip(layers, layer_weights())})
                logs["mix_temperature"] = mixture.temperature
            write_log(logs, step)
            require_finite(logs, step)
            progress.set_postfix(loss=f"{logs.get('cl_loss', logs.get('lm_loss')):.4f}")
            logger.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in logs.items()))
            window = {k: [] for k in window}
            t0 = time.perf_counter()
        # [shared: pacing]
        paused = time.perf_counter()
        if step % args.eval_steps == 0 or step == max_steps:
            log_eval(step)
        if args.save_steps and (step % args.save_steps == 0 or step == max_steps):
            save(step)
        t0 += time.perf_counter() - paused  # throughput counts training time only
        if profiler is not None:  # --profile_steps: the end of a training step
            profiler.step()
        # [/shared]
    # [shared: finish]
    progress.close()
    if profiler is not None:
        profiler.stop()
    accelerator.end_training()
    lock.release()
    if accelerator.is_main_process:
        logger.info("done: %s", Path(args.output_dir) / f"checkpoint-{step}")
    # [/shared]
    return accelerator.unwrap_model(model), frozen_en  # for tests


if __name__ == "__main__":
    run_main(main)
