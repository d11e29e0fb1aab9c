"""One report across runs: the research's tables and plots, from eval_agreement.py outputs and training logs.

    python report.py runs/seed/stage1/* runs/seed/eval/* --output_dir runs/seed/report
    python report.py runs/ --output_dir runs/report        # a folder of runs and eval outputs, one level down
    python report.py runs/seed/stage1/layer1 runs/seed/eval/layer1 --pair koen_arc_challenge_en:koen_arc_challenge_ko

Inputs are run folders (a trainer's output_dir: ``log.jsonl``, ``checkpoint-{step}/``), eval output folders
(eval_agreement.py's ``results.json``), or folders holding either one level down. A checkpoint's scores come
from the eval results whose ``source`` is that checkpoint folder (the newest results.json wins when several
evaluated it); its run is the checkpoint's parent folder, named by its path below the runs' common parent.

Each run starts from a model (its checkpoints' ``model_name_or_path``): a stage-1 run from the base model, a
stage-2 or stage-3 run (train_lm_head.py, train_full.py) from the checkpoint it continued. A stage-2/3 run is
titled by its stage and that start, its table has the start's scores as a reference row when they were evaluated,
and its checkpoints are compared with the start rather than only with the original base.

Writes to --output_dir:
- ``report.md``: per run, one table: the reference models (the start, and the base models: eval results of
  models no run trained), then each evaluated checkpoint by step, with acc_en, acc_ko, agreement, kappa (of the
  chosen task pair) and cos, gap, retrieval ko->en / en->ko of the representation at the trained layer
  (eval_agreement's "representation": pooled as the run trained, so a base row is pooled as that run at its
  step 0; when the base was evaluated without that pooling, its per-layer metrics at the run's layer when the
  pooling matches, else "-"). Each number carries its 95% interval ``0.2810 [0.255, 0.307]`` when the eval
  results have one. When paired comparisons are known, each checkpoint's agreement is compared with the run's
  start and with the previous evaluated checkpoint: ``delta [paired interval] p=McNemar``, ``*`` when the
  interval excludes 0; a table per run gives the same for acc_en and acc_ko. A comparison comes from the
  checkpoint's results.json ("compare") when both models were in one eval call, else it is computed here from
  both models' per-item files (``<pair>.items.jsonl``) with the eval call's --bootstrap_iters and --seed.
- ``report.json``: the same rows and comparisons, machine-readable.
- ``agreement_vs_step.png``: a row of panels per run (so each stage has its own step axis), a column per score:
  acc_en, acc_ko and agreement against the step with their intervals as bands, the start (black, dashed) and
  the base models as horizontal lines with their intervals as light bands.
- ``training_curves.png``: from each run's log.jsonl, one line per run: stage 1's cl_loss, lm_loss, the
  validation gap, retrieval both ways and parallel cosine, and in one panel the CL/LM gradient cosines
  (grad_cos/<group>) when logged (--grad_conflict_steps); stages 2 and 3's training loss and Korean and English
  validation perplexity (log scale). Each panel only when some run logged its key.
- ``layer_weights.png``: per layer-mixture run (--mix_layers), each layer's weight against the step; not written
  when no run mixes layers (a single-layer run has no weights to draw).
- ``layer_alignment.png``: per layer, raw cosine, gap, debiased CKA and the language probe of the base models and
  of each run's newest evaluated checkpoint, one figure (eval results from this version on).
A series with a single point is drawn as a marker (with its error bar), never as a line.
"""

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from common.args import parse_arguments
from common.cli import run_main
from evaluation import STEP_RE
from evaluation.compare import COMPARED, compare_rows, pair_counts, read_items
from evaluation.render import (
    SCORE_STYLE,
    baseline_band,
    excludes_zero,
    fmt_ci,
    fmt_delta,
    json_safe,
    plot_layers,
    pyplot,
    with_band,
)
from evaluation.representation import describe_pooling, pooling_key, stage_of, trained_pooling

logger = logging.getLogger("report")

