"""Loading a causal LM with the speed options every trainer offers: the attention kernel and compiled layers.

``--attn_implementation`` picks transformers' attention: ``sdpa`` (PyTorch's fused kernels; the
default), ``eager`` (plain matrix products, slowest, the reference) or ``flash_attention_2`` (when the
flash-attn package is installed). ``--torch_compile`` compiles each decoder layer (as torchtune does)
rather than the whole model: the layers are nearly all the work, and the code around them (the truncated
forward, pooling, the losses, the mixture) stays eager and free to change. On one H200 it gave 1.5x the
speed and a quarter less memory in stage 1 and stage 3 (README, Benchmarks); the first steps compile.
``--profile_steps A-B`` records training steps A to B with torch.profiler (``step_profiler``), to see where
a step's time goes before reaching for another lever.
"""

from pathlib import Path

import torch
from torch import nn
from torch.autograd import DeviceType
from transformers import AutoModelForCausalLM

from common.pooling import find_decoder_layers


def load_lm(path: str, attn_implementation: str = "sdpa") -> nn.Module:
    """The causal LM at ``path`` in fp32 (the master weights; bf16 comes from autocast), with the given attention.
    A kernel whose package is missing is a clear error, not an ImportError from inside transformers."""
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn_implementation)
    except ImportError as e:
        raise ValueError(f"--attn_implementation {attn_implementation}: {e}") from e


SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


def set_sdpa_backends(spec: str) -> None:
    """Allow only the named kernels behind ``torch.nn.functional.scaled_dot_product_attention`` on CUDA, e.g.
    ``"flash,efficient,math"``; empty: all of them, in PyTorch's own order of preference. On an H200 (torch 2.11)
    PyTorch picked cuDNN's attention for the masked batches of stage 1, and the profile showed it planning on the
    host for every new shape: 1.2-2.9 ms of CPU per call for 50-160 us of GPU work, most of the host time of a
    step, with the GPU idle meanwhile (README, Benchmarks). Leaving cudnn out lets the memory-efficient kernel
    (which takes any mask) run. Process-wide: it sets ``torch.backends.cuda.enable_*_sdp``."""
    names = [n.strip() for n in spec.split(",") if n.strip()] or list(SDPA_BACKENDS)
    unknown = [n for n in names if n not in SDPA_BACKENDS]
    if unknown:
        raise ValueError(f"--sdpa_backends: unknown kernel {unknown[0]!r}; choose from {', '.join(SDPA_BACKENDS)}")
    for name in SDPA_BACKENDS:
        getattr(torch.backends.cuda, f"enable_{'mem_efficient' if name == 'efficient' else name}_sdp")(name in names)


def compile_decoder_layers(model: nn.Module) -> None:
    """``torch.compile`` every decoder layer of ``model`` in place; the parameters and state dict are unchanged."""
    for layer in find_decoder_layers(model):
        layer.compile()


def kernel_time(events) -> float:
    """Microseconds the device spent in the profiled ``events`` (torch.profiler's ``key_averages()``): the
    device's own events only, as the profiler's table totals them. A CPU operator's device time is that of the
    kernels it launched, which are events of their own, and user annotations (a step's range) span kernels."""
    return sum(e.self_device_time_total for e in events
               if e.device_type != DeviceType.CPU and not e.is_user_annotation)


def parse_profile_steps(steps: str) -> tuple[int, int]:
    """``--profile_steps`` "A-B" as (A, B), 1 <= A <= B; a clear error otherwise (trainers check it early)."""
    try:
        first, last = (int(s) for s in steps.split("-"))
    except ValueError:
        raise ValueError(f"--profile_steps {steps!r}: expected FIRST-LAST, e.g. 21-25") from None
    if not 1 <= first <= last:
        raise ValueError(f"--profile_steps {steps}: needs 1 <= FIRST <= LAST")
    return first, last


def step_profiler(steps: str, start_step: int, max_steps: int, output_dir: str,
                  rank: int = 0) -> torch.profiler.profile | None:
    """A started torch.profiler recording training steps A to B of ``steps`` = "A-B" (numbered as log.jsonl
    numbers them: step 1 is the first), for a loop that calls its ``step()`` once after every training step and
    ``stop()`` at the end; None when ``steps`` is empty. The run takes steps ``start_step`` + 1 (after a resumed
    checkpoint's) to ``max_steps``. The step before A is the profiler's warm-up, so compile and warm-up steps stay
    out when A is past them.

    When step B ends it writes, into ``output_dir/profile/``, ``steps_A-B.rank{rank}.txt``: the steps recorded,
    their mean wall time, on CUDA the share of that time the device spent in kernels (well below 1 means the
    GPU waits for the host: launches or syncs), and the operators by self device time (CPU time without a
    GPU); and ``trace_A-B.rank{rank}.json.gz``, a Chrome trace (chrome://tracing, Perfetto).
    """
    if not steps:
        return None
    first, last = parse_profile_steps(steps)
    if not start_step < first <= last <= max_steps:
        raise ValueError(f"--profile_steps {steps}: needs {start_step} < FIRST <= LAST <= {max_steps}, the steps "
                         "this run will take")
    before = first - 1 - start_step  # this run's steps before the first recorded one
    warmup = min(1, before)
    cuda = torch.cuda.is_available()
    folder = Path(output_dir) / "profile"

    def write(prof: torch.profiler.profile) -> None:
        events = prof.key_averages()
        # the steps recorded: up to B, or to the last one run when the run stopped before (then the profiler's
        # record of the step that never came is the last "ProfilerStep*" one, and empty)
        numbers = range(first, min(last, start_step + prof.step_num) + 1)
        recorded = sorted((e for e in prof.events()  # the host's ranges (on CUDA the GPU timeline has its own)
                           if e.name.startswith("ProfilerStep") and e.device_type == DeviceType.CPU),
                          key=lambda e: e.time_range.start)[:len(numbers)]
        wall = sum(e.time_range.elapsed_us() for e in recorded)  # microseconds
        lines = [f"training steps recorded: {', '.join(map(str, numbers))}",
                 f"wall time per step: {wall / max(1, len(recorded)) / 1e3:.1f} ms"]
        if cuda:
            busy = kernel_time(events)
            lines.append(f"device busy (kernel time / wall time): {busy / max(wall, 1):.1%}")
        lines.append(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                  row_limit=40, max_name_column_width=70))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"steps_{first}-{last}.rank{rank}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        prof.export_chrome_trace(str(folder / f"trace_{first}-{last}.rank{rank}.json.gz"))

    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    prof = torch.profiler.profile(
        activities=activities, on_trace_ready=write,
        schedule=torch.profiler.schedule(skip_first=before - warmup, wait=0, warmup=warmup,
                                         active=last - first + 1, repeat=1))
    prof.start()
    return prof
