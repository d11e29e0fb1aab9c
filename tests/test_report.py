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
