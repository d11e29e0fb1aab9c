"""Stage 2: train only the LM head on Korean text; every other parameter stays bitwise unchanged.

After stage 1 has aligned the Korean representations with the English ones, the head learns to
read them out as Korean tokens. Nothing below the head receives a gradient, so the forward of the
body records no graph and the backward touches the head alone; the optimizer holds only the head.
Every --eval_steps, perplexity on Korean and on English validation text shows whether Korean
improves and English is kept.

Launch:
    accelerate launch train_lm_head.py                          # embedded demo: tiny model, shipped text
    accelerate launch train_lm_head.py --model_name_or_path runs/stage1/checkpoint-5000 \\
        --train_file data/mono/ko_train.jsonl --validation_file data/mono/ko_val.jsonl \\
        --en_validation_file data/mono/en_val.jsonl --block_size 1024 --bf16 --output_dir runs/stage2
    accelerate launch train_lm_head.py --resume_from_checkpoint latest --output_dir runs/stage2 ...

A single .json or .yaml argument file works in place of the flags.
"""

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from common.args import parse_arguments
from common.checkpoint import find_checkpoint, save_checkpoint
from common.data import LengthGroupedBatchSampler, ShardedBatches, iter_mono_texts, load_text_blocks
from common.distributed import configure_deepspeed, process_group_kwargs
from common.demo import tiny_llama, train_demo_tokenizer
from common.metrics import language_model_loss

logger = logging.getLogger("train_lm_head")
DEMO_DIR = Path(__file__).resolve().parent / "data" / "demo"


