"""report.py: the research's tables across runs from eval_agreement outputs and training logs, checked cell by
cell on hand-written results, then end to end on two short demo runs (one with the LM loss) and the base model."""

import json
import os
from pathlib import Path

import pytest
import torch

import eval_agreement as ea
import report

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
SHARED_DATA = ROOT.parent / "shared" / "data"
PAIR = "koen_arc_challenge_en__koen_arc_challenge_ko"
PNG = b"\x89PNG\r\n\x1a\n"


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def checkpoint(run: Path, step: int, **training_args) -> str:
    folder = run / f"checkpoint-{step}"
    write_json(folder / "training_args.json", {"pooling": "mean", "include_bos": False, "max_seq_length": 128,
                                               **training_args})
    write_json(folder / "trainer_state.json", {"step": step})
    return str(folder.resolve())


def pooled(layers, weights=None, **extra) -> dict:
    return {"layers": layers, "weights": weights, "normalize": True, "pooling": "mean", "include_bos": False,
            "max_seq_length": 128, "batch_size": 8, "bf16": False, "english_encoder": "shared", "english_model": None,
            **extra}


def rep(cos: float, spec: dict) -> dict:
    return {"parallel_cos": cos, "random_cos": 0.1, "gap": cos - 0.1, "centred_cos": 0.2, "centred_random_cos": 0.0,
            "retrieval_ko_en": cos / 2, "retrieval_en_ko": cos / 3, "by_source": {}, "pooled": spec}


def scores(acc_en: float, acc_ko: float, agreement: float, kappa: float) -> dict:
    return {PAIR: {"acc_en": acc_en, "acc_ko": acc_ko, "agreement": agreement, "kappa": kappa, "n_items": 10}}


def layers(n: int, cos: float) -> list[dict]:
    return [{"layer": i, **{k: v for k, v in rep(cos + i / 100, {}).items() if k not in ("by_source", "pooled")}}
            for i in range(n)]


@pytest.fixture
def written(tmp_path) -> dict:
    """Three runs (layer 1 with two checkpoints, a 1-3 mixture, layer 2) and two eval folders: the base model
    pooled as the first two runs at step 0, and a later re-evaluation of run1/checkpoint-400."""
    runs = tmp_path / "runs"
    r1 = [checkpoint(runs / "run1", s, pool_layer=1) for s in (200, 400)]
    r2 = checkpoint(runs / "run2", 200, mix_layers="1-3")
    write_json(runs / "run2" / "checkpoint-200" / "layer_weights.json", {"1": 0.2, "2": 0.3, "3": 0.5})
    r3 = checkpoint(runs / "run3", 200, pool_layer=2)
    log1 = [{"step": 0, "eval/gap": 0.01}, {"step": 10, "cl_loss": 3.0}, {"step": 20, "cl_loss": 2.0},
            {"step": 20, "eval/gap": 0.3}]
    (runs / "run1" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log1))
    log2 = [{"step": 10, "cl_loss": 2.5, "lm_loss": 4.0, "layer_weight/1": 0.33, "layer_weight/2": 0.33,
             "layer_weight/3": 0.34, "grad_cos/all": 0.1, "grad_cos/layers_1-4": 0.2},
            {"step": 20, "cl_loss": 2.2, "lm_loss": 3.9, "layer_weight/1": 0.2, "layer_weight/2": 0.3,
             "layer_weight/3": 0.5, "grad_cos/all": -0.2}]  # one grad_cos/layers_1-4 point: a marker
    (runs / "run2" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log2))
    base = {"source": "/models/base", "role": "baseline", **scores(0.28, 0.25, 0.40, 0.1),
            "representation": rep(0.99, pooled([1], like_run=r1[0])),
            "representations": [rep(0.99, pooled([1], like_run=r1[0])),
                                rep(0.97, pooled([1, 2, 3], [1 / 3] * 3, like_run=r2))],
            "layers": layers(4, 0.5), "layers_pooled": {"pooling": "mean", "include_bos": False, "max_seq_length": 128,
                                                         "bf16": False}}
    first = {
        "run1/checkpoint-200": {"source": r1[0], "role": "checkpoint", **scores(0.30, 0.26, 0.35, 0.2),
                                "representation": rep(0.93, pooled([1], trained_by=r1[0]))},
        "run1/checkpoint-400": {"source": r1[1], "role": "checkpoint", **scores(0.29, 0.27, 0.34, 0.2),
                                "representation": rep(0.92, pooled([1], trained_by=r1[1]))},
        "run2/checkpoint-200": {"source": r2, "role": "checkpoint", **scores(0.31, 0.28, 0.36, 0.3),
                                "representation": rep(0.6, pooled([1, 2, 3], [0.2, 0.3, 0.5], trained_by=r2))},
        "run3/checkpoint-200": {"source": r3, "role": "checkpoint", **scores(0.25, 0.25, 0.5, 0.0),
                                "representation": rep(0.8, pooled([2], trained_by=r3))},
        "base": base,
    }
    old = write_json(tmp_path / "eval" / "all" / "results.json", first)
    again = {"run1/checkpoint-400": {**first["run1/checkpoint-400"], **scores(0.33, 0.30, 0.45, 0.25)}}
    new = write_json(tmp_path / "eval" / "again" / "results.json", again)
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    return {"tmp": tmp_path, "runs": runs, "eval": tmp_path / "eval"}


