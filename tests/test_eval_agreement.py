"""eval_agreement.py: the counting against hand-computed cases, lm-eval's predicted choices against
log-likelihoods computed here directly with transformers, the per-layer states against hooks,
end to end on the real ARC-Challenge EN/KO files and NTREX-128 pairs, and the errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

import eval_agreement as ea
from common import stats
from common.data import sample_indices
from common.demo import train_demo_tokenizer
from common.metrics import alignment_measures, alignment_metrics
from common.pooling import find_decoder_layers, layer_states
from evaluation import representation, tasks

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # as conftest's shared_data fixture (module-scoped use here)
ARC = SHARED_DATA / "arc_challenge_en_ko"
EN_ARC = ARC / "ai2_arc-ARC-Challenge-test.jsonl"
KO_ARC = ARC / "ko_ai2_arc-ARC-Challenge-test.jsonl"
PAIR = "koen_arc_challenge_en__koen_arc_challenge_ko"
LIMIT = 6


# ----------------------------------------------------------------------------- counting, by hand


def test_cohen_kappa_hand_computed():
    # p_o = 4/5; marginals a: 0:2/5 1:2/5 2:1/5, b: 0:1/5 1:3/5 2:1/5 -> p_e = (2 + 6 + 1) / 25 = 0.36
    assert stats.cohen_kappa([0, 0, 1, 1, 2], [0, 1, 1, 1, 2]) == pytest.approx((0.8 - 0.36) / (1 - 0.36))
    assert stats.cohen_kappa([0, 1, 2, 3], [0, 1, 2, 3]) == pytest.approx(1.0)
    assert stats.cohen_kappa([0, 1], [1, 0]) == pytest.approx(-1.0)  # p_o = 0, p_e = 1/2
    # independent-looking labels: p_o = 1/2, p_e = 1/2 -> 0
    assert stats.cohen_kappa([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)
    assert stats.cohen_kappa([2, 2, 2], [2, 2, 2]) is None  # p_e = 1: undefined, not 0/0 = nan in the JSON


def test_cohen_kappa_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a = torch.randint(0, 5, (40,), generator=g).tolist()
        b = [x if torch.rand(1, generator=g).item() < 0.6 else torch.randint(0, 4, (1,), generator=g).item() for x in a]
        assert stats.cohen_kappa(a, b) == pytest.approx(sklearn_metrics.cohen_kappa_score(a, b))


def test_agreement_stats_hand_computed():
    gold = [0, 1, 2, 0, 1, 3]
    en = [0, 1, 0, 0, 2, 3]  # right: 0, 1, 3, 5
    ko = [0, 2, 0, 1, 2, 3]  # right: 0, 5
    s = stats.agreement_stats(gold, en, ko)
    assert s["n"] == 6
    assert s["acc_en"] == pytest.approx(4 / 6) and s["acc_ko"] == pytest.approx(2 / 6)
    # same choice on items 0, 2, 4, 5: items 2 and 4 agree while both wrong, which the 2x2 table cannot show
    assert s["agreement"] == pytest.approx(4 / 6)
    assert s["table"] == {"both_right": 2, "only_en_right": 2, "only_ko_right": 0, "both_wrong": 2}
    assert s["agreement_en_right"] == pytest.approx(2 / 4)
    # en counts 0:3 1:1 2:1 3:1, ko counts 0:2 1:1 2:2 3:1 -> p_e = (6 + 1 + 2 + 1) / 36
    p_o, p_e = 24 / 36, 10 / 36
    assert s["kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))
    assert stats.agreement_stats([0, 1], [1, 0], [1, 0])["agreement_en_right"] is None  # no item right in English


def test_predictions_acc_and_acc_norm():
    # raw: choice 0 (-10) wins; per character: -10/2 = -5, -12/12 = -1, -30/10 = -3 -> choice 1
    assert tasks.predictions([-10.0, -12.0, -30.0], ["ab", "abcdefghijkl", "abcdefghij"]) == (0, 1)
    assert tasks.predictions([-1.0, -1.0], ["x", "y"]) == (0, 0)  # ties go to the first choice, as np.argmax


# ----------------------------------------------------------------------------- tiny models


def save_llama(path: Path, tok, hidden=32, layers=2, seed=0) -> Path:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=1024, initializer_range=0.2, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_neox(path: Path, tok, hidden=32, layers=2, seed=1) -> Path:
    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=1024,
                           initializer_range=0.2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPTNeoXForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One end-to-end call: a tiny Llama checkpoint and a tiny GPT-NeoX baseline (Llama-2 tokenizer),
    the first LIMIT items of the real ARC-Challenge EN/KO files, and a sample of 30 of 64 parallel pairs:
    40 NTREX-128 pairs, then the first 24 Tatoeba pairs (short, some texts repeated: 'Wait!', 'Attack!',
    '쏴!')."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    tmp = tmp_path_factory.mktemp("real")
    tok = AutoTokenizer.from_pretrained(SHARED_DATA / "llama2_tokenizer")
    llama = save_llama(tmp / "run1" / "checkpoint-100", tok)
    neox = save_neox(tmp / "baselines" / "neox", tok)
    ntrex = SHARED_DATA / "ntrex128_en_ko"
    en_lines = (ntrex / "newstest2019-src.eng.txt").read_text(encoding="utf-8").splitlines()[:40]
    ko_lines = (ntrex / "newstest2019-ref.kor.txt").read_text(encoding="utf-8").splitlines()[:40]
    rows = [{"ko": k, "en": e, "source": "ntrex128"} for k, e in zip(ko_lines, en_lines)]
    tatoeba = (SHARED_DATA / "tatoeba_kor_eng" / "kor.txt").read_text(encoding="utf-8").splitlines()[:24]
    rows += [{"ko": line.split("\t")[1], "en": line.split("\t")[0], "source": "tatoeba"} for line in tatoeba]
    parallel = tmp / "pairs.jsonl"
    write_items(parallel, rows)
    out = tmp / "out"
    results = ea.main([str(llama), "--baseline", str(neox), "--en_data", str(EN_ARC), "--ko_data", str(KO_ARC),
                       "--limit", str(LIMIT), "--batch_size", "4", "--parallel_file", str(parallel),
                       "--max_pairs", "30", "--min_source_pairs", "11", "--rep_batch_size", "7",
                       "--output_dir", str(out)])
    return {"results": results, "out": out, "llama": llama, "neox": neox, "tok": tok, "parallel": parallel}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@torch.no_grad()
def direct_logliks(model, tok, context: str, choices: list[str]) -> list[float]:
    """log P(" " + choice | context), written here from the definition: tokenize context + continuation
    and the context alone (tokenizer defaults, so BOS for Llama tokenizers), the continuation tokens are
    the tail, one unpadded sequence per choice, sum of the log-softmax at the positions that predict them."""
    out = []
    for choice in choices:
        whole = tok(context + " " + choice)["input_ids"]
        ctx = tok(context)["input_ids"]
        assert whole[: len(ctx)] == ctx
        cont = whole[len(ctx):]
        logits = model(torch.tensor([whole])).logits[0].double()
        logp = F.log_softmax(logits[len(ctx) - 1 : -1], dim=-1)
        out.append(logp.gather(1, torch.tensor(cont).unsqueeze(1)).sum().item())
    return out


@pytest.mark.parametrize("which", ["llama", "neox"])
def test_predictions_equal_direct_loglikelihoods(real_run, which):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(real_run[which], dtype=torch.float32).eval()
    tok = real_run["tok"]
    label = {"llama": "run1/checkpoint-100", "neox": "neox"}[which]
    rows = read_jsonl(real_run["out"] / label / f"{PAIR}.items.jsonl")
    docs = {lang: {d["id"]: d for d in read_jsonl(path)} for lang, path in (("en", EN_ARC), ("ko", KO_ARC))}
    prompts = {"en": "Question: {}\nAnswer:", "ko": "질문: {}\n정답:"}
    decisive = 0
    for row in rows:
        for lang in ("en", "ko"):
            doc = docs[lang][row["id"]]
            choices = doc["choices"]["text"]
            ll = direct_logliks(model, tok, prompts[lang].format(doc["question"]), choices)
            assert row[f"loglik_{lang}"] == pytest.approx(ll, abs=2e-3, rel=1e-4)
            norm = [x / len(c) for x, c in zip(ll, choices)]
            for scores, key in ((ll, f"pred_{lang}"), (norm, f"pred_norm_{lang}")):
                top = sorted(scores, reverse=True)
                if top[0] - top[1] > 1e-3:  # a near-tie may flip under batching noise: compare decisive ones
                    decisive += 1
                    assert row[key] == max(range(len(scores)), key=scores.__getitem__), (row["id"], key)
        assert row["gold"] == docs["en"][row["id"]]["choices"]["label"].index(docs["en"][row["id"]]["answerKey"])
    assert decisive >= 4 * len(rows) - 2  # almost all comparisons were decisive


def test_end_to_end_real_arc(real_run):
    results, out = real_run["results"], real_run["out"]
    assert list(results) == ["run1/checkpoint-100", "neox"]  # order given: checkpoints, then baselines
    first_ids = [d["id"] for d in read_jsonl(EN_ARC)[:LIMIT]]
    on_disk = json.loads((out / "results.json").read_text(encoding="utf-8"))
    for label, r in results.items():
        rows = read_jsonl(out / label / f"{PAIR}.items.jsonl")
        assert [row["id"] for row in rows] == first_ids
        assert set(rows[0]) == {"id", "gold", "pred_en", "pred_ko", "pred_norm_en", "pred_norm_ko",
                                "loglik_en", "loglik_ko", "jsd", "ko_prob_of_en_pred", "similarity"}
        s = r[PAIR]
        # the summary is the per-item file counted again, and lm-eval's own accuracies agree
        recount = stats.agreement_stats([x["gold"] for x in rows], [x["pred_en"] for x in rows],
                                     [x["pred_ko"] for x in rows])
        for key in ("acc_en", "acc_ko", "agreement", "kappa", "table", "agreement_en_right"):
            assert s[key] == recount[key]
        assert s["n_items"] == LIMIT and sum(s["table"].values()) == LIMIT
        for key in ("acc_en", "acc_ko", "acc_norm_en", "acc_norm_ko"):
            assert s[key] == pytest.approx(s["lm_eval"][key])
        assert on_disk[label][PAIR]["table"] == s["table"]
    md = (out / "results.md").read_text(encoding="utf-8")
    rows_md = [line for line in md.splitlines() if line.startswith(("| run1/checkpoint-100", "| neox"))]
    assert [line.split("|")[1].strip() for line in rows_md[:2]] == ["run1/checkpoint-100", "neox"]
    assert "koen_arc_challenge_en acc" in md and "koen_arc_challenge_ko acc" in md
    for png in ("accuracy_vs_step.png", "retrieval_per_layer.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_end_to_end_layers_on_a_sample_overall_and_per_source(real_run):
    """Per-layer metrics on the seeded sample of the NTREX + Tatoeba pairs (over the whole file, not its first
    30 rows) equal alignment_metrics, with the texts as keys, of vectors pooled here one sentence at a time
    without padding (so batching, sorting and the padding masks change nothing); the same per source."""
    from transformers import AutoModelForCausalLM

    results, tok = real_run["results"], real_run["tok"]
    everything = read_jsonl(real_run["parallel"])
    picked = sample_indices([p["source"] for p in everything], 30, seed=1234)  # --seed's default
    assert max(picked) >= 40  # Tatoeba rows, after the first 30, are in the sample
    pairs = [everything[i] for i in picked]
    assert len({p["en"] for p in pairs}) < len(pairs)  # a repeated text ('Attack!'): the keys matter
    by_source = {s: [i for i, p in enumerate(pairs) if p["source"] == s] for s in ("ntrex128", "tatoeba")}
    assert {s: len(rows) for s, rows in by_source.items()} == {"ntrex128": 19, "tatoeba": 11}  # 30 x 40/64, 24/64
    for label, which in (("run1/checkpoint-100", "llama"), ("neox", "neox")):
        layers = results[label]["layers"]
        assert [m["layer"] for m in layers] == [0, 1, 2]
        assert results[label]["best_layer"] == ea.best_layer(layers)
        assert results[label]["layer_pairs"] == {"sampled": 30, "rows_in_file": 64, "seed": 1234,
                                                 "by_source": {"ntrex128": 19, "tatoeba": 11}}
        assert list(results[label]["layers_by_source"]) == ["ntrex128", "tatoeba"]
        model = AutoModelForCausalLM.from_pretrained(real_run[which], dtype=torch.float32).eval()

        @torch.no_grad()
        def vecs(text):  # (layers, D): mean over the tokens of one unpadded sentence, BOS left out
            enc = tok(text, truncation=True, max_length=128, return_tensors="pt")
            states = layer_states(model, enc["input_ids"], enc["attention_mask"])
            keep = enc["input_ids"][0] != tok.bos_token_id
            return torch.stack([h[0][keep].mean(0) for h in states])

        ko_all = torch.stack([vecs(p["ko"]) for p in pairs], dim=1)
        en_all = torch.stack([vecs(p["en"]) for p in pairs], dim=1)
        for source, rows in [(None, list(range(len(pairs))))] + list(by_source.items()):
            got = layers if source is None else results[label]["layers_by_source"][source]
            ko_keys, en_keys = [pairs[i]["ko"] for i in rows], [pairs[i]["en"] for i in rows]
            for layer in (0, 1, 2):
                expected = {**alignment_metrics(ko_all[layer][rows], en_all[layer][rows], ko_keys, en_keys),
                            **alignment_measures(ko_all[layer][rows], en_all[layer][rows], ko_keys, en_keys)}
                intervals = {f"{k}_ci" for k in expected if "cka" not in k} if source is None else set()
                assert set(got[layer]) == {"layer", *expected, *intervals}
                for key, value in expected.items():
                    assert got[layer][key] == pytest.approx(value, abs=1e-4, nan_ok=True), (label, source, layer, key)
    md = (real_run["out"] / "results.md").read_text(encoding="utf-8")
    assert "| run1/checkpoint-100 | ntrex128 | 19 | 1 |" in md and "| neox | tatoeba | 11 | 1 |" in md  # middle layer
    assert "Layer metrics on 30 of the 64 pairs" in md


@pytest.fixture(scope="module")
def demo_tok():
    texts = [f"sentence number {i} about science and 문장 번호 {i} 과학" for i in range(200)]
    return train_demo_tokenizer(texts, vocab_size=300)


def test_layer_states_llama_and_neox(demo_tok, tmp_path):
    """common.pooling.layer_states, as eval_agreement uses it: layer 0 = embeddings, L < N = Hugging Face's
    hidden_states[L], N = last decoder layer before the final norm; for Llama the training forward
    (decoder_hidden_states) and the generic hook path agree."""
    texts = ["sentence number 3 about", "문장 번호 7 과학 and more words here"]
    enc = demo_tok(texts, padding=True, return_tensors="pt")
    for model in (LlamaForCausalLM.from_pretrained(save_llama(tmp_path / "l", demo_tok, layers=3)),
                  GPTNeoXForCausalLM.from_pretrained(save_neox(tmp_path / "n", demo_tok, layers=3))):
        model.eval()
        per_layer = []
        hooks = [layer.register_forward_hook(lambda m, i, o: per_layer.append(o[0] if isinstance(o, tuple) else o))
                 for layer in find_decoder_layers(model)]
        with torch.no_grad():
            hf = model(**enc, output_hidden_states=True).hidden_states
        for h in hooks:
            h.remove()
        with torch.no_grad():
            ours = layer_states(model, enc["input_ids"], enc["attention_mask"])
            generic = layer_states(model, enc["input_ids"], enc["attention_mask"], generic=True)
        assert len(ours) == len(generic) == 4
        torch.testing.assert_close(ours[0], hf[0])
        for layer in (1, 2, 3):
            torch.testing.assert_close(ours[layer], per_layer[layer - 1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(generic[layer], ours[layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours[2], hf[2], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ours[3], hf[3], atol=1e-3)  # HF's last entry is after the final norm


# ----------------------------------------------------------------------------- pairs by configuration


def write_task(folder: Path, name: str, data: str, prompt: str):
    """A multiple-choice task that is not ARC: 'options' list, integer 'answer', 'uid', 3 to 5 choices."""
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        f"output_type: multiple_choice\ndoc_to_text: \"{prompt} {{{{q}}}}\\nA:\"\ndoc_to_choice: \"{{{{options}}}}\"\n"
        "doc_to_target: answer\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n", encoding="utf-8")


def write_items(path: Path, items: list[dict]):
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8")


def mc_items(lang: str) -> list[dict]:
    word = {"en": "color", "ko": "색"}[lang]
    return [{"uid": f"q{i}", "q": f"{word} {i}?", "options": [f"{word} {j}" for j in range(3 + i % 3)], "answer": i % 3}
            for i in range(5)]


def test_pair_by_configuration_joins_by_id(demo_tok, tmp_path):
    """--pair with --include_path: relative data_files resolved from the YAML's folder, a custom id field,
    3/4/5 choices, integer answers, and a Korean file in another order: items join by id, not position."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_items(tasks / "en.jsonl", mc_items("en"))
    write_items(tasks / "ko.jsonl", mc_items("ko")[::-1])
    write_task(tasks, "toy_en", "en.jsonl", "Q:")
    write_task(tasks, "toy_ko", "ko.jsonl", "질문:")
    model = save_llama(tmp_path / "m", demo_tok)
    out = tmp_path / "out"
    results = ea.main([str(model), "--pair", "toy_en:toy_ko", "--include_path", str(tasks), "--id_field", "uid",
                       "--limit", "4", "--output_dir", str(out), "--no_plots"])
    rows = read_jsonl(out / "m" / "toy_en__toy_ko.items.jsonl")
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3"]
    for r, item in zip(rows, mc_items("en")):
        assert len(r["loglik_en"]) == len(r["loglik_ko"]) == len(item["options"])  # a misjoin would mix 3/4/5
        assert r["gold"] == item["answer"]
    assert results["m"]["toy_en__toy_ko"]["n_items"] == 4