CURVES = [  # (log key, axis label): the training curves, in panel order
    ("cl_loss", "contrastive loss"), ("lm_loss", "LM loss"), ("eval/gap", "validation gap (parallel - random cos)"),
    ("eval/retrieval_ko_en", "validation retrieval ko->en (P@1)"),
    ("eval/retrieval_en_ko", "validation retrieval en->ko (P@1)"), ("eval/parallel_cos", "validation parallel cos"),
    ("loss", "training loss (stages 2, 3)"), ("eval/ko_perplexity", "validation perplexity, Korean"),
    ("eval/en_perplexity", "validation perplexity, English"),
]
STAGES = {1: "stage 1 (contrastive)", 2: "stage 2 (LM head)", 3: "stage 3 (full model)"}
SCORES = ("acc_en", "acc_ko", "agreement", "kappa")
REP = ("parallel_cos", "gap", "retrieval_ko_en", "retrieval_en_ko")


@dataclass
class Arguments:
    inputs: list[str] = field(default_factory=list, metadata={"help": (
        "Run folders, eval_agreement output folders (results.json), or folders holding them one level down. "
        "Usually positional: `report.py runs/seed/stage1/* runs/seed/eval/*`."
    )})
    output_dir: str = field(default="runs/report", metadata={"help": "Where report.md, report.json and the PNGs go."})
    pair: str | None = field(default=None, metadata={"help": (
        "The task pair whose scores fill the tables, 'EN_TASK:KO_TASK'. Unset: the first pair in the results."
    )})
    plots: bool = field(default=True, metadata={"help": "Write the PNG plots; --no_plots skips them."})


class ReportError(ValueError):
    """Bad input: the message says what and where (one line through common.cli.run_main)."""


# ----------------------------------------------------------------------------- reading


def is_run(folder: Path) -> bool:
    return (folder / "log.jsonl").is_file() or any(
        p.is_dir() and STEP_RE.search(p.name) and not p.name.endswith(".tmp") for p in folder.glob("checkpoint-*"))


