"""Stage 3: full fine-tuning on Korean and English text, optionally with instruction data.

Every step takes one batch of packed text blocks, mixed Korean/English by --ko_ratio, and, with
--instruction_file, one batch of prompt/response pairs whose loss counts the response only (the
target base model is a chat model; keep it one). The streams are cycled 1:1: one epoch is one pass
over the longest, the others restart, reshuffled, when exhausted. Every --eval_steps: perplexity
on Korean and on English validation text.

Launch:
    accelerate launch train_full.py                             # embedded demo: data/demo/stage3.yaml
    accelerate launch train_full.py --model_name_or_path runs/stage2/checkpoint-2000 \\
        --train_file data/mono/ko_train.jsonl --en_train_file data/mono/en_train.jsonl --ko_ratio 0.7 \\
        --instruction_file data/sft/ko_en_chat.jsonl --validation_file data/mono/ko_val.jsonl \\
        --en_validation_file data/mono/en_val.jsonl --block_size 1024 --bf16 --gradient_checkpointing \\
        --output_dir runs/stage3
    accelerate launch train_full.py --resume_from_checkpoint latest --output_dir runs/stage3 ...

A .json or .yaml config file may come first; flags after it override its values (common/args.py).
"""

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer, DataCollatorForSeq2Seq, get_scheduler

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
    DataError,
    LengthGroupedBatchSampler,
    ShardedBatches,
    dataset_from_rows,
    iter_instructions,
    load_text_blocks,
    tokenize_instruction,
)
from common.demo import demo_config
from common.distributed import configure_deepspeed, parameter_dims, process_group_kwargs
from common.flops import lm_params, peak_flops
from common.metrics import language_model_loss, require_finite
from common.models import check_model_path
from common.speed import compile_decoder_layers, load_lm, parse_profile_steps, step_profiler

logger = logging.getLogger("train_full")
DEMO_CONFIG = demo_config("stage3")