# ----------------------------------------------------------------------------- errors


def test_mismatched_files_list_counts_and_first_mismatches(demo_tok, tmp_path, shared_data):
    en = read_jsonl(shared_data / "arc_challenge_en_ko" / "ai2_arc-ARC-Challenge-test.jsonl")[:8]
    ko = read_jsonl(shared_data / "arc_challenge_en_ko" / "ko_ai2_arc-ARC-Challenge-test.jsonl")[:8]
    ko = ko[:7] + [dict(ko[0], id="KO_ONLY_1")]  # en[7] missing from ko, one extra
    ko[1] = dict(ko[1], choices={"text": ko[1]["choices"]["text"][:3], "label": ko[1]["choices"]["label"][:3]})
    labels = ko[2]["choices"]["label"]
    ko[2] = dict(ko[2], answerKey=next(x for x in labels if x != ko[2]["answerKey"]))
    write_items(tmp_path / "en.jsonl", en)
    write_items(tmp_path / "ko.jsonl", ko)
    model = save_llama(tmp_path / "m", demo_tok)
    with pytest.raises(ea.EvalError) as e:
        ea.main([str(model), "--en_data", str(tmp_path / "en.jsonl"), "--ko_data", str(tmp_path / "ko.jsonl"),
                 "--limit", "2", "--output_dir", str(tmp_path / "out")])
    msg = str(e.value)
    assert "(8 items)" in msg
    assert "1 ids only in koen_arc_challenge_en" in msg and en[7]["id"] in msg
    assert "1 ids only in koen_arc_challenge_ko" in msg and "KO_ONLY_1" in msg
    assert "1 ids with a different number of choices" in msg and f"{en[1]['id']}: 4 vs 3" in msg
    assert "1 ids with a different gold answer" in msg and en[2]["id"] in msg
    assert not (tmp_path / "out").exists()  # found before anything was written or any model loaded

    write_items(tmp_path / "ko.jsonl", ko[:1] + ko[:7])
    with pytest.raises(ea.EvalError, match="1 duplicate ids in koen_arc_challenge_ko"):
        ea.main([str(model), "--en_data", str(tmp_path / "en.jsonl"), "--ko_data", str(tmp_path / "ko.jsonl"),
                 "--output_dir", str(tmp_path / "out")])


