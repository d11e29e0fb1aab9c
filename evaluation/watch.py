"""Following training runs: each complete checkpoint is evaluated once, as it appears."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from evaluation import STEP_RE
from evaluation.models import assign_labels
from evaluation.representation import pool_like_specs, run_checkpoints

if TYPE_CHECKING:  # the argument dataclass of eval_agreement.py
    from eval_agreement import Arguments, Evaluator

logger = logging.getLogger("eval_agreement")


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
