"""The paired-benchmark presets of eval_agreement.py (--pair belebele, --suite koen, ...) run offline on small
files in each hub dataset's own row format (tests/data/eval_presets/), through lm-eval's own task YAMLs: items
joined by their key (Belebele: link + question_number), the passage as cluster, PAWS-X's label -1 dropped from
both languages and counted, Global-MMLU's groups as one task holding exactly their members' documents; and the
demo's own evaluation set (data/demo/eval_{en,ko}.jsonl, data/demo/eval.yaml) as its generator writes it."""

import json
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest

import eval_agreement as ea
from common.demo import tiny_llama, train_demo_tokenizer
from evaluation import presets, tasks

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "eval_presets"
DEMO = ROOT / "data" / "demo"
FILES = {"belebele": "belebele", "global_mmlu_lite": "global_mmlu", "global_mmlu": "global_mmlu",
         "paws_x": "paws_x", "arc": None, "demo": None}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fixture(preset: str, lang: str) -> Path:
    return DATA / f"{FILES[preset]}_{lang}.jsonl"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A 2-layer random Llama (32 wide) with a tokenizer trained on the fixtures' text."""
    texts = [line for path in sorted(DATA.glob("*.jsonl")) for line in path.read_text(encoding="utf-8").splitlines()]
    tok = train_demo_tokenizer(texts, vocab_size=400)
    path = tmp_path_factory.mktemp("preset_model") / "m"
    tiny_llama(len(tok), hidden_size=32, num_layers=2, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_preset(model: Path, out: Path, preset: str, en: Path, ko: Path, *extra: str) -> tuple[dict, list[dict]]:
    results = ea.main([str(model), "--pair", preset, "--en_data", str(en), "--ko_data", str(ko), "--batch_size", "4",
                       "--output_dir", str(out), "--no_plots", *extra])
    spec = presets.PRESETS[preset]
    name = f"{spec.en}__{spec.ko}"
    return results["m"][name], read_jsonl(out / "m" / f"{name}.items.jsonl")


def pairs_of(preset: str, limit: int | None = None) -> dict:
    args = SimpleNamespace(pair=[preset], suite=None, id_field="id", include_path=[], limit=limit,
                           en_data=str(fixture(preset, "en")), ko_data=str(fixture(preset, "ko")))
    return tasks.prepare_pairs(args)[0]


def test_belebele_joins_on_link_and_question_number(model, tmp_path):
    """The Korean file holds the questions in reverse order, and each passage's question numbers repeat across
    passages: the items pair up by (link, question_number). The same call on a Korean file in the English order
    gives the same rows item for item, so no row depends on positions."""
    en, ko = read_jsonl(fixture("belebele", "en")), read_jsonl(fixture("belebele", "ko"))
    assert [(r["link"], r["question_number"]) for r in ko] != [(r["link"], r["question_number"]) for r in en]
    stats, rows = run_preset(model, tmp_path / "out", "belebele", fixture("belebele", "en"), fixture("belebele", "ko"))
    assert [tuple(r["id"]) for r in rows] == [(r["link"], r["question_number"]) for r in en]
    assert [r["gold"] for r in rows] == [int(r["correct_answer_num"]) - 1 for r in en]
    assert stats["n_items"] == 6 and stats["dropped"] == {}
    by_key = {(r["link"], r["question_number"]): r for r in ko}
    in_order = tmp_path / "ko_in_en_order.jsonl"
    in_order.write_text("".join(json.dumps(by_key[(r["link"], r["question_number"])], ensure_ascii=False) + "\n"
                                for r in en), encoding="utf-8")
    _, same = run_preset(model, tmp_path / "out2", "belebele", fixture("belebele", "en"), in_order)
    assert [(r["id"], r["loglik_en"], r["loglik_ko"], r["pred_ko"]) for r in same] == \
           [(r["id"], r["loglik_en"], r["loglik_ko"], r["pred_ko"]) for r in rows]


def test_belebele_clusters_on_the_passage():
    """cluster: the passage's link of each evaluated English item, aligned with en_idx (also under --limit)."""
    en = read_jsonl(fixture("belebele", "en"))
    for limit, n in ((None, 6), (4, 4)):
        pair = pairs_of("belebele", limit)
        assert len(pair["en_idx"]) == n
        assert pair["cluster"] == [en[i]["link"] for i in pair["en_idx"]]
    assert len(set(pair["cluster"])) == 2  # the first four items: three of one passage, one of the other
    assert pairs_of("paws_x")["cluster"] is None  # no shared context: every item its own cluster


def test_paws_x_label_minus_one_is_dropped_from_both_languages_and_counted(model, tmp_path):
    """The Korean row of id 5 has label -1 (outside the two choices): that item leaves both languages, the pair's
    result counts it, and every other item keeps its label as gold."""
    en, ko = read_jsonl(fixture("paws_x", "en")), read_jsonl(fixture("paws_x", "ko"))
    assert [r["id"] for r in ko if r["label"] == -1] == [5] and all(r["label"] >= 0 for r in en)
    stats, rows = run_preset(model, tmp_path / "out", "paws_x", fixture("paws_x", "en"), fixture("paws_x", "ko"))
    assert stats["dropped"] == {presets.DROP_GOLD: 1}
    assert stats["n_items"] == 7 and [r["id"] for r in rows] == [1, 2, 3, 4, 6, 7, 8]
    assert [r["gold"] for r in rows] == [r["label"] for r in en if r["id"] != 5]
    assert all(len(r["loglik_en"]) == len(r["loglik_ko"]) == 2 for r in rows)
    manager = tasks.TaskLookup([]).manager_for_preset(presets.PRESETS["paws_x"])
    ko_task = tasks.load_task(manager, tasks.task_config(manager, "paws_ko", str(fixture("paws_x", "ko"))), "ko")
    with pytest.raises(ea.EvalError, match=r"item 5 has gold -1; a single gold index"):  # without the preset: an error
        tasks.task_items(ko_task, ("id",), "paws_ko")


def test_paws_x_id_in_one_language_only_is_dropped_and_counted(tmp_path):
    """paws_en drops documents with an empty sentence (its process_docs), paws_ko keeps them: such an id is in
    the Korean task only, and the preset drops and counts it rather than refusing the pair."""
    en = read_jsonl(fixture("paws_x", "en"))
    en[2]["sentence2"] = ""
    path = tmp_path / "en.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in en), encoding="utf-8")
    args = SimpleNamespace(pair=["paws_x"], suite=None, id_field="id", include_path=[], limit=None,
                           en_data=str(path), ko_data=str(fixture("paws_x", "ko")))
    pair = tasks.prepare_pairs(args)[0]
    assert pair["dropped"] == {presets.DROP_GOLD: 1, presets.DROP_ONLY_KO: 1}
    assert [pair["en_items"][i]["id"] for i in pair["en_idx"]] == [1, 2, 4, 6, 7, 8]


@pytest.mark.parametrize("preset", ["global_mmlu_lite", "global_mmlu"])
def test_global_mmlu_group_is_one_task_of_its_members_documents(model, tmp_path, preset):
    """lm-eval's global_mmlu_en is a group of six category tasks (global_mmlu_full_en: 57 subject tasks in four
    groups); the preset's task holds exactly the documents its members keep (each member's own filter on the same
    file), joined to Korean by sample_id; its accuracy is then the group's size-weighted one."""
    from datasets import load_dataset
    from lm_eval.tasks._yaml_loader import load_yaml

    pair = pairs_of(preset)
    manager = pair["task_manager"]
    leaves = presets.group_leaves(manager, pair["en"])
    assert len(leaves) == {"global_mmlu_lite": 6, "global_mmlu": 57}[preset]
    rows = load_dataset("json", data_files=str(fixture(preset, "en")), split="train")
    members = []  # what lm-eval's group evaluates: each member task's process_docs on the same rows
    for leaf in leaves:
        keep = load_yaml(str(manager.task_index[leaf].yaml_path), resolve_func=True)["process_docs"]
        members += keep(rows)["sample_id"]
    assert sorted(it["id"] for it in pair["en_items"]) == sorted(members)
    assert len(members) == len(set(members)) == 8
    if preset == "global_mmlu_lite":
        en = read_jsonl(fixture(preset, "en"))
        stats, rows = run_preset(model, tmp_path / "out", preset, fixture(preset, "en"), fixture(preset, "ko"))
        gold = {r["sample_id"]: "ABCD".index(r["answer"]) for r in en}
        assert stats["n_items"] == 8 and all(r["gold"] == gold[r["id"]] for r in rows)


def test_presets_name_the_installed_lm_eval_tasks():
    """Each preset's two tasks are in the installed lm-eval's folder the preset names (or in tasks/), with the join
    and cluster fields that their prompts read."""
    lookup = tasks.TaskLookup([])
    for name, preset in presets.PRESETS.items():
        manager = lookup.manager_for_preset(preset)
        for task in (preset.en, preset.ko):
            assert task in manager.task_index, (name, task)
    assert presets.PRESETS["belebele"].join == ("link", "question_number")
    assert presets.PRESETS["belebele"].cluster == "link"


def test_suite_and_unknown_preset():
    names = [n for n, _ in presets.resolve_pairs([], "koen", "id")]
    assert names == ["arc", "belebele", "global_mmlu_lite", "paws_x"]
    assert [n for n, _ in presets.resolve_pairs(["paws_x"], "koen", "id")] == ["paws_x", "arc", "belebele",
                                                                                "global_mmlu_lite"]
    custom = presets.resolve_pairs(["a_en:a_ko"], None, "uid")
    assert custom[0][1].join == ("uid",) and custom[0][1].cluster is None
    with pytest.raises(ea.EvalError, match="--suite 'nope': unknown suite; suites: koen"):
        presets.resolve_pairs([], "nope", "id")


def test_unknown_preset_is_one_line_listing_the_presets(tmp_path):
    """Refused by the argument check, before any model or task is loaded (common.cli prints an EvalError as one
    line: test_eval_agreement.py's test_command_line_error_is_one_line_not_a_traceback)."""
    with pytest.raises(ea.EvalError) as e:
        ea.main([str(tmp_path / "not_loaded"), "--pair", "belebel", "--output_dir", str(tmp_path / "out")])
    assert str(e.value) == ("--pair 'belebel': neither a preset (arc, belebele, global_mmlu_lite, global_mmlu, "
                            "paws_x, demo) nor EN_TASK:KO_TASK")


# ----------------------------------------------------------------------------- the demo's evaluation set


def test_demo_eval_set_is_what_its_generator_writes(tmp_path):
    """make_eval_data.py rewrites the shipped files byte for byte; the two languages pair 1:1 by id with the same
    gold position and cluster; four distinct choices per item in each language; Korean in NFC."""
    subprocess.run([sys.executable, str(DEMO / "make_eval_data.py"), str(tmp_path)], check=True, capture_output=True)
    for lang in ("en", "ko"):
        assert (tmp_path / f"eval_{lang}.jsonl").read_bytes() == (DEMO / f"eval_{lang}.jsonl").read_bytes()
    en, ko = read_jsonl(DEMO / "eval_en.jsonl"), read_jsonl(DEMO / "eval_ko.jsonl")
    assert 150 <= len(en) <= 200 and len({r["id"] for r in en}) == len(en)
    for e, k in zip(en, ko):
        assert [e[f] for f in ("id", "answerKey", "cluster", "topic")] == [k[f] for f in ("id", "answerKey", "cluster",
                                                                                         "topic")]
        for r in (e, k):
            assert r["choices"]["label"] == ["A", "B", "C", "D"] and len(set(r["choices"]["text"])) == 4
        text = json.dumps(k, ensure_ascii=False)
        assert unicodedata.normalize("NFC", text) == text
    assert max(sum(r["cluster"] == c for r in en) for c in {r["cluster"] for r in en}) == 3  # reading passages


def test_demo_eval_config_runs_from_the_repository_alone(tmp_path):
    """data/demo/eval.yaml: the demo model as a baseline on the demo pair (first 8 items) and the demo's
    validation pairs, every file read from inside the repository."""
    out = tmp_path / "out"
    results = ea.main([str(DEMO / "eval.yaml"), "--limit", "8", "--max_pairs", "16", "--output_dir", str(out),
                       "--no_plots"])
    (label, result), = results.items()
    pair = result["koen_demo_en__koen_demo_ko"]
    assert result["role"] == "baseline" and pair["n_items"] == 8
    assert result["layer_pairs"]["sampled"] == 16
    args = json.loads((out / "eval_args.json").read_text())
    for path in [*args["baseline"], args["parallel_file"]]:
        assert Path(path).resolve().is_relative_to(ROOT)
    args = SimpleNamespace(pair=["demo"], suite=None, id_field="id", include_path=[], limit=None, en_data=None,
                           ko_data=None)
    pair = tasks.prepare_pairs(args)[0]  # the preset: the demo's reading passages are its clusters
    assert pair["cluster"] == [r["cluster"] for r in read_jsonl(DEMO / "eval_en.jsonl")]
