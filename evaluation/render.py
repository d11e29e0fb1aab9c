"""Tables and plots of evaluation results: results.md and the PNGs of eval_agreement.py, and the pieces report.py
draws with."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from evaluation import STEP_RE
from evaluation.representation import describe_pooling, stage_of

if TYPE_CHECKING:  # the argument dataclass of eval_agreement.py
    from eval_agreement import Arguments

logger = logging.getLogger("eval_agreement")


def fmt(x, digits=4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def fmt_ci(stats: dict, key: str, digits: int = 4) -> str:
    """``stats[key]`` with its interval ``stats[key + "_ci"]`` when there is one: ``0.2810 [0.255, 0.307]``."""
    ci = stats.get(f"{key}_ci")
    text = fmt(stats.get(key), digits)
    if ci and ci[0] is not None and stats.get(key) is not None:
        text += f" [{ci[0]:.{digits - 1}f}, {ci[1]:.{digits - 1}f}]"
    return text


def excludes_zero(ci) -> bool:
    """Whether an interval of a difference lies wholly on one side of 0 (the difference is a finding)."""
    return bool(ci) and ci[0] is not None and (ci[0] > 0 or ci[1] < 0)


def fmt_delta(c: dict) -> str:
    """A paired comparison ``{"delta", "ci", "p_mcnemar"}``: ``+0.0250 [0.004, 0.046] p=0.021 *``, the mark when
    the interval excludes 0."""
    text = f"{c['delta']:+.4f}"
    if c.get("ci") and c["ci"][0] is not None:
        text += f" [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"
    text += f" p={c['p_mcnemar']:.3g}"
    return text + (" *" if excludes_zero(c.get("ci")) else "")


def report_layer_of(result: dict, spec: str) -> int | None:
    layers = result.get("layers")
    if not layers:
        return None
    if spec == "best":
        return result["best_layer"]
    if spec == "middle" or (spec == "trained" and result.get("trained_layer") is None):
        return (len(layers) - 1) // 2
    if spec == "trained":
        return min(result["trained_layer"], len(layers) - 1)
    return min(int(spec), len(layers) - 1)


def table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join([f"| {' | '.join(head)} |", "|" + "---|" * len(head)] + [f"| {' | '.join(r)} |" for r in rows])


def write_markdown(path: Path, results: dict, pairs: list[dict], args: Arguments) -> None:
    many = len(pairs) > 1
    head = ["model"]
    for p in pairs:
        suffix = f" ({p['en']}/{p['ko']})" if many else ""
        head += [f"{p['en']} acc", f"{p['ko']} acc", f"agreement{suffix}", f"kappa{suffix}",
                 f"both right / only EN / only KO / both wrong{suffix}"]
    has_rep = any(r.get("representation") for r in results.values())
    if has_rep:
        head += ["pooled (as trained)", "cos", "gap", "retrieval ko->en", "retrieval en->ko"]
    rows = []
    for model, r in results.items():
        row = [model]
        for p in pairs:
            s = r.get(p["name"])
            if s is None:
                row += ["-"] * 5
                continue
            t = s["table"]
            row += [fmt_ci(s, "acc_en"), fmt_ci(s, "acc_ko"), fmt_ci(s, "agreement"), fmt_ci(s, "kappa"),
                    f"{t['both_right']} / {t['only_en_right']} / {t['only_ko_right']} / {t['both_wrong']}"]
        if has_rep:
            rep = r.get("representation")
            if rep is None:
                row += ["-"] * 5
            else:
                row += [describe_pooling(rep["pooled"]) + (" (as step 0)" if rep["pooled"].get("like_run") else ""),
                        fmt_ci(rep, "parallel_cos"), fmt_ci(rep, "gap"), fmt_ci(rep, "retrieval_ko_en"),
                        fmt_ci(rep, "retrieval_en_ko")]
        rows.append(row)
    lines = [table(head, rows)]
    layer_rows = []
    for model, r in results.items():
        layer = report_layer_of(r, args.report_layer)
        if layer is not None:
            m, pooled = r["layers"][layer], r.get("layers_pooled", {})
            layer_rows.append([model, str(layer), fmt_ci(m, "parallel_cos"), fmt_ci(m, "gap"),
                               fmt_ci(m, "retrieval_ko_en"), fmt_ci(m, "retrieval_en_ko"),
                               fmt_ci(m, "retrieval_strict"), fmt(m.get("cka_debiased")), fmt_ci(m, "language_probe"),
                               str(r["best_layer"]),
                               pooled.get("pooling", "-") + (", BOS" if pooled.get("include_bos") else "")])
    if layer_rows:
        lines.append(f"\nPer-layer metrics (both languages through the model) at the reported layer "
                     f"({args.report_layer}):\n")
        lines.append(table(["model", "layer", "cos", "gap", "retrieval ko->en", "retrieval en->ko", "strict retrieval",
                            "CKA (debiased)", "language probe", "best layer", "pooling"], layer_rows))
    text = "# EN/KO agreement\n\n" + "\n".join(lines) + "\n"
    if pairs:
        norm_head = ["model"]
        for p in pairs:
            norm_head += [f"{p['en']} acc_norm", f"{p['ko']} acc_norm", "agreement", "kappa"]
        norm = [f"| {' | '.join(norm_head)} |", "|" + "---|" * len(norm_head)]
        for model, r in results.items():
            row = [model]
            for p in pairs:
                s = r.get(p["name"], {})
                row += [fmt_ci(s, "acc_norm_en"), fmt_ci(s, "acc_norm_ko"), fmt_ci(s, "agreement_norm"),
                        fmt_ci(s, "kappa_norm")]
            norm.append(f"| {' | '.join(row)} |")
        text += "\nWith acc_norm predictions (log-likelihood / characters of the choice):\n\n" + "\n".join(norm) + "\n"
    by_source = [(model, r) for model, r in results.items() if r.get("layers_by_source")]
    if by_source:
        src_head = ["model", "source", "pairs", "layer", "gap", "centred cos", "centred random cos",
                    "retrieval ko->en", "retrieval en->ko"]
        src = [f"| {' | '.join(src_head)} |", "|" + "---|" * len(src_head)]
        for model, r in by_source:
            layer = report_layer_of(r, args.report_layer)
            for source, layers in r["layers_by_source"].items():
                m = layers[layer]
                src.append(f"| {model} | {source} | {r['layer_pairs']['by_source'][source]} | {layer} | "
                           f"{fmt(m['gap'])} | {fmt(m['centred_cos'])} | {fmt(m['centred_random_cos'])} | "
                           f"{fmt(m['retrieval_ko_en'])} | {fmt(m['retrieval_en_ko'])} |")
        text += "\nLayer metrics per source (retrieval among the pairs of that source):\n\n" + "\n".join(src) + "\n"
    text += soft_and_suite_markdown(results, pairs) + comparisons_markdown(results, pairs)
    n = {p["name"]: len(p["en_idx"]) for p in pairs}
    text += f"\nItems per pair: {n}. Layers: 0 = embeddings, L = output of decoder layer L (N before the final norm); "
    text += (f"reported layer: {args.report_layer}. \"pooled (as trained)\": each checkpoint as its run pooled "
             "(training_args.json, layer_weights.json; English through the frozen starting model for a frozen run), "
             "each baseline as the runs it is compared with at their step 0.\n")
    sample = next((r["layer_pairs"] for r in results.values() if r.get("layer_pairs")), None)
    if sample:
        text += (f"Layer metrics on {sample['sampled']} of the {sample['rows_in_file']} pairs of "
                 f"{args.parallel_file} (seeded sample, seed {sample['seed']}, stratified by source: "
                 f"{sample['by_source']}).\n")
    path.write_text(text, encoding="utf-8")


SCORE_STYLE = {"acc_en": ("tab:blue", "o"), "acc_ko": ("tab:orange", "s"), "agreement": ("tab:green", "^")}
BASE_LINES = ("--", ":", "-.")


def with_band(ax, xs, ys, cis, color, label: str, marker: str = "o") -> None:
    """A series with its intervals: a line and a shaded band, or a marker with an error bar for one point (a
    one-point line would be invisible). Points whose value is missing are left out."""
    points = [(x, y, ci) for x, y, ci in zip(xs, ys, cis)
              if y is not None and not (isinstance(y, float) and math.isnan(y))]
    if not points:
        return
    xs, ys, cis = zip(*points)
    have = all(ci and ci[0] is not None for ci in cis)
    if len(xs) == 1:
        err = [[ys[0] - cis[0][0]], [cis[0][1] - ys[0]]] if have else None
        ax.errorbar(xs, ys, yerr=err, fmt=marker, color=color, capsize=3, label=label)
        return
    ax.plot(xs, ys, marker=marker, color=color, label=label)
    if have:
        ax.fill_between(xs, [c[0] for c in cis], [c[1] for c in cis], color=color, alpha=0.15, linewidth=0)


def baseline_band(ax, y, ci, color, label: str, linestyle: str = "--") -> None:
    """A baseline as a horizontal line, its interval as a light horizontal band."""
    if y is None:
        return
    ax.axhline(y, color=color, linestyle=linestyle, linewidth=1, label=label)
    if ci and ci[0] is not None:
        ax.axhspan(ci[0], ci[1], color=color, alpha=0.07, linewidth=0)


def stage_panels(results: dict, stepped: dict[str, int]) -> dict[int | None, dict[str, list]]:
    """{stage: {run folder: [(step, model)]}} of the checkpoint-like models: each training stage gets its own
    panels, since a stage-2 step 200 and a stage-1 step 200 are not one axis."""
    panels: dict[int | None, dict[str, list]] = {}
    for m, step in stepped.items():
        source = Path(results[m].get("source", m))
        panels.setdefault(stage_of(str(source)), {}).setdefault(source.parent.name or "run", []).append((step, m))
    return dict(sorted(panels.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))


def plot_accuracy_vs_step(plt, path: Path, results: dict, pairs: list[dict], stepped: dict[str, int]) -> None:
    """One panel per pair and training stage: acc_en, acc_ko and agreement against the step of the models named
    like a checkpoint (``stepped``: {model: step}) with their intervals as bands, one line per run folder; the
    baselines as horizontal lines with their intervals as light bands."""
    by_stage = stage_panels(results, stepped)
    baselines = [m for m, r in results.items() if r.get("role") == "baseline"]
    panels = [(p, stage, runs) for p in pairs for stage, runs in by_stage.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    for ax, (p, stage, runs) in zip(axes[0], panels):
        markers = "os^Dv<>"
        for k, (run, points) in enumerate(sorted(runs.items())):
            points = sorted(pt for pt in points if p["name"] in results[pt[1]])
            for key, (color, marker) in SCORE_STYLE.items():
                stats = [results[m][p["name"]] for _, m in points]
                with_band(ax, [s for s, _ in points], [st.get(key) for st in stats],
                          [st.get(f"{key}_ci") for st in stats], color,
                          f"{run}: {key}" if len(runs) > 1 else key, marker=markers[k % len(markers)])
        for i, b in enumerate(baselines):
            stats = results[b].get(p["name"])
            for key, (color, _) in SCORE_STYLE.items():
                if stats:
                    baseline_band(ax, stats.get(key), stats.get(f"{key}_ci"), color, f"{b}: {key}",
                                  BASE_LINES[i % len(BASE_LINES)])
        stage_name = f"stage {stage}" if stage else "checkpoints"
        ax.set_xlabel(f"training step ({stage_name})")
        ax.set_ylabel("accuracy / agreement (95% interval)")
        ax.set_title(f"{p['en']} / {p['ko']}: {stage_name}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LAYER_PANELS = [("retrieval_ko_en", "retrieval ko->en (P@1)"), ("retrieval_en_ko", "retrieval en->ko (P@1)"),
                ("gap", "parallel - random cosine"), ("cka_debiased", "CKA, debiased (1 = same geometry)"),
                ("language_probe", "language probe accuracy (0.5 = agnostic)")]


def plot_layers(plt, path: Path, with_layers: dict[str, list[dict]], panels=LAYER_PANELS) -> None:
    """Per-layer curves, one line per model (bands where the metric has intervals): retrieval both ways, the
    cosine gap, debiased CKA and the language probe (the last two hold when the two languages' spaces differ)."""
    from matplotlib.ticker import MaxNLocator

    panels = [(k, t) for k, t in panels if any(k in x for layers in with_layers.values() for x in layers)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for i, (m, layers) in enumerate(with_layers.items()):
        xs = [x["layer"] for x in layers]
        for ax, (key, _) in zip(axes[0], panels):
            with_band(ax, xs, [x.get(key) for x in layers], [x.get(f"{key}_ci") for x in layers], f"C{i % 10}", m,
                      marker=".")
    for ax, (_, title) in zip(axes[0], panels):
        ax.set_xlabel("layer (0 = embeddings)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), or None, with a warning, when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no PNG plots")
        return None
    return plt


def write_plots(out_dir: Path, results: dict, pairs: list[dict]) -> list[str]:
    """The PNG plots that the results allow; returns their file names."""
    plt = pyplot()
    if plt is None:
        return []
    written = []
    stepped = {m: int(STEP_RE.search(m.split("/")[-1]).group(1)) for m in results if STEP_RE.search(m.split("/")[-1])}
    if stepped and pairs:
        plot_accuracy_vs_step(plt, out_dir / "accuracy_vs_step.png", results, pairs, stepped)
        written.append("accuracy_vs_step.png")
    with_layers = {m: r["layers"] for m, r in results.items() if r.get("layers")}
    if with_layers:
        plot_layers(plt, out_dir / "retrieval_per_layer.png", with_layers)
        written.append("retrieval_per_layer.png")
    return written


def json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x


def soft_and_suite_markdown(results: dict, pairs: list[dict]) -> str:
    """The soft agreement per model and pair, and the suite's scores when several pairs were evaluated."""
    rows = [[model, f"{p['en']}/{p['ko']}", fmt_ci(r[p["name"]], "jsd"), fmt_ci(r[p["name"]], "ko_prob_of_en_pred"),
             fmt_ci(r[p["name"]].get("item_link") or {}, "auc")]
            for model, r in results.items() for p in pairs if "jsd" in r.get(p["name"], {})]
    text = ""
    if rows:
        text += ("\nSoft agreement (from the per-choice log-likelihoods): JSD, the mean Jensen-Shannon divergence "
                 "(bits, 0 = the same choice distribution in both languages, 1 = disjoint) between the English and "
                 "Korean softmax over the choices; P_ko(EN choice), the mean probability the Korean distribution "
                 "gives the English prediction; item link, the AUC with which the cosine of an item's Korean and "
                 "English question (pooled as the model's representation) separates the items answered alike from "
                 "the others (0.5: no link):\n\n")
        text += table(["model", "pair", "JSD", "P_ko(EN choice)", "item link AUC"], rows) + "\n"
    suites = [(model, r["suite"]) for model, r in results.items() if r.get("suite")]
    if suites:
        text += (f"\nSuite ({len(suites[0][1]['pairs'])} pairs, items pooled; intervals resample each task's items "
                 "within the task):\n\n")
        text += table(["model", "items", "acc_en", "acc_ko", "agreement", "JSD"],
                      [[m, str(su["n_items"]), fmt_ci(su, "acc_en"), fmt_ci(su, "acc_ko"), fmt_ci(su, "agreement"),
                        fmt_ci(su, "jsd")] for m, su in suites]) + "\n"
    return text


def comparisons_markdown(results: dict, pairs: list[dict]) -> str:
    """One row per (model, other model, pair) of results.json's "compare": the paired deltas of acc_en, acc_ko and
    agreement with their intervals and McNemar p-values; * marks an interval that excludes 0."""
    rows = []
    for model, r in results.items():
        for other, per_pair in (r.get("compare") or {}).items():
            for p in pairs:
                c = per_pair.get(p["name"])
                if c:
                    rows.append([model, other, f"{p['en']}/{p['ko']}"]
                                + [fmt_delta(c[k]) for k in ("acc_en", "acc_ko", "agreement")])
    if not rows:
        return ""
    return ("\nPaired comparisons (delta = model - against, on the same items; [95% paired bootstrap interval]; "
            "p: exact McNemar on the discordant items, for agreement the items whose agree/disagree status "
            "flipped; * = the interval excludes 0):\n\n"
            + table(["model", "against", "pair", "delta acc_en", "delta acc_ko", "delta agreement"], rows) + "\n")