@dataclass
class Arguments:
    HELP_NOTES: ClassVar[dict[str, str]] = {"distributed": DISTRIBUTED_NOTE}  # --help's last section
    model_name_or_path: str | None = field(default=None, metadata={"group": "model", "help": (
        "Hugging Face causal LM folder, e.g. a stage 2 checkpoint (the embedded demo's: data/demo/model, a "
        "tiny random Llama)."
    )})
    train_file: str | None = field(default=None, metadata={"group": "data", "help": (
        "Korean training text: JSONL {\"text\", \"lang\"}, plain text (a document a line), or a packed folder "
        "from data_prep/prepare_mono.py (the demo's: data/demo/mono_ko_train.txt)."
    )})
    en_train_file: str | None = field(default=None, metadata={"group": "data", "help": (
        "English training text (same formats), mixed in by --ko_ratio (the demo's: "
        "data/demo/mono_en_train.txt)."
    )})
    ko_ratio: float = field(default=0.5, metadata={"group": "data", "help": (
        "Share of Korean blocks in each batch when --en_train_file is given (the rest English); rounded to "
        "whole blocks per process."
    )})
    instruction_file: str | None = field(default=None, metadata={"group": "data", "help": (
        "Instruction JSONL {\"prompt\", \"response\"}: one batch of it per step, loss on the response (and its "
        "EOS) only."
    )})
    instruction_weight: float = field(default=1.0, metadata={"group": "objective", "help": (
        "Weight of the instruction loss added to the text loss."
    )})
    per_device_instruction_batch_size: int = field(default=4, metadata={"group": "optimisation", "help": (
        "Instruction examples per process per step."
    )})
    validation_file: str | None = field(default=None, metadata={"group": "data", "help": (
        "Korean validation text for the Korean perplexity."
    )})
    en_validation_file: str | None = field(default=None, metadata={"group": "data", "help": (
        "English validation text for the English perplexity (is English kept?)."
    )})
    output_dir: str = field(default="runs/full", metadata={"group": "logging and saving", "help": (
        "Where checkpoint-{step} folders, log.jsonl and TensorBoard logs go."
    )})
    block_size: int | None = field(default=None, metadata={"group": "data", "help": (
        "Tokens per packed block (and the truncation length of instruction examples). Unset: 1024, or the model's "
        "context if shorter (the demo: 64)."
    )})
    per_device_train_batch_size: int = field(default=8, metadata={"group": "optimisation", "help": (
        "Text blocks per process per step (Korean and English together)."
    )})
    learning_rate: float = field(default=2e-5, metadata={"group": "optimisation", "help": (
        "Peak learning rate (the demo's random model uses 1e-3)."
    )})
    weight_decay: float = field(default=0.0, metadata={"group": "optimisation", "help": (
        "AdamW weight decay for matrices; never applied to embeddings, norms or biases."
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
        "Epochs, one epoch being one pass over the longest stream."
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
        "Korean and English validation perplexity every N steps (and at step 0)."
    )})
    max_eval_blocks: int = field(default=200, metadata={"group": "logging and saving", "help": (
        "Use at most this many validation blocks per language."
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
    dataloader_num_workers: int = field(default=0, metadata={"group": "speed", "help": (
        "DataLoader worker processes per training process."
    )})


class FullModel(nn.Module):
    """The LM and both losses of a step in one forward, so DDP and DeepSpeed see one forward per
    backward. Returns (text loss, instruction loss or None)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.config = lm.config  # DeepSpeed's "auto" bucket sizes are read from model.config

    def forward(self, input_ids, sft_input_ids=None, sft_attention_mask=None, sft_labels=None):
        text_loss = self.lm(input_ids=input_ids, labels=input_ids).loss
        sft_loss = None
        if sft_input_ids is not None:
            sft_loss = self.lm(input_ids=sft_input_ids, attention_mask=sft_attention_mask, labels=sft_labels).loss
        return text_loss, sft_loss


def instruction_collator(tokenizer) -> DataCollatorForSeq2Seq:
    """Instruction rows padded on the right whatever the tokenizer's side (Llama-2's is left), as stage 1's
    pairs are (common.data.ParallelCollator says why), with label -100 on the padding."""
    right = copy.copy(tokenizer)
    right.padding_side = "right"
    return DataCollatorForSeq2Seq(right, padding="longest", label_pad_token_id=-100)


def main(argv: list[str] | None = None):
    args = parse_arguments(Arguments, argv, default_config=DEMO_CONFIG)
    if not args.model_name_or_path or not args.train_file:
        raise ValueError("give --model_name_or_path and --train_file, or a config file "
                         f"(no argument at all runs the embedded demo, {DEMO_CONFIG})")
    check_model_path(args.model_name_or_path)
    if args.profile_steps:  # its form now; its range against the steps once they are known
        parse_profile_steps(args.profile_steps)
    if not 0 <= args.ko_ratio <= 1:
        raise ValueError(f"--ko_ratio must be in [0, 1], got {args.ko_ratio}")
    if args.block_size is None:
        args.block_size = min(1024, AutoConfig.from_pretrained(args.model_name_or_path).max_position_embeddings)
    # [shared: output dir]
    # Before anything is loaded: refuse a folder that holds another run, and a resume that would change the run.
    refusal = output_dir_refusal(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    if refusal:
        raise FileExistsError(refusal)
    resume_from = None
    if args.resume_from_checkpoint:
        resume_from = check_resume(args.resume_from_checkpoint, args.output_dir, asdict(args))
    # [/shared]
    n_ko = args.per_device_train_batch_size
    if args.en_train_file:
        n_ko = round(args.ko_ratio * args.per_device_train_batch_size)
    n_en = args.per_device_train_batch_size - n_ko

    accelerator = Accelerator(
        mixed_precision="bf16" if args.bf16 else None,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        kwargs_handlers=process_group_kwargs(args.ddp_timeout),
    )
    # [shared: setup]
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    set_seed(args.seed)
    prepare_output_dir(accelerator, args.output_dir, args.save_on_each_node)  # one folder, or one per node
    # [/shared]

    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    lm = load_lm(args.model_name_or_path, args.attn_implementation)
    if tokenizer.pad_token is None:  # Llama tokenizers have none; padded positions carry no loss
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if args.gradient_checkpointing:
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
    if args.torch_compile:
        compile_decoder_layers(lm)
    model = FullModel(lm)
    full_params = lm_params(lm)  # model FLOPs: 6 x these x tokens (common/flops.py)

    # Data: each stream planned as global batches; each process takes its slice of each.
    world, rank = accelerator.num_processes, accelerator.process_index
    context = lm.config.max_position_embeddings
    with accelerator.main_process_first():
        text_sets = {"ko": load_text_blocks(args.train_file, tokenizer, args.block_size, context) if n_ko else None,
                     "en": load_text_blocks(args.en_train_file, tokenizer, args.block_size, context) if n_en else None}
        sft = None
        if args.instruction_file:
            sft = dataset_from_rows(iter_instructions, args.instruction_file, empty="no instructions").map(
                lambda r: tokenize_instruction(tokenizer, r["prompt"], r["response"], args.block_size),
                remove_columns=["prompt", "response"], desc="tokenizing instructions")
            # An example whose prompt fills the block keeps no response token: its loss would be 0 / 0,
            # and a batch of such rows a NaN that poisons every weight. Such rows are left out, and counted.
            n_rows = len(sft)
            sft = sft.filter(lambda r: any(label != -100 for label in r["labels"][1:]), desc="dropping empty rows")
            if len(sft) < n_rows:
                logger.warning("%s: %d of %d instruction examples have no response token within --block_size %d "
                               "(the prompt fills the block); they are left out", args.instruction_file,
                               n_rows - len(sft), n_rows, args.block_size)
            if len(sft) == 0:
                raise DataError(f"{args.instruction_file}: no instruction example has a response token within "
                                f"--block_size {args.block_size}")
        val_sets = {lang: load_text_blocks(path, tokenizer, args.block_size, context)
                    for lang, path in (("ko", args.validation_file), ("en", args.en_validation_file)) if path}
    streams = {}  # name -> (dataset, sampler, collate_fn)
    for seed_offset, (lang, per_device) in enumerate((("ko", n_ko), ("en", n_en))):
        if per_device:
            ds = text_sets[lang].with_format("torch")
            streams[lang] = (ds, LengthGroupedBatchSampler([args.block_size] * len(ds), per_device * world,
                                                           seed=args.seed + seed_offset, group_by_length=False), None)
    if sft is not None:
        sft_sampler = LengthGroupedBatchSampler([len(x) for x in sft["input_ids"]],
                                                args.per_device_instruction_batch_size * world, seed=args.seed + 2)
        sft_collate = instruction_collator(tokenizer)
        streams["sft"] = (sft, sft_sampler, sft_collate)
    steps_per_epoch = max(len(sampler) for _, sampler, _ in streams.values())
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)

    # Optimizer: no weight decay on embeddings, norms, biases.
    embeddings = lm.get_input_embeddings().weight
    decay = [p for p in lm.parameters() if parameter_dims(p) >= 2 and p is not embeddings]
    no_decay = [p for p in lm.parameters() if parameter_dims(p) < 2 or p is embeddings]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, fused=accelerator.device.type == "cuda")
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=int(args.warmup_ratio * max_steps),
                              num_training_steps=max_steps)
    configure_deepspeed(accelerator, args.per_device_train_batch_size, args.max_grad_norm)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    register_weights_in_export(accelerator, submodule="lm")  # the resume state does not repeat the weights

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

    loaders = {name: DataLoader(ds, batch_sampler=ShardedBatches(sampler, start_step, rank, world), collate_fn=collate,
                                num_workers=args.dataloader_num_workers, pin_memory=accelerator.device.type == "cuda")
               for name, (ds, sampler, collate) in streams.items()}
    val_loaders = {lang: DataLoader(ds.select(range(min(len(ds), args.max_eval_blocks))).with_format("torch"),
                                    batch_size=args.per_device_train_batch_size) for lang, ds in val_sets.items()}
    # [shared: trackers]
    if accelerator.is_main_process and args.report_to != "none":
        hparams = {k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("tensorboard" if args.report_to == "tensorboard" else "koen-align", config=hparams)
    # [/shared]
    logger.info("streams %s; %d Korean + %d English blocks of %d tokens per process per step; "
                "%d steps over %d process(es)", {name: len(ds) for name, (ds, _, _) in streams.items()},
                n_ko, n_en, args.block_size, max_steps, world)

    # [shared: write_log]
    def write_log(record: dict, step: int) -> None:
        accelerator.log(record, step=step)
        if accelerator.is_main_process:  # the same numbers as JSON lines, easy to plot or diff
            with open(Path(args.output_dir) / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **record}) + "\n")
    # [/shared]

    def log_eval(step: int) -> None:
        # Every process scores all validation blocks: cheap, and the same forwards on every rank.
        model.eval()
        metrics = {}
        with accelerator.autocast():
            for lang, loader in val_loaders.items():
                scores = language_model_loss(accelerator.unwrap_model(model).lm, loader, accelerator.device)
                metrics.update({f"eval/{lang}_{k}": v for k, v in scores.items() if k != "tokens"})
        model.train()
        if metrics:
            write_log(metrics, step)
            logger.info("step %d eval: %s", step, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    def save(step: int) -> None:
        save_checkpoint(accelerator, model, tokenizer, args.output_dir, step, asdict(args), args.save_total_limit,
                        submodule="lm", save_state_limit=args.save_state_limit,
                        frozen_source=args.model_name_or_path)

    if start_step == 0:
        log_eval(0)
    model.train()
    progress = tqdm(range(max_steps), initial=start_step, disable=not accelerator.is_main_process,
                    desc="stage 3 (full)")
    window, t0, step = {"loss": [], "text_loss": [], "sft_loss": []}, time.perf_counter(), start_step
    work = torch.zeros(2, dtype=torch.float64)  # this process's tokens and model FLOPs since the last log
    peak = peak_flops(accelerator.device, torch.bfloat16 if args.bf16 else torch.float32) \
        if accelerator.device.type == "cuda" else None
    # --profile_steps: started here, so that only the loop's steps are recorded
    profiler = step_profiler(args.profile_steps, start_step, max_steps, args.output_dir, accelerator.process_index)
    for batches in zip(*loaders.values()):
        if step >= max_steps:
            break
        batches = dict(zip(loaders, batches))
        text = torch.cat([batches[lang]["input_ids"] for lang in ("ko", "en") if lang in batches])
        sft_cpu = batches.get("sft", {})
        sft_tokens = sft_cpu["input_ids"].numel() if sft_cpu else 0
        work += torch.tensor([text.numel() + sft_tokens, 6 * full_params * (text.numel() + sft_tokens)],
                             dtype=torch.float64)
        text = text.to(accelerator.device, non_blocking=True)
        sft_batch = {f"sft_{k}": v.to(accelerator.device, non_blocking=True) for k, v in sft_cpu.items()}
        text_loss, sft_loss = model(input_ids=text, **sft_batch)
        loss = text_loss + (args.instruction_weight * sft_loss if sft_loss is not None else 0.0)
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
        for name, value in (("loss", loss), ("text_loss", text_loss), ("sft_loss", sft_loss)):
            if value is not None:
                window[name].append(value.detach())

        if step % args.logging_steps == 0 or step == max_steps:
            logs = {k: accelerator.reduce(torch.stack(v).mean(), "mean").item() for k, v in window.items() if v}
            logs["lr"] = scheduler.get_last_lr()[0]
            seconds = time.perf_counter() - t0
            logs["text_tokens_per_s"] = len(window["loss"]) * text.numel() * world / seconds
            tokens, flops = accelerator.reduce(work.to(accelerator.device), "sum").tolist()
            logs["tokens_per_s"] = tokens / seconds  # padded, text and instruction tokens of every process
            if peak:
                logs["mfu"] = flops / seconds / (peak * world)
            work.zero_()
            if accelerator.device.type == "cuda":
                logs["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            write_log(logs, step)
            require_finite(logs, step)
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            logger.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in logs.items()))
            window, t0 = {k: [] for k in window}, time.perf_counter()
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
    return accelerator.unwrap_model(model).lm


if __name__ == "__main__":
    run_main(main)