def rows_of(result: dict, run: str) -> list[dict]:
    return next(r for r in result["runs"] if r["run"] == run)["rows"]


def test_tables_cell_by_cell(written):
    out = written["tmp"] / "report"
    result = report.main([str(written["runs"] / "run1"), str(written["runs"] / "run2"), str(written["runs"] / "run3"),
                          str(written["eval"]), "--output_dir", str(out)])
    assert [r["run"] for r in result["runs"]] == ["run1", "run2", "run3"] and result["pair"] == PAIR
    run1 = rows_of(result, "run1")
    assert [(r["model"], r["step"]) for r in run1] == [("base: base", 0), ("checkpoint-200", 200),
                                                       ("checkpoint-400", 400)]
    base, c200, c400 = run1
    assert (base["acc_en"], base["acc_ko"], base["agreement"], base["kappa"]) == (0.28, 0.25, 0.40, 0.1)
    assert base["parallel_cos"] == 0.99 and base["cos_from"] == "representation"  # pooled as run1 (layer 1)
    assert (c200["agreement"], c200["parallel_cos"], c200["retrieval_ko_en"]) == (0.35, 0.93, 0.93 / 2)
    assert (c400["agreement"], c400["acc_en"]) == (0.45, 0.33)  # the newer results.json wins
    # the mixture run: its base row is the base pooled as that mixture (uniform weights at step 0)
    base2, c2 = rows_of(result, "run2")
    assert base2["parallel_cos"] == 0.97 and c2["parallel_cos"] == 0.6
    # layer 2: the base was not pooled so; its per-layer metrics at layer 2 with the same pooling stand in
    base3 = rows_of(result, "run3")[0]
    assert base3["cos_from"] == "per-layer" and base3["parallel_cos"] == pytest.approx(0.52)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "# Report: 3 runs, 1 base model" in md
    assert "## run2 (mix 1-3 (top 3: 0.500), mean)" in md and "## run1 (layer 1, mean)" in md
    assert "| base: base | 0 | 0.2800 | 0.2500 | 0.4000 | 0.1000 | 0.9900 | 0.8900 | 0.4950 | 0.3300 |" in md
    assert "| checkpoint-400 | 400 | 0.3300 | 0.3000 | 0.4500 | 0.2500 | 0.9200 |" in md
    assert "| base: base | 0 | 0.2800 | 0.2500 | 0.4000 | 0.1000 | 0.5200 (L) |" in md
    saved = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert saved["runs"][0]["rows"] == json.loads(json.dumps(run1)) and "log" not in saved["runs"][0]
    # two runs' checkpoint-200 stay apart
    labels = [r["label"] for run in saved["runs"] for r in run["rows"] if not r["base"]]
    assert labels == ["run1/checkpoint-200", "run1/checkpoint-400", "run2/checkpoint-200", "run3/checkpoint-200"]
    assert saved["plots"] == ["agreement_vs_step.png", "training_curves.png", "layer_weights.png"]
    for name in saved["plots"]:
        assert (out / name).read_bytes()[:8] == PNG


