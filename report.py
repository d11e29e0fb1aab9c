"""One report across runs: the research's tables and plots, from eval_agreement.py outputs and training logs.

    python report.py runs/seed/stage1/* runs/seed/eval/* --output_dir runs/seed/report
    python report.py runs/ --output_dir runs/report        # a folder of runs and eval outputs, one level down
    python report.py runs/seed/stage1/layer1 runs/seed/eval/layer1 --pair koen_arc_challenge_en:koen_arc_challenge_ko

Inputs are run folders (a trainer's output_dir: ``log.jsonl``, ``checkpoint-{step}/``), eval output folders
(eval_agreement.py's ``results.json``), or folders holding either one level down. A checkpoint's scores come
from the eval results whose ``source`` is that checkpoint folder (the newest results.json wins when several
evaluated it); its run is the checkpoint's parent folder, named by its path below the runs' common parent.

Writes to --output_dir:
- ``report.md``: per run, one table: the base models (eval results of models no run trained), then each
  evaluated checkpoint by step, with acc_en, acc_ko, agreement, kappa (of the chosen task pair) and cos, gap,
  retrieval ko->en / en->ko of the representation at the trained layer (eval_agreement's "representation":
  pooled as the run trained, so a base row is pooled as that run at its step 0; when the base was evaluated
  without that pooling, its per-layer metrics at the run's layer when the pooling matches, else "-").
- ``report.json``: the same rows, machine-readable.
- ``agreement_vs_step.png``: per run, acc_en, acc_ko and agreement against the step, the base models dashed.
- ``training_curves.png``: from each run's log.jsonl, one line per run: cl_loss, lm_loss, the validation gap,
  retrieval both ways and parallel cosine, and in one panel the CL/LM gradient cosines (grad_cos/<group>) when
  logged (--grad_conflict_steps).
- ``layer_weights.png``: per mixture run, each layer's weight against the step.
A series with a single point is drawn as a marker, never as a line.
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
from evaluation.render import fmt, json_safe
from evaluation.representation import describe_pooling, pooling_key, trained_pooling

logger = logging.getLogger("report")

CURVES = [  # (log key, axis label): the training curves, in panel order
    ("cl_loss", "contrastive loss"), ("lm_loss", "LM loss"), ("eval/gap", "validation gap (parallel - random cos)"),
    ("eval/retrieval_ko_en", "validation retrieval ko->en (P@1)"),
    ("eval/retrieval_en_ko", "validation retrieval en->ko (P@1)"), ("eval/parallel_cos", "validation parallel cos"),
]
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
        for label, r in results.items():
            source = r.get("source", label)
            if source not in by_source or mtime > by_source[source][0]:
                by_source[source] = (mtime, {**r, "label": label, "results_file": str(path)})
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
    stats = result.get(pair, {}) if pair else {}
    return {k: stats.get(k) for k in SCORES} | {"n_items": stats.get("n_items")}


def build(runs: list[Path], results: dict[str, dict], pair: str | None) -> dict:
    """The report as data: {"pair", "baselines": [...], "runs": [{"run", "folder", "pooled", "rows"}]}."""
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
    out = {"pair": pair, "baselines": [], "runs": []}
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
        table = []
        for r in baselines:
            rep, origin = representation_for(r, key, layer) if spec else (None, "-")
            table.append({"model": f"base: {r['label']}", "step": 0, "base": True, **score_row(r, pair),
                          **{k: rep.get(k) if rep else None for k in REP}, "cos_from": origin, "source": r["source"]})
        for row in rows:
            r = row["result"]
            rep, origin = representation_for(r, None, None)
            if rep is None and layer is not None:
                rep, origin = representation_for(r, key, layer)
            table.append({"model": Path(r["source"]).name, "step": row["step"], "base": False, **score_row(r, pair),
                          **{k: rep.get(k) if rep else None for k in REP}, "cos_from": origin, "source": r["source"],
                          "label": f"{name}/{Path(r['source']).name}"})
        out["runs"].append({"run": name, "folder": str(folder), "pooled": describe_pooling(spec) if spec else None,
                            "rows": table, "log": read_log(folder)})
    return out


def markdown(report: dict) -> str:
    pair = report["pair"]
    n_runs, n_bases = len(report["runs"]), len(report["baselines"])
    lines = [f"# Report: {n_runs} run{'s' * (n_runs != 1)}, {n_bases} base model{'s' * (n_bases != 1)}", ""]
    if pair:
        n = {row.get("n_items") for run in report["runs"] for row in run["rows"]} - {None}
        lines.append(f"Task pair: {pair.replace('__', ' / ')} ({', '.join(map(str, sorted(n))) or '?'} items). "
                     "cos, gap, retrieval: the representation at the trained layer (eval_agreement's "
                     "\"representation\": pooled as the run trained; a base model pooled as the run at step 0).")
    else:
        lines.append("No task scores in the eval results (--skip_tasks): representation metrics only.")
    head = ["model", "step", "acc_en", "acc_ko", "agreement", "kappa", "cos", "gap", "retrieval ko->en",
            "retrieval en->ko"]
    for run in report["runs"]:
        lines += ["", f"## {run['run']}" + (f" ({run['pooled']})" if run["pooled"] else ""), ""]
        if not run["rows"]:
            lines.append("No evaluated checkpoint.")
            continue
        lines += [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
        for row in run["rows"]:
            cells = [row["model"], str(row["step"])] + [fmt(row[k]) for k in (*SCORES, *REP)]
            if row["cos_from"] == "per-layer":
                cells[6] += " (L)"
            lines.append(f"| {' | '.join(cells)} |")
    if any(row["cos_from"] == "per-layer" for run in report["runs"] for row in run["rows"]):
        lines += ["", "(L): the base model's per-layer metrics at the run's layer (it was not evaluated pooled as "
                  "that run; same pooling, batching aside)."]
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


def plot_scores(plt, path: Path, report: dict) -> bool:
    runs = [run for run in report["runs"] if any(not row["base"] and row["agreement"] is not None
                                                 for row in run["rows"])]
    if not runs:
        return False
    fig, axes = grid(plt, len(runs))
    colors = {"acc_en": "tab:blue", "acc_ko": "tab:orange", "agreement": "tab:green"}
    for ax, run in zip(axes, runs):
        ckpts = [row for row in run["rows"] if not row["base"]]
        for key, color in colors.items():
            series(ax, [row["step"] for row in ckpts], [row[key] for row in ckpts], color=color,
                   label=f"{run['run']}: {key}")
        for i, base in enumerate(row for row in run["rows"] if row["base"]):
            for key, color in colors.items():
                if base[key] is not None:
                    ax.axhline(base[key], color=color, linestyle=("--", ":", "-.")[i % 3], linewidth=1,
                               label=f"{base['model']}: {key}")
        ax.set_title(run["run"] + (f"\n{run['pooled']}" if run["pooled"] else ""), fontsize=9)
        step_axis(ax)
        ax.set_ylabel("accuracy / agreement")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
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
        ax.legend(fontsize=6, ncol=max(1, len(layers) // 8))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_plots(out_dir: Path, report: dict) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no PNG plots")
        return []
    written = []
    for name, plot in (("agreement_vs_step.png", plot_scores), ("training_curves.png", plot_curves),
                       ("layer_weights.png", plot_layer_weights)):
        if plot(plt, out_dir / name, report):
            written.append(name)
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
