"""Stage 2: train only the LM head on Korean text; every other parameter stays bitwise unchanged.

After stage 1 has aligned the Korean representations with the English ones, the head learns to
read them out as Korean tokens. Nothing below the head receives a gradient, so the forward of the
body records no graph and the backward touches the head alone; the optimizer holds only the head.
Every --eval_steps, perplexity on Korean and on English validation text shows whether Korean
improves and English is kept.

Launch:
    accelerate launch train_lm_head.py                          # embedded demo: data/demo/stage2.yaml
    accelerate launch train_lm_head.py --model_name_or_path runs/stage1/checkpoint-5000 \\
        --train_file data/mono/ko_train.jsonl --validation_file data/mono/ko_val.jsonl \\
        --en_validation_file data/mono/en_val.jsonl --block_size 1024 --bf16 --output_dir runs/stage2
    accelerate launch train_lm_head.py --resume_from_checkpoint latest --output_dir runs/stage2 ...

A .json or .yaml config file may come first; flags after it override its values (common/args.py).
"""

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
from common.data import LengthGroupedBatchSampler, ShardedBatches, load_text_blocks
from common.demo import demo_config
from common.distributed import configure_deepspeed, process_group_kwargs
from common.metrics import language_model_loss, require_finite
from common.models import check_model_path
from common.speed import compile_decoder_layers, load_lm, parse_profile_steps, step_profiler

logger = logging.getLogger("train_lm_head")
DEMO_CONFIG = demo_config("stage2")