def test_inputs_as_parent_folders_and_errors(written, tmp_path):
    result = report.main([str(written["runs"]), str(written["eval"]), "--output_dir", str(tmp_path / "r"),
                          "--no_plots", "--pair", "koen_arc_challenge_en:koen_arc_challenge_ko"])
    assert [r["run"] for r in result["runs"]] == ["run1", "run2", "run3"] and result["plots"] == []
    with pytest.raises(report.ReportError, match="--pair a:b: not in the eval results"):
        report.main([str(written["eval"]), "--pair", "a:b", "--output_dir", str(tmp_path / "r")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(report.ReportError, match="empty: neither a run folder"):
        report.main([str(tmp_path / "empty"), "--output_dir", str(tmp_path / "r")])
    with pytest.raises(report.ReportError, match="no input"):
        report.main(["--output_dir", str(tmp_path / "r")])


def test_a_single_point_is_a_marker_not_a_line():
    calls = []

    class Axis:
        def plot(self, xs, ys, **kw):
            calls.append((list(xs), list(ys), kw.get("linestyle")))

    report.series(Axis(), [5], [0.3], label="one")
    report.series(Axis(), [5, 10], [0.3, None], label="one left")  # a missing value leaves one point
    report.series(Axis(), [5, 10], [0.3, 0.4], label="two")
    report.series(Axis(), [5], [None], label="none")
    assert calls == [([5], [0.3], "none"), ([5], [0.3], "none"), ([5, 10], [0.3, 0.4], None)]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("reset_accelerate", "one_thread")
def test_end_to_end_two_demo_runs_and_the_base_model(tmp_path, reset_accelerate):
    """Two demo stage-1 runs (layer 1; layer 3 with the LM loss), each with checkpoints 2 and 4, evaluated (the
    real ARC-Challenge EN/KO items when ../shared/data is there) with the demo model as the base, then the report."""
    import train_contrastive

    common = ["--model_name_or_path", str(DEMO / "model"), "--train_file", str(DEMO / "train.jsonl"),
              "--validation_file", str(DEMO / "validation.jsonl"), "--learning_rate", "1e-3",
              "--per_device_train_batch_size", "16", "--max_steps", "4", "--save_steps", "2", "--eval_steps", "2",
              "--max_eval_pairs", "64", "--report_to", "none", "--logging_steps", "1"]
    train_contrastive.main([*common, "--pool_layer", "1", "--output_dir", str(tmp_path / "runs" / "layer1")])
    reset_accelerate()
    train_contrastive.main([*common, "--pool_layer", "3", "--lm_weight", "0.5", "--lm_train_file",
                            str(DEMO / "mono_ko_train.txt"), "--block_size", "32", "--per_device_lm_batch_size", "2",
                            "--output_dir", str(tmp_path / "runs" / "layer3_lm")])
    tasks = ["--skip_tasks"]
    arc = SHARED_DATA / "arc_challenge_en_ko"
    if arc.is_dir():
        tasks = ["--en_data", str(arc / "ai2_arc-ARC-Challenge-test.jsonl"), "--ko_data",
                 str(arc / "ko_ai2_arc-ARC-Challenge-test.jsonl"), "--limit", "4", "--batch_size", "8"]
    ckpts = [str(tmp_path / "runs" / run / f"checkpoint-{s}") for run in ("layer1", "layer3_lm") for s in (2, 4)]
    ea.main([*ckpts, "--baseline", str(DEMO / "model"), *tasks, "--parallel_file", str(DEMO / "validation.jsonl"),
             "--max_pairs", "64", "--seed", "42", "--output_dir", str(tmp_path / "eval"), "--no_plots"])
    out = tmp_path / "report"
    result = report.main([str(tmp_path / "runs"), str(tmp_path / "eval"), "--output_dir", str(out)])
    assert [r["run"] for r in result["runs"]] == ["layer1", "layer3_lm"]
    for run in result["runs"]:
        assert [(r["model"], r["step"]) for r in run["rows"]] == [("base: model", 0), ("checkpoint-2", 2),
                                                                  ("checkpoint-4", 4)]
        # the table's cos is eval_agreement's representation, which equals the training log's eval at that step
        log = {r["step"]: r for r in run["log"] if "eval/parallel_cos" in r}
        for row in run["rows"]:
            assert row["parallel_cos"] == pytest.approx(log[row["step"]]["eval/parallel_cos"], abs=2e-6), row["model"]
            assert row["cos_from"] == "representation"
            if arc.is_dir():
                assert row["agreement"] is not None and row["n_items"] == 4
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## layer1 (layer 1, mean)" in md and "## layer3_lm (layer 3, mean)" in md
    assert result["plots"][:2] == ["agreement_vs_step.png", "training_curves.png"] or not arc.is_dir()
    for name in result["plots"]:
        assert (out / name).read_bytes()[:8] == PNG


def test_run_pooling_is_described_by_the_newest_checkpoint(tmp_path):
    """A mixture run's heading names the layer weights of its newest evaluated checkpoint, not its oldest."""
    run = tmp_path / "runs" / "mix"
    old, new = (checkpoint(run, s, mix_layers="1-3") for s in (200, 400))
    results = {"mix/checkpoint-200": {"source": old, "role": "checkpoint", **scores(0.3, 0.3, 0.3, 0.1),
                                      "representation": rep(0.5, pooled([1, 2, 3], [0.6, 0.3, 0.1], trained_by=old))},
               "mix/checkpoint-400": {"source": new, "role": "checkpoint", **scores(0.3, 0.3, 0.3, 0.1),
                                      "representation": rep(0.6, pooled([1, 2, 3], [0.1, 0.2, 0.7], trained_by=new))}}
    write_json(tmp_path / "eval" / "results.json", results)
    out = tmp_path / "report"
    result = report.main([str(run), str(tmp_path / "eval"), "--output_dir", str(out), "--no_plots"])
    assert result["runs"][0]["pooled"] == "mix 1-3 (top 3: 0.700), mean"
    assert "## mix (mix 1-3 (top 3: 0.700), mean)" in (out / "report.md").read_text(encoding="utf-8")


def with_ci(stats: dict, half: float = 0.05) -> dict:
    """``stats`` with an interval ``[x - half, x + half]`` beside each number."""
    return {**stats, **{f"{k}_ci": [v - half, v + half] for k, v in stats.items() if isinstance(v, float)}}


def compared(delta: float, lo: float, hi: float, p: float) -> dict:
    return {k: {"delta": delta, "ci": [lo, hi], "p_mcnemar": p, "n_discordant": 7} for k in ("acc_en", "acc_ko",
                                                                                            "agreement")}


@pytest.fixture
def chained(tmp_path) -> dict:
    """A stage-1 run (layer 1, checkpoints 200 and 400, from the base) and a stage-2 run started from its
    checkpoint-400 (checkpoints 100 and 200), all evaluated in one call with intervals and paired comparisons:
    stage-1 checkpoint-200 against the base excludes 0, checkpoint-400 against the base and against
    checkpoint-200 include it; stage-2 checkpoint-200 against its start excludes 0."""
    runs = tmp_path / "runs"
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    s1 = [checkpoint(runs / "s1", s, pool_layer=1, model_name_or_path=str(base_dir)) for s in (200, 400)]
    s2 = [checkpoint(runs / "s2", s, model_name_or_path=s1[1], block_size=64) for s in (100, 200)]
    for stage, folder in (("s1", runs / "s1"), ("s2", runs / "s2")):
        log = ([{"step": 10, "cl_loss": 2.0}, {"step": 20, "cl_loss": 1.0}] if stage == "s1" else
               [{"step": 0, "eval/ko_loss": 6.0, "eval/ko_perplexity": 403.4, "eval/en_loss": 6.1,
                 "eval/en_perplexity": 445.9}, {"step": 10, "loss": 5.0},
                {"step": 100, "eval/ko_loss": 4.0, "eval/ko_perplexity": 54.6, "eval/en_loss": 4.5,
                 "eval/en_perplexity": 90.0}])
        (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))

    def model(source, role, acc_en, acc_ko, agreement, kappa, cos, compare=None):
        r = {"source": source, "role": role, PAIR: with_ci(scores(acc_en, acc_ko, agreement, kappa)[PAIR]),
             "representation": with_ci(rep(cos, pooled([1], trained_by=source if role == "checkpoint" else None,
                                                          like_run=None if role == "checkpoint" else s1[0])),
                                       0.01)}
        return r | ({"compare": compare} if compare else {})

    results = {
        "base": model(str(base_dir), "baseline", 0.28, 0.25, 0.40, 0.1, 0.5),
        "s1/checkpoint-200": model(s1[0], "checkpoint", 0.30, 0.26, 0.35, 0.2, 0.93,
                                   {"base": {PAIR: compared(-0.05, -0.09, -0.01, 0.012)}}),
        "s1/checkpoint-400": model(s1[1], "checkpoint", 0.29, 0.27, 0.34, 0.2, 0.92,
                                   {"base": {PAIR: compared(-0.06, -0.12, 0.003, 0.08)},
                                    "s1/checkpoint-200": {PAIR: compared(-0.01, -0.04, 0.02, 0.7)}}),
        "s2/checkpoint-100": model(s2[0], "checkpoint", 0.31, 0.30, 0.36, 0.3, 0.90,
                                   {"base": {PAIR: compared(-0.04, -0.1, 0.02, 0.2)}}),
        "s2/checkpoint-200": model(s2[1], "checkpoint", 0.32, 0.31, 0.44, 0.3, 0.91,
                                   {"base": {PAIR: compared(0.04, -0.02, 0.1, 0.3)},
                                    "s2/checkpoint-100": {PAIR: compared(0.08, 0.02, 0.14, 0.01)}}),
    }
    write_json(tmp_path / "eval" / "results.json", results)
    return {"tmp": tmp_path, "runs": runs, "eval": tmp_path / "eval", "s1": s1, "s2": s2, "results": results}


def test_intervals_and_comparisons_in_the_table(chained):
    out = chained["tmp"] / "report"
    result = report.main([str(chained["runs"]), str(chained["eval"]), "--output_dir", str(out), "--no_plots"])
    md = (out / "report.md").read_text(encoding="utf-8")
    # every number with its interval; the base row is the run's start: no comparison cells
    assert ("| base: base | 0 | 0.2800 [0.230, 0.330] | 0.2500 [0.200, 0.300] | 0.4000 [0.350, 0.450] | "
            "0.1000 [0.050, 0.150] | 0.5000 [0.490, 0.510] | 0.4000 [0.390, 0.410] |") in md
    # checkpoint-200 against the base: interval excludes 0, marked; no previous checkpoint
    assert ("| checkpoint-200 | 200 | 0.3000 [0.250, 0.350] | 0.2600 [0.210, 0.310] | 0.3500 [0.300, 0.400] | "
            "0.2000 [0.150, 0.250] | 0.9300 [0.920, 0.940] | 0.8300 [0.820, 0.840] | 0.4650 [0.455, 0.475] | "
            "0.3100 [0.300, 0.320] | -0.0500 [-0.090, -0.010] p=0.012 * | - |") in md
    # checkpoint-400: both intervals include 0 (one only just), neither marked
    assert "| -0.0600 [-0.120, +0.003] p=0.08 | -0.0100 [-0.040, +0.020] p=0.7 |" in md
    assert "| checkpoint-200 | start: base | -0.0500 [-0.090, -0.010] p=0.012 * | " in md  # acc_en, acc_ko too
    assert "* = the interval excludes 0" in md and "[lo, hi]: 95% bootstrap interval" in md
    row = rows_of(result, "s1")[1]
    assert row["acc_en_ci"] == [0.25, 0.35] and row["parallel_cos_ci"] == pytest.approx([0.92, 0.94])
    assert row["compare"]["start"]["against"] == "base" and row["compare"]["previous"] is None
    assert row["compare"]["start"]["agreement"] == {**compared(-0.05, -0.09, -0.01, 0.012)["agreement"],
                                                    "marked": True}
    assert rows_of(result, "s1")[2]["compare"]["start"]["agreement"]["marked"] is False
    saved = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert saved["runs"][0]["rows"] == json.loads(json.dumps(rows_of(result, "s1")))


def test_a_stage_2_run_is_titled_and_compared_by_its_start(chained):
    out = chained["tmp"] / "report"
    result = report.main([str(chained["runs"]), str(chained["eval"]), "--output_dir", str(out), "--no_plots"])
    s2 = next(r for r in result["runs"] if r["run"] == "s2")
    assert s2["stage"] == 2 and s2["start"] == chained["s1"][1]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## s2 (stage 2 (LM head) from s1/checkpoint-400; cos pooled as its stage-1 ancestor: layer 1, mean)" in md
    assert "## s1 (layer 1, mean)" in md
    rows = rows_of(result, "s2")
    assert [(r["model"], r["step"], r["start"]) for r in rows] == [
        ("start: s1/checkpoint-400", 0, True), ("base: base", 0, False), ("checkpoint-100", 100, False),
        ("checkpoint-200", 200, False)]
    assert (rows[0]["agreement"], rows[0]["acc_en"]) == (0.34, 0.29)  # the start's own scores
    # the start and the checkpoints were in one eval call but with no "compare" between them (the start was not
    # a baseline of that call): the report computes it from the item files, absent here, so "-"; the previous
    # checkpoint's comparison is the results' own
    assert rows[2]["compare"] == {"start": None, "previous": None}
    assert rows[3]["compare"]["previous"]["against"] == "s2/checkpoint-100"
    assert "| checkpoint-200 | 200 |" in md and "| - | +0.0800 [+0.020, +0.140] p=0.01 * |" in md


def test_a_stage_2_comparison_with_its_start_from_the_item_files(chained, tmp_path):
    """The start evaluated in another eval call: the report's comparison from the two calls' item files equals
    what eval_agreement computes when both models are in one call (same seed, same resamples)."""
    import numpy as np

    from evaluation import compare

    rng = np.random.default_rng(0)

    gold = rng.integers(0, 4, 40)

    def items():
        return [{"id": i, "gold": int(g), "pred_en": int(a), "pred_ko": int(b), "pred_norm_en": 0, "pred_norm_ko": 0}
                for i, (g, (a, b)) in enumerate(zip(gold, rng.integers(0, 4, (40, 2))))]

    start, ckpt = items(), items()
    results = chained["results"]
    first = {"s1/checkpoint-400": results["s1/checkpoint-400"]}
    second = {"s2/checkpoint-200": {k: v for k, v in results["s2/checkpoint-200"].items() if k != "compare"}}
    for folder, res, label, rows in (("e1", first, "s1/checkpoint-400", start),
                                     ("e2", second, "s2/checkpoint-200", ckpt)):
        write_json(tmp_path / folder / "results.json", res)
        write_json(tmp_path / folder / "eval_args.json", {"bootstrap_iters": 300, "seed": 7, "ci_level": 0.95})
        (tmp_path / folder / label).mkdir(parents=True)
        (tmp_path / folder / label / f"{PAIR}.items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = report.main([str(chained["runs"]), str(tmp_path / "e1"), str(tmp_path / "e2"),
                          "--output_dir", str(tmp_path / "r"), "--no_plots"])
    got = rows_of(result, "s2")[-1]["compare"]["start"]
    # the reference: eval_agreement's add_comparisons with both models in one call, the start as its baseline
    one = tmp_path / "one"
    for label, rows in (("start", start), ("ckpt", ckpt)):
        (one / label).mkdir(parents=True)
        (one / label / f"{PAIR}.items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref = {"start": {"role": "baseline", PAIR: {}}, "ckpt": {"role": "checkpoint", PAIR: {}}}
    compare.add_comparisons(ref, [{"name": PAIR}], one, {PAIR: compare.pair_counts(40, 300, 7)})
    want = ref["ckpt"]["compare"]["start"][PAIR]
    assert got["against"] == "s1/checkpoint-400"
    for k in ("acc_en", "acc_ko", "agreement"):
        assert {key: got[k][key] for key in want[k]} == want[k] and want[k]["ci"][0] < want[k]["ci"][1]


def test_no_eval_results_names_the_reason(chained, tmp_path):
    out = tmp_path / "r"
    result = report.main([str(chained["runs"]), "--output_dir", str(out), "--no_plots"])
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "No eval results among the inputs (no results.json)" in md and "--skip_tasks" not in md
    assert all(not run["rows"] for run in result["runs"])
    # eval results with no task scores: then --skip_tasks is the reason
    skipped = {m: {k: v for k, v in r.items() if k not in (PAIR, "compare")} for m, r in chained["results"].items()}
    write_json(tmp_path / "skip" / "results.json", skipped)
    report.main([str(chained["runs"]), str(tmp_path / "skip"), "--output_dir", str(out), "--no_plots"])
    assert "No task scores in the eval results (--skip_tasks)" in (out / "report.md").read_text(encoding="utf-8")


def test_perplexity_panels_and_scores_panels_per_stage(chained, monkeypatch):
    """Stage 2's perplexities get their panels (log scale) beside stage 1's losses; each run its own row of score
    panels (its own step axis) with the start as a reference line; no layer_weights.png without a mixture run."""
    import matplotlib.figure

    drawn, real = {}, matplotlib.figure.Figure.savefig

    def spy(fig, path, *a, **kw):
        drawn[Path(path).name] = [ax for ax in fig.axes if ax.get_visible()]
        return real(fig, path, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    out = chained["tmp"] / "report"
    result = report.main([str(chained["runs"]), str(chained["eval"]), "--output_dir", str(out)])
    assert result["plots"] == ["agreement_vs_step.png", "training_curves.png"]
    scores_axes = drawn["agreement_vs_step.png"]
    assert [ax.get_title().split("\n")[0] for ax in scores_axes] == [
        f"{run}: {key}" for run in ("s1", "s2") for key in ("acc_en", "acc_ko", "agreement")]
    agreement2 = scores_axes[5]
    assert agreement2.get_title().split("\n")[1] == "stage 2 (LM head) from s1/checkpoint-400"
    assert agreement2.get_xlabel() == "training step (stage 2)" and list(agreement2.get_xticks()) == [100, 200]
    assert agreement2.get_ylabel() == "agreement (95% interval)"
    legend = agreement2.get_legend().get_texts()
    assert [t.get_text() for t in legend] == ["s2 checkpoints", "start: s1/checkpoint-400", "base: base"]
    assert min(t.get_fontsize() for t in legend) >= 8
    start_line = next(line for line in agreement2.get_lines() if line.get_label() == "start: s1/checkpoint-400")
    assert list(start_line.get_ydata()) == [0.34, 0.34]  # the start's agreement, across the panel
    titles = {ax.get_title(): ax for ax in drawn["training_curves.png"]}
    assert {"contrastive loss", "training loss (stages 2, 3)", "validation perplexity, Korean",
            "validation perplexity, English"} <= set(titles)
    ko = titles["validation perplexity, Korean"]
    assert ko.get_yscale() == "log" and [t.get_text() for t in ko.get_legend().get_texts()] == ["s2"]
    assert list(ko.get_lines()[0].get_ydata()) == [403.4, 54.6]
    for name in result["plots"]:
        assert (out / name).read_bytes()[:8] == PNG


def test_layer_alignment_figure_base_against_each_runs_newest_checkpoint(tmp_path):
    """layer_alignment.png: per layer, cosine, gap, debiased CKA and the probe of the base and of each run's
    newest evaluated checkpoint (not an older one), one figure."""
    run = tmp_path / "runs" / "run1"
    old, new = (checkpoint(run, s, pool_layer=1) for s in (200, 400))

    def with_measures(n: int, cos: float, cka: float) -> list[dict]:
        return [{**m, "cka_debiased": cka + m["layer"] / 10, "language_probe": 0.9} for m in layers(n, cos)]

    results = {"base": {"source": "/models/base", "role": "baseline", **scores(0.3, 0.3, 0.4, 0.1),
                        "layers": with_measures(3, 0.5, 0.1)},
               "run1/checkpoint-200": {"source": old, "role": "checkpoint", **scores(0.3, 0.3, 0.4, 0.1),
                                       "layers": with_measures(3, 0.6, 0.2)},
               "run1/checkpoint-400": {"source": new, "role": "checkpoint", **scores(0.3, 0.3, 0.4, 0.1),
                                       "layers": with_measures(3, 0.7, 0.3)}}
    write_json(tmp_path / "eval" / "results.json", results)
    out = tmp_path / "report"
    result = report.main([str(run), str(tmp_path / "eval"), "--output_dir", str(out)])
    assert list(result["layer_curves"]) == ["base: base", "run1/checkpoint-400"]
    assert [m["cka_debiased"] for m in result["layer_curves"]["run1/checkpoint-400"]] == pytest.approx([0.3, 0.4, 0.5])
    assert "layer_alignment.png" in result["plots"] and (out / "layer_alignment.png").read_bytes()[:8] == PNG