def discover(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """(run folders, eval folders) among ``inputs`` and, for a folder that is neither, its subfolders."""
    runs, evals = [], []

    def classify(folder: Path) -> bool:
        if (folder / "results.json").is_file():
            evals.append(folder.resolve())
        elif is_run(folder):
            runs.append(folder.resolve())
        else:
            return False
        return True

    for name in inputs:
        folder = Path(name)
        if not folder.is_dir():
            raise ReportError(f"{name}: no such folder")
        if not classify(folder):
            found = [classify(sub) for sub in sorted(folder.iterdir()) if sub.is_dir()]
            if not any(found):
                raise ReportError(f"{name}: neither a run folder (log.jsonl, checkpoint-*), an eval_agreement output "
                                  "(results.json), nor a folder holding them")
    return sorted(set(runs)), sorted(set(evals))


def read_log(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ReportError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return records


def read_results(evals: list[Path]) -> dict[str, dict]:
    """{model source: result} over every eval folder; a model evaluated in several, from the newest file."""
    by_source: dict[str, tuple[float, dict]] = {}
    for folder in evals:
        path = folder / "results.json"
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ReportError(f"{path}: cannot read eval results ({e})") from None
        mtime = path.stat().st_mtime
        peers = {r.get("source", label): label for label, r in results.items()}  # the labels of "compare"
        for label, r in results.items():
            source = r.get("source", label)
            if source not in by_source or mtime > by_source[source][0]:
                by_source[source] = (mtime, {**r, "label": label, "results_file": str(path), "peers": peers})
    return {source: r for source, (_, r) in by_source.items()}


def pair_names(results: dict[str, dict]) -> list[str]:
    names = []
    for r in results.values():
        for key, value in r.items():
            if isinstance(value, dict) and "agreement" in value and "acc_en" in value and key not in names:
                names.append(key)
    return names


def checkpoint_of(source: str) -> tuple[Path, int] | None:
    """(run folder, step) of a checkpoint-like model folder; None for a base model."""
    m = STEP_RE.search(Path(source).name)
    return (Path(source).parent, int(m.group(1))) if m and os.path.isabs(source) else None


# ----------------------------------------------------------------------------- the tables


def representation_for(result: dict, key: tuple | None, layer: int | None) -> tuple[dict | None, str]:
    """The metrics of ``result`` pooled as ``key`` (``eval_agreement.pooling_key``): its "representation(s)"
    with that key, else its per-layer metrics at ``layer`` when pooled alike; and where they come from."""
    for rep in result.get("representations") or ([result["representation"]] if result.get("representation") else []):
        if key is None or pooling_key(rep["pooled"]) == key:
            return rep, "representation"
    pooled = result.get("layers_pooled")
    if key is not None and layer is not None and result.get("layers") and pooled and len(key[0]) == 1:
        if (pooled["pooling"], bool(pooled["include_bos"]), int(pooled["max_seq_length"])) == key[1:4]:
            if layer < len(result["layers"]):
                return result["layers"][layer], "per-layer"
    return None, "-"


def run_pooling(run: Path, rows: list[dict]) -> dict | None:
    """How the run pooled: from an evaluated checkpoint's representation, else from a checkpoint folder."""
    for r in reversed(rows):  # the newest checkpoint's weights describe a mixture
        rep = r["result"].get("representation")
        if rep and rep["pooled"].get("trained_by"):
            return rep["pooled"]
    for ckpt in sorted(run.glob("checkpoint-*")):
        if STEP_RE.search(ckpt.name) and (ckpt / "training_args.json").is_file():
            spec = trained_pooling(str(ckpt))
            if spec is not None:
                return spec
    return None


def score_row(result: dict, pair: str | None) -> dict:
    """The task scores of ``result`` on ``pair`` and their intervals (``<metric>_ci``, None when not computed)."""
    stats = result.get(pair, {}) if pair else {}
    return ({k: stats.get(k) for k in SCORES} | {f"{k}_ci": stats.get(f"{k}_ci") for k in SCORES}
            | {"n_items": stats.get("n_items")})


def rep_row(rep: dict | None) -> dict:
    return {k: rep.get(k) if rep else None for k in REP} | {f"{k}_ci": rep.get(f"{k}_ci") if rep else None
                                                             for k in REP}


def same_model(a: str | None, b: str | None) -> bool:
    """Whether two model names are the same model: the same folder (links and relative paths resolved), or the
    same hub id."""
    if not a or not b:
        return False
    if os.path.isdir(a) and os.path.isdir(b):
        return os.path.samefile(a, b)
    return a == b


def run_start(folder: Path, rows: list[dict]) -> tuple[int | None, str | None]:
    """(stage, starting model) of a run, from the training_args.json of its first checkpoint that has one: the
    stage (1, 2 or 3, ``stage_of``) and the ``model_name_or_path`` it started from; (None, None) without one."""
    ckpts = [Path(r["result"]["source"]) for r in rows]
    ckpts += sorted(p for p in folder.glob("checkpoint-*") if STEP_RE.search(p.name) and not p.name.endswith(".tmp"))
    for ckpt in ckpts:
        path = ckpt / "training_args.json"
        if path.is_file():
            try:
                start = json.loads(path.read_text(encoding="utf-8")).get("model_name_or_path")
            except json.JSONDecodeError as e:
                raise ReportError(f"{path}: not valid JSON ({e.msg})") from None
            return stage_of(str(ckpt)), start
    return None, None


def short_name(source: str, common: Path | None) -> str:
    """A model folder named by its path below the runs' common parent (``run/checkpoint-400``), else by its last
    two path parts; a hub id as is."""
    path = Path(source)
    if not path.is_absolute():
        return source
    if common is not None and path.is_relative_to(common) and path != common:
        return str(path.relative_to(common))
    return str(Path(*path.parts[-2:]))


def items_comparison(result: dict, other: dict, pair: str) -> dict | None:
    """The paired comparison of two models evaluated in different eval calls, from their per-item files
    (eval_agreement's ``<output_dir>/<label>/<pair>.items.jsonl``), with the resamples the eval call of
    ``result`` drew (its eval_args.json: --bootstrap_iters, --seed, --ci_level; clustered by the items' cluster
    field): the numbers eval_agreement would give for the two in one call. None when a file is missing or the
    two were scored on different items."""
    files = [Path(r["results_file"]).parent / r["label"] / f"{pair}.items.jsonl" for r in (result, other)]
    args_file = Path(result["results_file"]).parent / "eval_args.json"
    if not all(f.is_file() for f in files) or not args_file.is_file():
        return None
    eval_args = json.loads(args_file.read_text(encoding="utf-8"))
    mine, theirs = read_items(files[0]), read_items(files[1])
    clusters = None
    if mine and all("cluster" in row for row in mine):
        clusters = [tuple(c) if isinstance(c, list) else c for c in (row["cluster"] for row in mine)]
    counts = pair_counts(len(mine), int(eval_args.get("bootstrap_iters", 0)), int(eval_args.get("seed", 0)),
                         clusters)
    try:
        return compare_rows(mine, theirs, counts, float(eval_args.get("ci_level", 0.95)))
    except ValueError as e:
        logger.warning("%s against %s: no paired comparison (%s)", result["label"], other["label"], e)
        return None


def comparison(result: dict, other: dict | None, pair: str | None) -> dict | None:
    """{metric: {"delta", "ci", "p_mcnemar", "n_discordant"}} of ``result`` against ``other`` on ``pair``: from
    ``result``'s results.json when ``other`` was in the same eval call, else from both models' item files."""
    if other is None or pair is None or pair not in result or pair not in other:
        return None
    label = result.get("peers", {}).get(other["source"])
    found = ((result.get("compare") or {}).get(label) or {}).get(pair) if label is not None else None
    return found or items_comparison(result, other, pair)


def build(runs: list[Path], results: dict[str, dict], pair: str | None) -> dict:
    """The report as data: {"pair", "evaluated", "baselines": [...], "runs": [{"run", "folder", "stage", "start",
    "title", "pooled", "rows", "log"}]}. A row: model, step, base (a reference row: the start or a base model),
    start, the scores and representation metrics with their ``*_ci``, and for a checkpoint ``compare``:
    {"start": {"against", metric: {...}} | None, "previous": ... | None}."""
    per_run: dict[Path, list[dict]] = {run: [] for run in runs}
    baselines = []
    for source, r in results.items():
        where = checkpoint_of(source)
        if where is None:
            baselines.append(r)
        else:
            per_run.setdefault(where[0], []).append({"step": where[1], "result": r})
    folders = sorted(per_run)
    common = Path(os.path.commonpath([str(f) for f in folders])) if folders else None
    out = {"pair": pair, "evaluated": bool(results), "baselines": [], "runs": []}
    for r in baselines:
        out["baselines"].append({"model": r["label"], "source": r["source"], **score_row(r, pair),
                                 "results_file": r["results_file"]})
    for folder in folders:
        name = str(folder.relative_to(common)) if common and len(folders) > 1 else folder.name
        rows = sorted(per_run[folder], key=lambda x: x["step"])
        spec = run_pooling(folder, rows)
        key = pooling_key(spec) if spec else None
        layer = None
        if spec and len(spec["layers"]) == 1:
            layer = spec["layers"][0]
        stage, start = run_start(folder, rows)
        start_result = next((r for s, r in results.items() if same_model(s, start)), None)
        if start_result is None and stage == 1 and len(baselines) == 1:
            start_result = baselines[0]  # the base model, evaluated under another name (a hub id, a copy)
        references = [r for r in baselines if r is not start_result]
        table = []

        def reference_row(r: dict, model: str, is_start: bool) -> dict:
            rep, origin = representation_for(r, key, layer) if spec else (None, "-")
            return {"model": model, "step": 0, "base": True, "start": is_start, **score_row(r, pair),
                    **rep_row(rep), "cos_from": origin, "source": r["source"]}

        if start_result is not None:  # a base model keeps its name; a checkpoint is named below the runs
            is_base = checkpoint_of(start_result["source"]) is None
            table.append(reference_row(start_result, f"base: {start_result['label']}" if is_base
                                       else f"start: {short_name(start_result['source'], common)}", True))
        table += [reference_row(r, f"base: {r['label']}", False) for r in references]
        previous = None
        for row in rows:
            r = row["result"]
            rep, origin = representation_for(r, None, None)
            if rep is None and layer is not None:
                rep, origin = representation_for(r, key, layer)
            compare = {}
            for what, other in (("start", start_result), ("previous", previous)):
                c = comparison(r, other, pair)  # "marked": the mark of report.md, the interval excludes 0
                compare[what] = ({"against": other["label"], **{k: {**v, "marked": excludes_zero(v.get("ci"))}
                                                               for k, v in c.items()}} if c else None)
            table.append({"model": Path(r["source"]).name, "step": row["step"], "base": False, "start": False,
                          **score_row(r, pair), **rep_row(rep), "cos_from": origin, "source": r["source"],
                          "label": f"{name}/{Path(r['source']).name}", "compare": compare})
            previous = r
        short = None
        if stage in (2, 3):  # its pooling is only that of the stage-1 ancestor its cos is measured at
            short = f"{STAGES[stage]} from {short_name(start, common) if start else '?'}"
            title = short + (f"; cos pooled as its stage-1 ancestor: {describe_pooling(spec)}" if spec else "")
        else:
            title = describe_pooling(spec) if spec else None
        out["runs"].append({"run": name, "folder": str(folder), "stage": stage, "start": start, "title": title,
                            "short_title": short or title, "pooled": describe_pooling(spec) if spec else None,
                            "rows": table, "log": read_log(folder)})
    out["runs"].sort(key=lambda run: run["stage"] or 1)  # stage 1 runs, then 2, then 3: the order they chain in
    # per-layer alignment of the base models and of each run's newest evaluated checkpoint (layer_alignment.png)
    out["layer_curves"] = {f"base: {r['label']}": r["layers"] for r in baselines if r.get("layers")}
    for run in out["runs"]:
        newest = next((r["result"] for r in reversed(sorted(per_run[Path(run["folder"])], key=lambda x: x["step"]))
                       if r["result"].get("layers")), None)
        if newest is not None:
            out["layer_curves"][f"{run['run']}/{Path(newest['source']).name}"] = newest["layers"]
    return out


def delta_cell(row: dict, what: str, metric: str = "agreement") -> str:
    c = (row.get("compare") or {}).get(what)
    return fmt_delta(c[metric]) if c and c.get(metric) else "-"


def markdown(report: dict) -> str:
    pair = report["pair"]
    n_runs, n_bases = len(report["runs"]), len(report["baselines"])
    lines = [f"# Report: {n_runs} run{'s' * (n_runs != 1)}, {n_bases} base model{'s' * (n_bases != 1)}", ""]
    if pair:
        n = {row.get("n_items") for run in report["runs"] for row in run["rows"]} - {None}
        lines.append(f"Task pair: {pair.replace('__', ' / ')} ({', '.join(map(str, sorted(n))) or '?'} items). "
                     "cos, gap, retrieval: the representation at the trained layer (eval_agreement's "
                     "\"representation\": pooled as the run trained; a base model pooled as the run at step 0).")
    elif not report.get("evaluated", True):
        lines.append("No eval results among the inputs (no results.json): training curves only. Evaluate the "
                     "checkpoints with eval_agreement.py and pass its --output_dir here for the tables.")
    else:
        lines.append("No task scores in the eval results (--skip_tasks): representation metrics only.")
    if any(row["model"].startswith("start: ") for run in report["runs"] for row in run["rows"]):
        lines.append("")
        lines.append("start: the checkpoint a stage-2/3 run started from (its model_name_or_path), at step 0.")
    compared = any(c for run in report["runs"] for row in run["rows"] for c in (row.get("compare") or {}).values())
    intervals = any(row.get(f"{k}_ci") for run in report["runs"] for row in run["rows"] for k in (*SCORES, *REP))
    head = ["model", "step", "acc_en", "acc_ko", "agreement", "kappa", "cos", "gap", "retrieval ko->en",
            "retrieval en->ko"] + (["agreement vs start", "agreement vs previous"] if compared else [])
    for run in report["runs"]:
        lines += ["", f"## {run['run']}" + (f" ({run['title']})" if run["title"] else ""), ""]
        if all(row["base"] for row in run["rows"]):  # the reference rows alone are no table of this run
            lines.append("No evaluated checkpoint: no eval results among the inputs name a checkpoint of this run."
                         if report.get("evaluated", True) else "No evaluated checkpoint.")
            continue
        lines += [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
        for row in run["rows"]:
            cells = [row["model"], str(row["step"])] + [fmt_ci(row, k) for k in (*SCORES, *REP)]
            if row["cos_from"] == "per-layer":
                cells[6] += " (L)"
            if compared:
                cells += ["", ""] if row["base"] else [delta_cell(row, "start"), delta_cell(row, "previous")]
            lines.append(f"| {' | '.join(cells)} |")
        pairs = [(row, what) for row in run["rows"] for what in ("start", "previous")
                 if not row["base"] and (row.get("compare") or {}).get(what)]
        if pairs:
            lines += ["", "| checkpoint | against | " + " | ".join(f"delta {k}" for k in COMPARED) + " |",
                      "|---|---|" + "---|" * len(COMPARED)]
            for row, what in pairs:
                c = row["compare"][what]
                lines.append(f"| {row['model']} | {what}: {c['against']} | "
                             + " | ".join(delta_cell(row, what, k) for k in COMPARED) + " |")
    if any(row["cos_from"] == "per-layer" for run in report["runs"] for row in run["rows"]):
        lines += ["", "(L): the base model's per-layer metrics at the run's layer (it was not evaluated pooled as "
                  "that run; same pooling, batching aside)."]
    if intervals:
        lines += ["", "[lo, hi]: 95% bootstrap interval over the items (eval_agreement's --bootstrap_iters)."]
    if compared:
        lines += ["", "vs start / vs previous: the checkpoint minus the model its run started from (the base model "
                  "for stage 1, the continued checkpoint for stages 2 and 3), and minus the previous evaluated "
                  "checkpoint of the run, on the same items: delta [95% paired bootstrap interval] p = exact "
                  "McNemar on the discordant items (for agreement, the items whose agree/disagree status flipped); "
                  "* = the interval excludes 0 (a difference the items support); no * = no evidence of a "
                  "difference."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def series(ax, xs, ys, **kw) -> None:
    """A line with markers, or a marker alone for a single point (no one-point line plots)."""
    points = [(x, y) for x, y in zip(xs, ys) if y is not None and not (isinstance(y, float) and math.isnan(y))]
    if not points:
        return
    xs, ys = zip(*points)
    if len(xs) == 1:
        ax.plot(xs, ys, linestyle="none", marker=kw.pop("marker", "o"), **kw)
    else:
        ax.plot(xs, ys, marker=kw.pop("marker", "."), **kw)


def step_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def grid(plt, n: int, width: float = 5.0, height: float = 3.6):
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


REFERENCE_STYLE = (("black", "--"), ("tab:gray", ":"), ("tab:brown", "-."), ("tab:pink", ":"))


def plot_scores(plt, path: Path, report: dict) -> bool:
    """A row of panels per run with evaluated checkpoints (so each stage keeps its own step axis), a column per
    score (acc_en, acc_ko, agreement): the checkpoints' score against the step with its interval as a band (a
    marker and an error bar for one checkpoint); the run's start (dashed, black) and the other base models as
    horizontal lines with their intervals as light bands."""
    runs = [run for run in report["runs"] if any(not row["base"] and row["agreement"] is not None
                                                 for row in run["rows"])]
    if not runs:
        return False
    fig, grid_axes = plt.subplots(len(runs), len(SCORE_STYLE), figsize=(5.2 * len(SCORE_STYLE), 4.4 * len(runs)),
                                  squeeze=False)
    for axes, run in zip(grid_axes, runs):
        ckpts = [row for row in run["rows"] if not row["base"]]
        refs = sorted((row for row in run["rows"] if row["base"]), key=lambda row: not row["start"])
        stage = f"stage {run['stage']}" if run.get("stage") else "run"
        for ax, (key, (color, marker)) in zip(axes, SCORE_STYLE.items()):
            with_band(ax, [row["step"] for row in ckpts], [row[key] for row in ckpts],
                      [row.get(f"{key}_ci") for row in ckpts], color, f"{run['run']} checkpoints", marker=marker)
            others = 0
            for ref in refs:  # the start in black, dashed; the other base models in the other styles
                ref_color, style = REFERENCE_STYLE[0 if ref["start"] else 1 + others % (len(REFERENCE_STYLE) - 1)]
                others += not ref["start"]
                baseline_band(ax, ref[key], ref.get(f"{key}_ci"), ref_color, ref["model"], style)
            ax.set_title(f"{run['run']}: {key}" + (f"\n{run['short_title']}" if run.get("short_title") else ""),
                         fontsize=10)
            step_axis(ax)
            steps = sorted({row["step"] for row in ckpts})
            if len(steps) <= 8:
                ax.set_xticks(steps)
                if len(steps) == 1:
                    ax.set_xlim(steps[0] - 1, steps[0] + 1)
            ax.set_xlabel(f"training step ({stage})")
            ax.set_ylabel(f"{key} (95% interval)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_curves(plt, path: Path, report: dict) -> bool:
    """One panel per logged curve, one line per run (a run keeps its colour); the gradient cosines of the
    contrastive and LM losses (grad_cos/<group>, when logged) share one panel, a line per run and group."""
    keys = [(k, label) for k, label in CURVES if any(k in rec for run in report["runs"] for rec in run["log"])]
    grad = sorted({k for run in report["runs"] for rec in run["log"] for k in rec if k.startswith("grad_cos")})
    panels = keys + ([("grad_cos", "cosine of the CL and LM gradients")] if grad else [])
    if not panels:
        return False
    fig, axes = grid(plt, len(panels))
    for ax, (key, label) in zip(axes, panels):
        for i, run in enumerate(report["runs"]):
            for k in (grad if key == "grad_cos" else [key]):
                points = [(rec["step"], rec[k]) for rec in run["log"] if k in rec]
                if points:
                    name = run["run"] if key != "grad_cos" else f"{run['run']}: {k.partition('/')[2] or k}"
                    series(ax, [p[0] for p in points], [p[1] for p in points], label=name,
                           color=f"C{i % 10}" if key != "grad_cos" else None)
        step_axis(ax)
        ax.set_xlabel("training step (each run its own)")
        if "perplexity" in key:
            ax.set_yscale("log")  # a random start's perplexity is the vocabulary size, orders above the end
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_layer_weights(plt, path: Path, report: dict) -> bool:
    runs = [(run, sorted({int(k.split("/")[1]) for rec in run["log"] for k in rec if k.startswith("layer_weight/")}))
            for run in report["runs"]]
    runs = [(run, layers) for run, layers in runs if layers]
    if not runs:
        return False
    fig, axes = grid(plt, len(runs), width=6.0)
    cmap = plt.get_cmap("viridis")
    for ax, (run, layers) in zip(axes, runs):
        for i, layer in enumerate(layers):
            key = f"layer_weight/{layer}"
            points = [(rec["step"], rec[key]) for rec in run["log"] if key in rec]
            series(ax, [p[0] for p in points], [p[1] for p in points], label=f"layer {layer}",
                   color=cmap(i / max(1, len(layers) - 1)))
        ax.set_title(f"{run['run']}: mixture weights", fontsize=9)
        step_axis(ax)
        ax.set_ylabel("layer weight (softmax)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=max(1, len(layers) // 8))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


LAYER_MEASURES = [("parallel_cos", "parallel cosine (raw)"), ("gap", "parallel - random cosine"),
                  ("cka_debiased", "CKA, debiased (1 = same geometry)"),
                  ("language_probe", "language probe accuracy (0.5 = agnostic)")]


def plot_layer_alignment(plt, path: Path, report: dict) -> bool:
    """One figure: per layer, raw cosine, gap, debiased CKA and the language probe of the base models and of each
    run's newest evaluated checkpoint (both languages through the model; bands where intervals exist). CKA and the
    probe read the same whether or not the two languages' spaces differ, which raw cosine does not."""
    curves = report.get("layer_curves") or {}
    if not curves or not any("cka_debiased" in m for layers in curves.values() for m in layers):
        return False
    plot_layers(plt, path, curves, panels=LAYER_MEASURES)
    return True


def write_plots(out_dir: Path, report: dict) -> list[str]:
    plt = pyplot()
    if plt is None:
        return []
    written = []
    for name, plot in (("agreement_vs_step.png", plot_scores), ("training_curves.png", plot_curves),
                       ("layer_weights.png", plot_layer_weights), ("layer_alignment.png", plot_layer_alignment)):
        if plot(plt, out_dir / name, report):
            written.append(name)
        elif name == "layer_weights.png":
            logger.info("no layer-mixture run (--mix_layers): no layer_weights.png")
    return written


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(Arguments, argv, positional="inputs",
                           usage="report.py RUN_OR_EVAL_DIR [...] [--output_dir DIR] [--pair EN:KO]")
    if not args.inputs:
        raise ReportError("no input: report.py RUN_OR_EVAL_DIR [...] --output_dir DIR")
    runs, evals = discover(args.inputs)
    results = read_results(evals)
    names = pair_names(results)
    pair = None
    if args.pair:
        pair = args.pair.replace(":", "__")
        if pair not in names:
            raise ReportError(f"--pair {args.pair}: not in the eval results (pairs there: {names or 'none'})")
    elif names:
        pair = names[0]
    report = build(runs, results, pair)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(markdown(report), encoding="utf-8")
    report["plots"] = write_plots(out_dir, report) if args.plots else []
    saved = {**report, "runs": [{k: v for k, v in run.items() if k != "log"} for run in report["runs"]]}
    (out_dir / "report.json").write_text(json.dumps(json_safe(saved), indent=2, ensure_ascii=False,
                                                    default=str), encoding="utf-8")
    print((out_dir / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {out_dir / 'report.md'}, report.json" + "".join(f", {p}" for p in report["plots"]))
    return report


if __name__ == "__main__":
    run_main(main)