def test_pair_may_name_lm_eval_builtin_tasks_offline(tmp_path, shared_data, monkeypatch, caplog):
    """Our pair is found without indexing lm-eval's built-in tasks; a name not in tasks/ (lm-eval's own
    arc_challenge, which ours no longer overrides) is looked up among them, and its items are still joined by
    id to the Korean task's. Local files only (offline)."""
    import logging

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lookup = tasks.TaskLookup([])
    assert set(lookup.ours.all_subtasks) >= {"koen_arc_challenge_en", "koen_arc_challenge_ko"}
    assert "koen_arc" in lookup.ours.all_tags
    assert lookup.manager_for(*ea.DEFAULT_PAIR.split(":")) is lookup.ours
    assert lookup._with_defaults is None  # the built-in index (~4 s) is not built for our own tasks
    with caplog.at_level(logging.WARNING, logger="lm_eval.tasks"):
        manager = lookup.manager_for("arc_easy", "koen_arc_challenge_ko")
    assert manager is lookup.with_defaults
    assert "overrides existing task" not in caplog.text  # our names collide with no built-in task
    cfg = tasks.task_config(manager, "arc_easy", None)  # the built-in YAML, its dataset not loaded
    assert cfg["task"] == "arc_easy" and cfg["dataset_path"] == "allenai/ai2_arc"
    with pytest.raises(ea.EvalError, match="unknown task 'nope': not among lm-eval's built-in tasks"):
        lookup.manager_for("arc_easy", "nope")

    en = read_jsonl(shared_data / "arc_challenge_en_ko" / "ai2_arc-ARC-Challenge-test.jsonl")[:8]
    ko = read_jsonl(shared_data / "arc_challenge_en_ko" / "ko_ai2_arc-ARC-Challenge-test.jsonl")[:8]
    write_items(tmp_path / "en.jsonl", en)
    write_items(tmp_path / "ko.jsonl", ko)
    args = ea.Arguments(models=["x"], pair=["arc_challenge:koen_arc_challenge_ko"], limit=3,
                        en_data=str(tmp_path / "en.jsonl"), ko_data=str(tmp_path / "ko.jsonl"))
    (pair,) = ea.prepare_pairs(args)
    assert pair["name"] == "arc_challenge__koen_arc_challenge_ko" and len(pair["en_items"]) == 8
    assert pair["en_task"].config.task == "arc_challenge" and pair["ko_idx"] == [0, 1, 2]
    write_items(tmp_path / "ko.jsonl", ko[:7] + [dict(ko[0], id="KO_ONLY_1")])
    with pytest.raises(ea.EvalError, match=r"(?s)ids only in arc_challenge .*1 ids only in koen_arc_challenge_ko"):
        ea.prepare_pairs(args)