@dataclass
class Arguments:
    HELP_NOTES: ClassVar[dict[str, str]] = {"distributed": DISTRIBUTED_NOTE}  # --help's last section
    model_name_or_path: str | None = field(default=None, metadata={"group": "model", "help": (
        "Hugging Face causal LM folder, e.g. a stage 1 checkpoint (the embedded demo's: data/demo/model, a "
        "tiny random Llama)."
    )})
    train_file: str | None = field(default=None, metadata={"group": "data", "help": (
        "Korean training text: JSONL {\"text\", \"lang\"}, plain text (a document a line), or a packed folder "
        "from data_prep/prepare_mono.py (the demo's: data/demo/mono_ko_train.txt)."
    )})
    validation_file: str | None = field(default=None, metadata={"group": "data", "help": (
        "Korean validation text (same formats) for the Korean perplexity."
    )})
    en_validation_file: str | None = field(default=None, metadata={"group": "data", "help": (
        "English validation text for the English perplexity (is English kept?)."
    )})
    output_dir: str = field(default="runs/lm_head", metadata={"group": "logging and saving", "help": (
        "Where checkpoint-{step} folders, log.jsonl and TensorBoard logs go."
    )})
    block_size: int | None = field(default=None, metadata={"group": "data", "help": (
        "Tokens per packed training block. Unset: 1024, or the model's context if shorter (the demo: 64)."
    )})
    per_device_train_batch_size: int = field(default=8, metadata={"group": "optimisation", "help": (
        "Blocks per process per step."
    )})
    learning_rate: float = field(default=1e-4, metadata={"group": "optimisation", "help": (
        "Peak learning rate of the head (the demo's random model uses 1e-3)."
    )})
    weight_decay: float = field(default=0.0, metadata={"group": "optimisation", "help": (
        "AdamW weight decay of the head (nothing else is in the optimizer)."
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
        "Passes over the training blocks."
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


def main(argv: list[str] | None = None):
    args = parse_arguments(Arguments, argv, default_config=DEMO_CONFIG)
    if not args.model_name_or_path or not args.train_file:
        raise ValueError("give --model_name_or_path and --train_file, or a config file "
                         f"(no argument at all runs the embedded demo, {DEMO_CONFIG})")
    check_model_path(args.model_name_or_path)
    if args.profile_steps:  # its form now; its range against the steps once they are known
        parse_profile_steps(args.profile_steps)
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

    # Model: everything frozen but the head.
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = load_lm(args.model_name_or_path, args.attn_implementation)
    model.config.use_cache = False
    if args.torch_compile:
        compile_decoder_layers(model)
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        raise ValueError("the LM head is tied to the input embeddings: training it alone would change them too")
    model.requires_grad_(False)
    head.requires_grad_(True)

    # Data: fixed-length blocks, planned as global batches, each process takes its slice.
    world, rank = accelerator.num_processes, accelerator.process_index
    context = model.config.max_position_embeddings
    with accelerator.main_process_first():
        train_blocks = load_text_blocks(args.train_file, tokenizer, args.block_size, context)
        val_sets = {lang: load_text_blocks(path, tokenizer, args.block_size, context)
                    for lang, path in (("ko", args.validation_file), ("en", args.en_validation_file)) if path}
    sampler = LengthGroupedBatchSampler([args.block_size] * len(train_blocks), args.per_device_train_batch_size * world,
                                        seed=args.seed, group_by_length=False)
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * len(sampler))

    optimizer = torch.optim.AdamW(head.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  fused=accelerator.device.type == "cuda")
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=int(args.warmup_ratio * max_steps),
                              num_training_steps=max_steps)
    configure_deepspeed(accelerator, args.per_device_train_batch_size, args.max_grad_norm)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    register_weights_in_export(accelerator)  # the resume state does not repeat the weights

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

    train_blocks = train_blocks.with_format("torch")
    loader = DataLoader(train_blocks, batch_sampler=ShardedBatches(sampler, start_step, rank, world),
                        num_workers=args.dataloader_num_workers, pin_memory=accelerator.device.type == "cuda")
    val_loaders = {lang: DataLoader(ds.select(range(min(len(ds), args.max_eval_blocks))).with_format("torch"),
                                    batch_size=args.per_device_train_batch_size) for lang, ds in val_sets.items()}
    # [shared: trackers]
    if accelerator.is_main_process and args.report_to != "none":
        hparams = {k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("tensorboard" if args.report_to == "tensorboard" else "koen-align", config=hparams)
    # [/shared]
    logger.info("%d training blocks of %d tokens, %d steps, global batch %d over %d process(es); "
                "training %d head parameters", len(train_blocks), args.block_size, max_steps, sampler.batch_size,
                world, head.weight.numel())

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
                scores = language_model_loss(accelerator.unwrap_model(model), loader, accelerator.device)
                metrics.update({f"eval/{lang}_{k}": v for k, v in scores.items() if k != "tokens"})
        model.train()
        if metrics:
            write_log(metrics, step)
            logger.info("step %d eval: %s", step, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    def save(step: int) -> None:
        save_checkpoint(accelerator, model, tokenizer, args.output_dir, step, asdict(args), args.save_total_limit,
                        save_state_limit=args.save_state_limit,
                        frozen_source=args.model_name_or_path)

    if start_step == 0:
        log_eval(0)
    model.train()
    progress = tqdm(range(max_steps), initial=start_step, disable=not accelerator.is_main_process,
                    desc="stage 2 (LM head)")
    losses, t0, step = [], time.perf_counter(), start_step
    # --profile_steps: started here, so that only the loop's steps are recorded
    profiler = step_profiler(args.profile_steps, start_step, max_steps, args.output_dir, accelerator.process_index)
    for batch in loader:
        if step >= max_steps:
            break
        input_ids = batch["input_ids"].to(accelerator.device, non_blocking=True)
        loss = model(input_ids=input_ids, labels=input_ids).loss
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
        losses.append(loss.detach())

        if step % args.logging_steps == 0 or step == max_steps:
            logs = {"loss": accelerator.reduce(torch.stack(losses).mean(), "mean").item(),
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": len(losses) * sampler.batch_size * args.block_size / (time.perf_counter() - t0)}
            if accelerator.device.type == "cuda":
                logs["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            write_log(logs, step)
            require_finite(logs, step)
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            logger.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in logs.items()))
            losses, t0 = [], time.perf_counter()
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
    return accelerator.unwrap_model(model)


if __name__ == "__main__":
    run_main(main)
