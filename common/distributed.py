"""What the trainers need to run the same way under DDP and DeepSpeed, on GPUs or (for tests) CPUs."""

import os
from contextlib import contextmanager, nullcontext
from datetime import timedelta

import torch
from accelerate.utils import InitProcessGroupKwargs

# accelerate imports DeepSpeed whenever it is installed, DeepSpeed config or not (unwrap_model looks for its
# engine), and DeepSpeed then guesses its accelerator and logs a warning on every machine without CUDA. Naming
# the accelerator it would choose anyway keeps the CPU runs' output to our own lines.
if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
    os.environ["DS_ACCELERATOR"] = "cpu"


def process_group_kwargs(timeout_s: int | None = None) -> list[InitProcessGroupKwargs]:
    """Accelerator kwargs handlers for the process group: NCCL on GPUs, gloo on CPUs, none for a
    single process. Without gloo, DeepSpeed on CPU sees one process per rank and fails a batch-size
    check (see ../shared/TOOLCHAIN.md).

    ``timeout_s`` (``--ddp_timeout``) bounds how long a process waits in a collective (and for the others
    at start): a node that hangs instead of dying then ends the run with an error after that long, rather
    than holding every other node forever. A node that dies closes its connections, and the others fail
    at once."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    if not torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true" \
            and os.environ.get("ACCELERATE_USE_CPU", "false").lower() not in ("1", "true"):
        # accelerate then runs each rank as if it were alone, silently (wrong negatives and gradients)
        raise RuntimeError("several processes on CPU: launch with ACCELERATE_USE_CPU=1 "
                           "(accelerate launch --multi_gpu --num_processes N ...)")
    timeout = None if timeout_s is None else timedelta(seconds=timeout_s)
    return [InitProcessGroupKwargs(backend="nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)]


def configure_deepspeed(accelerator, micro_batch_size: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed values a prepared dataloader would otherwise provide.

    The trainers plan their own per-process batches and do not prepare dataloaders, so DeepSpeed's
    "auto" micro-batch size is set here; clipping is DeepSpeed's to do (``clip_grad_norm_`` is a
    no-op under it), so its "auto" takes --max_grad_norm. Nothing happens without DeepSpeed.
    """
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_clipping"] = max_grad_norm
    if config.get("gradient_accumulation_steps") == "auto":
        config["gradient_accumulation_steps"] = 1


@contextmanager
def unpartitioned(accelerator):
    """Context in which ``from_pretrained`` loads whole weights on every process even under ZeRO-3
    (for a frozen model kept outside the DeepSpeed engine, e.g. stage 1's English copy).

    accelerate's ``zero3_init_context_manager(enable=False)`` alone does not do it: it re-registers the
    DeepSpeed config with transformers, which then still sees ZeRO-3 and partitions the weights at load.
    So the registration is removed for the load and restored after it."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    with plugin.zero3_init_context_manager(enable=False):
        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            plugin.set_deepspeed_weakref()


def parameter_dims(p) -> int:
    """A parameter's number of dimensions, also under ZeRO-3, where ``p`` holds an empty 1-D shard and
    its real shape is ``p.ds_shape``."""
    return len(getattr(p, "ds_shape", p.shape))


def full_parameters(accelerator, params):
    """Context in which ``params`` hold their full values on every process: under ZeRO-3 each holds
    a shard, so they are gathered (a collective: every process must enter it); otherwise nothing."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)