def test_read_pairs_samples_the_whole_file_by_source(tmp_path):
    rows = ([{"ko": f"가 {i}", "en": f"a {i}", "source": "big"} for i in range(90)]
            + [{"ko": f"나 {i}", "en": f"b {i}"} for i in range(10)])  # no source field
    path = tmp_path / "pairs.jsonl"
    write_items(path, rows)
    pairs = ea.read_pairs(str(path), 20, seed=5)
    sources = ["big"] * 90 + [representation.NO_SOURCE] * 10
    picked = sample_indices(sources, 20, seed=5)
    assert pairs["ko"] == [rows[i]["ko"] for i in picked] and pairs["en"] == [rows[i]["en"] for i in picked]
    assert pairs["source"] == [sources[i] for i in picked] and pairs["rows_in_file"] == 100
    assert pairs["source"].count(representation.NO_SOURCE) == 2 and max(picked) > 20  # not the first 20 rows
    assert ea.read_pairs(str(path), 20, seed=5) == pairs
    assert representation.source_groups(pairs["source"], 2) == {
        "(no source)": [i for i, s in enumerate(pairs["source"]) if s == representation.NO_SOURCE],
        "big": [i for i, s in enumerate(pairs["source"]) if s == "big"]}
    assert list(representation.source_groups(pairs["source"], 3)) == ["big"]  # under --min_source_pairs: overall only
    assert representation.source_groups(["big"] * 5, 2) == {}  # one source: the overall metrics already are its metrics