@dataclass
class Arguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Hugging Face causal LM folder (e.g. a stage 1 checkpoint). Unset: the embedded demo (tiny random Llama, tokenizer trained on the shipped text)."})
    train_file: str | None = field(default=None, metadata={"help": "Korean training text: JSONL {\"text\", \"lang\"}, plain text (a document a line), or a packed folder from data_prep/prepare_mono.py. Unset: data/demo/mono_ko_train.txt."})
    validation_file: str | None = field(default=None, metadata={"help": "Korean validation text (same formats) for the Korean perplexity. Unset with no --train_file: the demo's."})
    en_validation_file: str | None = field(default=None, metadata={"help": "English validation text for the English perplexity (is English kept?). Unset with no --train_file: the demo's."})
    output_dir: str = field(default="runs/lm_head", metadata={"help": "Where checkpoint-{step} folders, log.jsonl and TensorBoard logs go."})
    block_size: int | None = field(default=None, metadata={"help": "Tokens per packed training block. Unset: 1024, or 64 for the demo."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Blocks per process per step."})
    learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate of the head. Unset: 1e-4, or 1e-3 for the demo's random model."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay of the head (nothing else is in the optimizer)."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers scheduler name: linear, cosine, constant_with_warmup, ..."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Share of the steps spent warming up."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping; 0 turns it off."})
    max_steps: int = field(default=-1, metadata={"help": "Total optimizer steps; overrides --num_train_epochs when > 0. Unset for the demo: 200."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training blocks."})
    seed: int = field(default=42, metadata={"help": "Seed for initialisation, data order and everything else."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (ignored under a DeepSpeed config, which sets its own)."})
    logging_steps: int = field(default=10, metadata={"help": "Log the loss every N steps."})
    eval_steps: int = field(default=100, metadata={"help": "Korean and English validation perplexity every N steps (and at step 0)."})
    max_eval_blocks: int = field(default=200, metadata={"help": "Use at most this many validation blocks per language."})
    save_steps: int = field(default=500, metadata={"help": "Write checkpoint-{step} every N steps (and at the end)."})
    save_total_limit: int | None = field(default=None, metadata={"help": "Keep only the newest N checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' (newest checkpoint in --output_dir) or a checkpoint folder to continue from, exactly."})
    report_to: str = field(default="tensorboard", metadata={"help": "accelerate tracker: 'tensorboard', 'wandb', ..., or 'none'."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes per training process."})


def main(argv: list[str] | None = None):
    args = parse_arguments(Arguments, argv)
    demo = args.model_name_or_path is None
    if args.train_file is None:
        args.train_file = str(DEMO_DIR / "mono_ko_train.txt")
        args.validation_file = args.validation_file or str(DEMO_DIR / "mono_ko_validation.txt")
        args.en_validation_file = args.en_validation_file or str(DEMO_DIR / "mono_en_validation.txt")
    args.learning_rate = args.learning_rate if args.learning_rate is not None else (1e-3 if demo else 1e-4)
    args.block_size = args.block_size or (64 if demo else 1024)
    if demo and args.max_steps <= 0:
        args.max_steps = 200

    accelerator = Accelerator(mixed_precision="bf16" if args.bf16 else None,
                              log_with=None if args.report_to == "none" else args.report_to, project_dir=args.output_dir,
                              kwargs_handlers=process_group_kwargs())
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    set_seed(args.seed)
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)

    # Model: everything frozen but the head.
    if demo:
        texts = [t for lang in ("ko", "en") for t in iter_mono_texts(str(DEMO_DIR / f"mono_{lang}_train.txt"))]
        tokenizer = train_demo_tokenizer(texts)
        model = tiny_llama(len(tokenizer), seed=args.seed)
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
        model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=torch.float32)
    model.config.use_cache = False
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

    start_step = 0
    if args.resume_from_checkpoint:
        ckpt, start_step = find_checkpoint(args.resume_from_checkpoint, args.output_dir)
        accelerator.load_state(str(ckpt / "accelerate_state"))
        logger.info("resumed from %s at step %d", ckpt, start_step)

    train_blocks = train_blocks.with_format("torch")
    loader = DataLoader(train_blocks, batch_sampler=ShardedBatches(sampler, start_step, rank, world), num_workers=args.dataloader_num_workers)
    val_loaders = {lang: DataLoader(ds.select(range(min(len(ds), args.max_eval_blocks))).with_format("torch"),
                                    batch_size=args.per_device_train_batch_size) for lang, ds in val_sets.items()}
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers("tensorboard" if args.report_to == "tensorboard" else "koen-align",
                                  config={k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))})
    logger.info("%d training blocks of %d tokens, %d steps, global batch %d over %d process(es); training %d head parameters",
                len(train_blocks), args.block_size, max_steps, sampler.batch_size, world, head.weight.numel())

    def write_log(record: dict, step: int) -> None:
        accelerator.log(record, step=step)
        if accelerator.is_main_process:  # the same numbers as JSON lines, easy to plot or diff
            with open(Path(args.output_dir) / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **record}) + "\n")

    def log_eval(step: int) -> None:
        # Every process scores all validation blocks: cheap, and the same forwards on every rank.
        model.eval()
        with accelerator.autocast():
            metrics = {f"eval/{lang}_{k}": v for lang, dl in val_loaders.items()
                       for k, v in language_model_loss(accelerator.unwrap_model(model), dl, accelerator.device).items() if k != "tokens"}
        model.train()
        if metrics:
            write_log(metrics, step)
            logger.info("step %d eval: %s", step, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

    if start_step == 0:
        log_eval(0)
    model.train()
    progress = tqdm(range(max_steps), initial=start_step, disable=not accelerator.is_main_process, desc="stage 2 (LM head)")
    losses, t0, step = [], time.perf_counter(), start_step
    for batch in loader:
        if step >= max_steps:
            break
        input_ids = batch["input_ids"].to(accelerator.device)
        loss = model(input_ids=input_ids, labels=input_ids).loss
        accelerator.backward(loss)
        if args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(head.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress.update(1)
        losses.append(loss.detach())

        if step % args.logging_steps == 0 or step == max_steps:
            logs = {"loss": accelerator.reduce(torch.stack(losses).mean(), "mean").item(), "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": len(losses) * sampler.batch_size * args.block_size / (time.perf_counter() - t0)}
            if accelerator.device.type == "cuda":
                logs["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            write_log(logs, step)
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            logger.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in logs.items()))
            losses, t0 = [], time.perf_counter()
        if step % args.eval_steps == 0 or step == max_steps:
            log_eval(step)
        if step % args.save_steps == 0 or step == max_steps:
            save_checkpoint(accelerator, model, tokenizer, args.output_dir, step, asdict(args), args.save_total_limit)
        if step % args.eval_steps == 0 or step % args.save_steps == 0:
            t0 = time.perf_counter()  # throughput counts training steps only
    progress.close()
    accelerator.end_training()
    return accelerator.unwrap_model(model)


if __name__ == "__main__":
    main()