def hangul_task(texts: list[str], choices: list[list[str]]):
    class Task:  # the three members of an lm-eval Task that hangul_share reads
        eval_docs = list(range(len(texts)))

        def doc_to_text(self, doc):
            return texts[doc]

        def doc_to_choice(self, doc):
            return choices[doc]

    return Task()


def test_hangul_share_by_hand():
    task = hangul_task(
        ["질문: 사과는 무슨 색?", "Question: what colour?", "Q: 사과 apple", "1 + 1 =", "Q: a b"],
        [["빨강", "파랑"], ["red", "blue"], ["x"], ["2", "3"], ["사과", "바나나"]])
    # Hangul letters of question + choices: all / none / 2 of 9 (Q 사 과 a p p l e x) / no letter, not counted /
    # 5 of 8 (Q a b 사 과 바 나 나): 2 of the 4 counted documents are mostly Hangul
    assert tasks.hangul_share(task) == (pytest.approx(2 / 4), 4)
    assert tasks.hangul_share(hangul_task(["1 2 3"], [["4"]])) == (None, 0)
    # a large task: max_docs documents spread evenly from the first to the last (here 0, 3, 6, 9 of 10)
    ko_then_en = hangul_task(["가나"] * 4 + ["ab"] * 6, [[]] * 10)
    assert tasks.hangul_share(ko_then_en, max_docs=4) == (pytest.approx(2 / 4), 4)
    assert tasks.hangul_share(ko_then_en, max_docs=100) == (pytest.approx(4 / 10), 10)


def test_files_in_the_wrong_language_are_refused(tmp_path):
    """Swapped --en_data/--ko_data would be scored without a word (same ids, choices, answers): refused, with
    the share of mostly-Hangul documents, before any model is loaded or anything written."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    out = tmp_path / "out"
    with pytest.raises(ea.EvalError) as e:
        ea.main([str(tmp_path / "m"), "--en_data", str(KO_ARC), "--ko_data", str(EN_ARC), "--output_dir", str(out)])
    msg = str(e.value)
    assert "swapped" in msg
    # 300 of the 1172 documents read, spread over the file
    assert (f"koen_arc_challenge_en ({KO_ARC}) is the English task, but 99.7% of its documents are mostly Hangul "
            "(of 300") in msg
    assert (f"koen_arc_challenge_ko ({EN_ARC}) is the Korean task, but only 0.0% of its documents are mostly "
            "Hangul") in msg
    with pytest.raises(ea.EvalError) as e:  # English on both sides: only the Korean task is wrong
        ea.main([str(tmp_path / "m"), "--en_data", str(EN_ARC), "--ko_data", str(EN_ARC), "--output_dir", str(out)])
    assert "is the Korean task, but only 0.0%" in str(e.value) and "English task" not in str(e.value)
    assert not out.exists()


def test_hub_dataset_fails_fast_offline_or_unreachable(tmp_path, monkeypatch):
    """Without --en_data/--ko_data the YAMLs name hub datasets: offline, the error says so and what to pass;
    with the hub unreachable, one probe fails at once instead of the libraries' ~25 s of retries."""
    import time

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    argv = [str(tmp_path / "m"), "--output_dir", str(tmp_path / "out")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ea.EvalError, match=r"reads the hub dataset 'allenai/ai2_arc' and HF_HUB_OFFLINE=1 is set.*"
                                           r"pass --en_data/--ko_data"):
        ea.main(argv)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, refused at once
    monkeypatch.setattr(tasks, "_hub_probe", {})
    start = time.perf_counter()
    with pytest.raises(ea.EvalError, match=r"task koen_arc_challenge_en reads the hub dataset 'allenai/ai2_arc', "
                                           r"but the hub cannot be reached \(http://127.0.0.1:9: "
                                           r".*pass --en_data/--ko_data"):
        ea.main(argv)
    assert time.perf_counter() - start < 5
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_and_bad_inputs(tmp_path):
    (tmp_path / "no_config").mkdir()
    with pytest.raises(ea.EvalError) as e:
        ea.main([str(tmp_path / "missing"), str(tmp_path / "no_config"), "--output_dir", str(tmp_path / "out")])
    msg = str(e.value)
    assert "2 of 2 models cannot be used" in msg
    assert "missing: no such checkpoint folder" in msg and "no_config: folder has no config.json" in msg
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ko": "안녕", "en": "hi"}\n{"ko": "둘"}\n', encoding="utf-8")
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "config.json").write_text("{}")
    with pytest.raises(ea.EvalError, match=r"bad.jsonl:2: missing field 'en'"):
        ea.main([str(tmp_path / "ok"), "--skip_tasks", "--parallel_file", str(bad),
                 "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ea.EvalError, match="give both --en_data and --ko_data"):
        ea.main([str(tmp_path / "ok"), "--en_data", str(bad), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ea.EvalError, match="unknown task 'nope'"):
        ea.main([str(tmp_path / "ok"), "--pair", "nope:koen_arc_challenge_ko", "--output_dir", str(tmp_path / "out")])


def test_model_whose_layers_cannot_be_found_is_an_eval_error(demo_tok, tmp_path):
    """common.pooling's TypeError reaches the user as an EvalError that names the model."""
    model = GPTNeoXForCausalLM.from_pretrained(save_neox(tmp_path / "n", demo_tok)).eval()
    model.config.num_hidden_layers = 5  # no ModuleList of 5 layers: the decoder layers cannot be found
    args = ea.Arguments(models=["x"], rep_batch_size=2)
    with pytest.raises(ea.EvalError, match=r"^baselines/neox: no representation metrics .*cannot find its 5 decoder"):
        ea.layer_metrics(model, demo_tok, ["a b", "c d"], ["e f", "g h"], args, torch.device("cpu"), "baselines/neox")


def test_command_line_error_is_one_line_not_a_traceback(tmp_path):
    command = [sys.executable, str(ROOT / "eval_agreement.py"), str(tmp_path / "nope"), "--output_dir", str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "eval_agreement.py: error: 1 of 1 models cannot be used" in proc.stderr
    assert "Traceback" not in proc.stderr
    # common.cli.run_main: an expected error that is not an EvalError (an output folder that is a file) is one
    # line too
    assert issubclass(ea.EvalError, ValueError)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    write_items(tmp_path / "pairs.jsonl", [{"ko": "안녕", "en": "hi"}, {"ko": "둘", "en": "two"}])
    (tmp_path / "taken").write_text("a file")
    command = [sys.executable, str(ROOT / "eval_agreement.py"), str(tmp_path / "m"), "--skip_tasks",
               "--parallel_file", str(tmp_path / "pairs.jsonl"), "--output_dir", str(tmp_path / "taken")]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("eval_agreement.py: error: [Errno 17] File exists")


def test_arguments_positional_and_labels(tmp_path):
    args = ea.parse_args(["a", "b", "--baseline", "org/base", "--limit", "3", "--output_dir", "o"])
    assert args.models == ["a", "b"] and args.baseline == ["org/base"] and args.limit == 3
    assert ea.parse_args(["--limit", "3", "--models", "a"]).models == ["a"]
    for run in ("run1", "run2"):
        (tmp_path / run / "checkpoint-100").mkdir(parents=True)
        (tmp_path / run / "checkpoint-100" / "config.json").write_text("{}")
    (tmp_path / "run1" / "checkpoint-200").mkdir()
    (tmp_path / "run1" / "checkpoint-200" / "config.json").write_text("{}")
    args = ea.parse_args([str(tmp_path / "run1" / "checkpoint-100"), str(tmp_path / "run2" / "checkpoint-100"),
                          str(tmp_path / "run1" / "checkpoint-200"), "--baseline", "org/base"])
    labels = [e["label"] for e in ea.resolve_models(args)]
    # a checkpoint is named with its run folder, so two runs' checkpoint-200 never look alike in a legend
    assert labels == ["run1/checkpoint-100", "run2/checkpoint-100", "run1/checkpoint-200", "base"]
    with pytest.raises(ea.EvalError, match="given twice"):
        ea.resolve_models(ea.parse_args([str(tmp_path / "run1" / "checkpoint-100")] * 2))


def test_config_file_with_command_line_overrides(tmp_path):
    """``eval_agreement.py eval.yaml --limit 5``: the file gives the settings, the flags after it win;
    relative input paths that exist beside the file are read from there, output_dir stays as written."""
    folder = tmp_path / "conf"
    (folder / "ckpt").mkdir(parents=True)
    (folder / "pairs.jsonl").write_text('{"ko": "안녕", "en": "hi"}\n', encoding="utf-8")
    config = folder / "eval.yaml"
    config.write_text("models: [ckpt]\noutput_dir: runs/from_config\nskip_tasks: true\nparallel_file: pairs.jsonl\n"
                      "limit: 3\nmax_pairs: '50'\npooling: last\nplots: false\n", encoding="utf-8")
    args = ea.parse_args([str(config), "--limit", "5", "--pooling", "mean"])
    assert isinstance(args, ea.Arguments)
    assert args.limit == 5 and args.pooling == "mean"  # the command line wins
    assert args.skip_tasks is True and args.plots is False and args.max_pairs == 50  # the rest from the file
    assert args.output_dir == "runs/from_config"
    here = folder.resolve()
    assert args.models == [str(here / "ckpt")] and args.parallel_file == str(here / "pairs.jsonl")
    assert args.pair == [ea.DEFAULT_PAIR] and args.batch_size == 32  # not in the file: the defaults
    ea.check_args(args)
    assert ea.parse_args([str(config), "--skip_tasks", "false", "--plots", "true"]).skip_tasks is False

    json_config = folder / "eval.json"
    json_config.write_text(json.dumps({"models": ["ckpt"], "skip_tasks": True, "parallel_file": "pairs.jsonl"}))
    assert ea.parse_args([str(json_config), "--output_dir", "o"]).output_dir == "o"
    config.write_text("models: [ckpt]\nlimt: 3\n", encoding="utf-8")
    with pytest.raises(ea.EvalError, match=r"unknown setting\(s\) \['limt'\]"):
        ea.parse_args([str(config)])
    with pytest.raises(ea.EvalError, match="no such file"):
        ea.parse_args([str(folder / "missing.yaml"), "--limit", "5"])


# ----------------------------------------------------------------------------- pooled as the run trained

DEMO = ROOT / "data" / "demo"


@pytest.fixture
def one_thread():
    """Tiny models on a busy CPU: threads waiting on each other cost more than they compute."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def two_source_validation(path: Path) -> Path:
    """The demo's 256 validation pairs, alternately from 'news' and 'talk': with 120 sampled, 60 each, so the
    per-source metrics (sources of 50 pairs or more) are on in training and here."""
    rows = read_jsonl(DEMO / "validation.jsonl")
    write_items(path, [dict(r, source=("news", "talk")[i % 2]) for i, r in enumerate(rows)])
    return path


def train_demo_run(out: Path, validation: Path, *variant: str) -> Path:
    import train_contrastive

    train_contrastive.main(["--model_name_or_path", str(DEMO / "model"), "--train_file", str(DEMO / "train.jsonl"),
                            "--validation_file", str(validation), "--output_dir", str(out), "--learning_rate", "1e-3",
                            "--per_device_train_batch_size", "16", "--max_steps", "4", "--save_steps", "4",
                            "--eval_steps", "4", "--max_eval_pairs", "120", "--report_to", "none", *variant])
    return out


def log_evals(run: Path) -> list[dict]:
    return [r for r in read_jsonl(run / "log.jsonl") if "eval/gap" in r]


def flatten(rep: dict) -> dict:
    """A representation in the training log's names: metric, <source>/<metric>, layer_share/<L>."""
    flat = {k: v for k, v in rep.items() if isinstance(v, float)}
    flat.update({f"{s}/{k}": v for s, metrics in rep.get("by_source", {}).items() for k, v in metrics.items()})
    flat.update({f"layer_share/{layer}": v for layer, v in rep.get("layer_share", {}).items()})
    return flat


def assert_equals_log(rep: dict, record: dict):
    logged = {k.removeprefix("eval/"): v for k, v in record.items() if k.startswith("eval/")}
    # the evaluation adds linear CKA and strict retrieval to what training logs, overall and per source
    extra = {k for k in set(flatten(rep)) - set(logged) if k.rpartition("/")[2] in ("cka", "retrieval_strict")}
    assert set(flatten(rep)) - extra == set(logged)
    for key, value in logged.items():
        assert flatten(rep)[key] == pytest.approx(value, abs=2e-6), key


TRAINED = {
    # a mixture of layers 1-3 pooled at the last token; weights moved by a high mixture learning rate
    "mixture_last": (["--mix_layers", "1-3", "--pooling", "last", "--mix_learning_rate", "0.2",
                      "--mix_temperature", "0.5"], "42"),
    # one layer, English through the frozen starting model, BOS in the mean, seed 7, sentences cut to 4 tokens
    # (so that different texts share their token ids: the duplicates are found by ids, as in training)
    "frozen_bos_short": (["--pool_layer", "2", "--english_encoder", "frozen", "--include_bos", "--max_seq_length", "4",
                          "--seed", "7"], "7"),
}


@pytest.mark.usefixtures("reset_accelerate", "one_thread")
@pytest.mark.parametrize("variant", list(TRAINED))
def test_representation_equals_the_training_logs_last_eval(tmp_path, variant):
    """A checkpoint is pooled exactly as its run trained (training_args.json, layer_weights.json): on the same
    validation file, n and seed, results.json's "representation" equals the training log's final eval, overall,
    per source and the mixture's layer shares; the base model, pooled as the run at step 0, equals its step-0 eval."""
    flags, seed = TRAINED[variant]
    validation = two_source_validation(tmp_path / "validation.jsonl")
    run = train_demo_run(tmp_path / "run", validation, *flags)
    out = tmp_path / "eval"
    results = ea.main([str(run / "checkpoint-4"), "--baseline", str(DEMO / "model"), "--skip_tasks", "--parallel_file",
                       str(validation), "--max_pairs", "120", "--seed", seed, "--output_dir", str(out), "--no_plots"])
    first, last = log_evals(run)[0], log_evals(run)[-1]
    assert last["step"] == 4 and first["step"] == 0
    rep = results["run/checkpoint-4"]["representation"]
    assert set(rep["by_source"]) == {"news", "talk"}
    assert_equals_log(rep, last)
    assert_equals_log(results["model"]["representation"], first)
    pooled = rep["pooled"]
    assert pooled["trained_by"] == str((run / "checkpoint-4").resolve())
    assert rep["pairs"]["sampled"] == 120 and rep["pairs"]["seed"] == int(seed)
    md = (out / "results.md").read_text(encoding="utf-8")
    if variant == "mixture_last":
        weights = json.loads((run / "checkpoint-4" / "layer_weights.json").read_text())
        assert pooled["layers"] == [1, 2, 3] and pooled["weights"] == [weights[k] for k in ("1", "2", "3")]
        assert max(weights.values()) - min(weights.values()) > 0.01  # the trained weights, not uniform ones
        assert pooled["pooling"] == "last" and pooled["english_model"] is None
        assert results["run/checkpoint-4"]["trained_layer"] == int(max(weights, key=weights.get))
        assert "| run/checkpoint-4 | mix 1-3 (top" in md and "last (as step 0)" in md
    else:
        assert pooled["layers"] == [2] and pooled["include_bos"] and pooled["max_seq_length"] == 4
        assert pooled["english_encoder"] == "frozen" and pooled["english_model"] == str(DEMO / "model")
        assert "| run/checkpoint-4 | layer 2, mean, BOS, EN frozen start |" in md
        assert results["run/checkpoint-4"]["trained_layer"] == 2
        # --english_model self: the checkpoint encodes English too; that is its per-layer metric at layer 2
        # (pooled as trained: BOS included, 4 tokens), computed there with other batches
        self_rep = ea.main([str(run / "checkpoint-4"), "--skip_tasks", "--parallel_file", str(validation),
                            "--max_pairs", "120", "--seed", seed, "--output_dir", str(tmp_path / "self"),
                            "--no_plots", "--english_model", "self"])["run/checkpoint-4"]
        assert self_rep["representation"]["pooled"]["english_model"] is None
        assert self_rep["representation"]["pooled"]["english_encoder"] == "self"
        assert "layer 2, mean, BOS, EN through itself |" in (tmp_path / "self" / "results.md").read_text()
        assert self_rep["representation"]["parallel_cos"] != pytest.approx(last["eval/parallel_cos"], abs=1e-3)
        layer2 = self_rep["layers"][2]  # keyed by texts there: the metrics that do not depend on duplicates
        for key in ("parallel_cos", "centred_cos"):
            assert self_rep["representation"][key] == pytest.approx(layer2[key], abs=1e-5), key
        assert self_rep["layers_pooled"] == {"pooling": "mean", "include_bos": True, "max_seq_length": 4, "bf16": False}


def save_run_config(folder: Path, layers: int = 6, **training_args) -> Path:
    from transformers import LlamaConfig

    folder.mkdir(parents=True)
    LlamaConfig(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4).save_pretrained(
        folder)
    if training_args:
        (folder / "training_args.json").write_text(json.dumps(training_args))
    return folder


def test_trained_pooling_reads_the_run_and_follows_later_stages(tmp_path):
    """trained_pooling: no training_args.json -> None; pool_layer unset -> N // 2; a mixture takes its layers and
    weights from layer_weights.json (an error without it); a stage-2/3 checkpoint is pooled as the stage-1
    checkpoint it started from, English shared (its frozen copy is gone)."""
    base = save_run_config(tmp_path / "base")
    assert ea.trained_pooling(str(base)) is None
    middle = save_run_config(tmp_path / "middle" / "checkpoint-5", pool_layer=None, mix_layers=None,
                             model_name_or_path=str(base), english_encoder="frozen", bf16=True, pooling="mean")
    spec = ea.trained_pooling(str(middle))
    assert spec["layers"] == [3] and spec["weights"] is None and spec["bf16"] is True
    assert spec["english_encoder"] == "frozen" and spec["english_model"] == str(base)
    mix = save_run_config(tmp_path / "mix" / "checkpoint-5", pool_layer=None, mix_layers="2,4-5", pooling="last",
                          mix_normalize=False, model_name_or_path=str(base), per_device_train_batch_size=7)
    with pytest.raises(ea.EvalError, match="trained with --mix_layers 2,4-5 but has no layer_weights.json"):
        ea.trained_pooling(str(mix))
    (mix / "layer_weights.json").write_text(json.dumps({"2": 0.2, "4": 0.5, "5": 0.3}))
    (mix / "trainer_state.json").write_text(json.dumps({"step": 5}))  # complete: --pool_like takes the run folder
    spec = ea.trained_pooling(str(mix))
    assert spec["layers"] == [2, 4, 5] and spec["weights"] == [0.2, 0.5, 0.3] and spec["normalize"] is False
    assert spec["pooling"] == "last" and spec["batch_size"] == 7 and ea.top_layer(spec) == 4
    assert representation.describe_pooling(spec) == "mix 2,4,5 (top 4: 0.500), last"
    stage2 = save_run_config(tmp_path / "stage2" / "checkpoint-9", model_name_or_path=str(middle), block_size=64)
    stage3 = save_run_config(tmp_path / "stage3" / "checkpoint-9", model_name_or_path=str(stage2), ko_ratio=0.5)
    spec = ea.trained_pooling(str(stage3))
    assert spec["layers"] == [3] and spec["trained_by"] == str(middle.resolve()) and spec["descendant_of_run"]
    assert spec["english_encoder"] == "shared" and spec["english_model"] is None
    gone = save_run_config(tmp_path / "gone" / "checkpoint-1", model_name_or_path="org/hub-model", block_size=64)
    assert ea.trained_pooling(str(gone)) is None
    # the baselines follow each distinct run pooling, as at step 0 (uniform weights, English through themselves)
    args = ea.parse_args(["--baseline", str(base), "--pool_like", str(tmp_path / "mix"), str(stage3), str(middle)])
    specs = ea.pool_like_specs(args, [])
    assert [s["layers"] for s in specs] == [[2, 4, 5], [3]]  # stage 3 pools as its stage-1 run: one spec
    assert specs[0]["weights"] == [1 / 3] * 3 and specs[0]["like_run"] == str(mix.resolve())
    assert specs[1]["english_model"] is None


def demo_checkpoint(run: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint folder as the trainer leaves it: the demo model, training_args.json (layer 1), and
    trainer_state.json (what marks it complete); incomplete, it is still checkpoint-{step}.tmp."""
    import shutil

    folder = run / (f"checkpoint-{step}" if complete else f"checkpoint-{step}.tmp")
    shutil.copytree(DEMO / "model", folder)
    (folder / "training_args.json").write_text(json.dumps({"pool_layer": 1, "model_name_or_path": str(DEMO / "model"),
                                                           "per_device_train_batch_size": 8}))
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"step": step, "num_processes": 1}))
    return folder


@pytest.mark.usefixtures("one_thread")
def test_watch_evaluates_each_complete_checkpoint_once_and_resumes(tmp_path, monkeypatch):
    """--watch follows a run: checkpoint-3 is evaluated, checkpoint-6.tmp (being written) is not; while the
    run holds its lock, the watcher waits (here until --watch_timeout). Started again once checkpoint-6 is
    complete and the run has ended, it evaluates only checkpoint-6 and the earlier results stay as they were."""
    import os
    import socket

    run = tmp_path / "run"
    demo_checkpoint(run, 3)
    demo_checkpoint(run, 6, complete=False)
    (run / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    pairs = tmp_path / "pairs.jsonl"
    write_items(pairs, read_jsonl(DEMO / "validation.jsonl")[:40])
    loaded = []
    load_model = ea.load_model
    monkeypatch.setattr(ea, "load_model", lambda entry, *a: loaded.append(Path(entry["source"]).name) or
                        load_model(entry, *a))
    argv = ["--watch", str(run), "--baseline", str(DEMO / "model"), "--skip_tasks", "--parallel_file", str(pairs),
            "--max_pairs", "16", "--output_dir", str(tmp_path / "eval"), "--no_plots"]
    first = ea.main([*argv, "--watch_interval", "0.05", "--watch_timeout", "0.3"])
    assert list(first) == ["run/checkpoint-3", "model"] and loaded == ["checkpoint-3", "model"]
    assert first["model"]["representation"]["pooled"]["layers"] == [1]  # pooled like the run it follows
    assert first["model"]["representation"]["pooled"]["like_run"] == str((run / "checkpoint-3").resolve())
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())

    os.rename(run / "checkpoint-6.tmp", run / "checkpoint-6")
    (run / "checkpoint-6" / "trainer_state.json").write_text(json.dumps({"step": 6, "num_processes": 1}))
    (run / ".lock").unlink()  # training has ended
    loaded.clear()
    second = ea.main(argv)  # no timeout: it returns because no run is live
    assert loaded == ["checkpoint-6"]
    assert list(second) == ["run/checkpoint-3", "model", "run/checkpoint-6"]
    on_disk = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert on_disk["run/checkpoint-3"] == saved["run/checkpoint-3"] and on_disk["model"] == saved["model"]
    assert "| run/checkpoint-6 | layer 1, mean |" in (tmp_path / "eval" / "results.md").read_text()
    loaded.clear()
    ea.main(argv)  # nothing new: nothing loaded
    assert loaded == []


def test_best_layer_uses_retrieval_both_ways():
    """The best layer has the highest mean of ko->en and en->ko retrieval, not of one direction."""
    layers = [{"layer": 0, "retrieval_ko_en": 0.9, "retrieval_en_ko": 0.1, "gap": 0},   # mean 0.5
              {"layer": 1, "retrieval_ko_en": 0.6, "retrieval_en_ko": 0.6, "gap": 0}]   # mean 0.6
    assert ea.best_layer(layers) == 1
