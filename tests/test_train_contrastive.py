"""train_contrastive.py end to end, in process, on a tiny saved model and the shipped demo pairs."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import train_contrastive as tc
from common.args import build_parser
from common.data import DataError, ParallelCollator, iter_parallel_jsonl
from common.demo import tiny_llama, train_demo_tokenizer

pytestmark = pytest.mark.usefixtures("reset_accelerate")
ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "data" / "demo" / "train.jsonl")
VALID = str(ROOT / "data" / "demo" / "validation.jsonl")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama saved as a Hugging Face folder, with a tokenizer trained on the demo pairs."""
    path = tmp_path_factory.mktemp("tiny_model")
    texts = [row[side] for row in iter_parallel_jsonl(TRAIN) for side in ("ko", "en")]
    tokenizer = train_demo_tokenizer(texts)
    tiny_llama(len(tokenizer), hidden_size=64, num_layers=4, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run(tiny_model, out, *extra):
    argv = ["--model_name_or_path", str(tiny_model), "--train_file", TRAIN, "--validation_file", VALID,
            "--output_dir", str(out), "--per_device_train_batch_size", "16", "--learning_rate", "1e-3",
            "--max_eval_pairs", "64", "--report_to", "none", "--logging_steps", "1", *extra]
    return tc.main(argv)


def read_log(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def losses(out) -> dict[int, float]:
    return {r["step"]: r["cl_loss"] for r in read_log(out) if "cl_loss" in r}


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.mark.parametrize("variant", [
    ["--pool_layer", "2"],
    ["--pool_layer", "0"],
    ["--pool_layer", "4", "--pooling", "last"],
    ["--mix_layers", "1-3", "--mix_temperature", "0.5"],
    ["--english_encoder", "frozen"],
    ["--trainable", "embeddings"],
    ["--bf16", "--gradient_checkpointing"],
    ["--symmetric", "false", "--group_by_length", "false", "--lr_scheduler_type", "cosine"],
])
def test_smoke_variants_train_and_export_loadable_checkpoints(tiny_model, tmp_path, variant):
    run(tiny_model, tmp_path, "--max_steps", "4", "--save_steps", "2", "--eval_steps", "2", *variant)
    log = read_log(tmp_path)
    steps = losses(tmp_path)
    assert sorted(steps) == [1, 2, 3, 4] and all(v == v and v > 0 for v in steps.values())
    assert [r["step"] for r in log if "eval/gap" in r] == [0, 2, 4]
    for step in (2, 4):
        ckpt = tmp_path / f"checkpoint-{step}"
        assert json.loads((ckpt / "training_args.json").read_text())["max_steps"] == 4
        model = AutoModelForCausalLM.from_pretrained(ckpt)
        assert model.config.num_hidden_layers == 4
        assert (ckpt / "tokenizer.json").is_file()
    assert not list(tmp_path.glob("*.tmp"))
    if "--mix_layers" in variant:
        w = json.loads((tmp_path / "checkpoint-4" / "layer_weights.json").read_text())
        assert list(w) == ["1", "2", "3"] and sum(w.values()) == pytest.approx(1.0)
        assert any("layer_weight/1" in r for r in log)


def test_lm_loss_on_real_korean_text(tiny_model, tmp_path, shared_data):
    mono = tmp_path / "ko.txt"
    wiki = sorted((shared_data / "mono_ko" / "kowiki").iterdir())[0]
    lines = wiki.read_text(encoding="utf-8").splitlines()[:400]
    mono.write_text("\n".join(line for line in lines if line and not line.startswith("<")), encoding="utf-8")
    run(tiny_model, tmp_path / "out", "--max_steps", "3", "--save_steps", "3", "--eval_steps", "3",
        "--lm_weight", "0.5", "--lm_train_file", str(mono), "--block_size", "64", "--per_device_lm_batch_size", "2")
    log = [r for r in read_log(tmp_path / "out") if "lm_loss" in r]
    assert len(log) == 3 and all(r["lm_loss"] > 0 for r in log)


def test_embeddings_only_leaves_everything_else_bitwise_unchanged(tiny_model, tmp_path):
    run(tiny_model, tmp_path, "--max_steps", "5", "--save_steps", "5", "--trainable", "embeddings",
        "--weight_decay", "0.1")
    before, after = weights(tiny_model), weights(tmp_path / "checkpoint-5")
    emb = "model.embed_tokens.weight"
    for name in before:
        if name != emb:
            assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before[emb], after[emb])
    # rows of tokens that never occur in the data do not move (no weight decay on embeddings)
    seen = set()
    texts = [row[side] for row in iter_parallel_jsonl(TRAIN) for side in ("ko", "en")]
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model)
    for ids in tok(texts)["input_ids"]:
        seen.update(ids)
    unseen = [i for i in range(before[emb].shape[0]) if i not in seen]
    assert unseen
    assert torch.equal(before[emb][unseen], after[emb][unseen])


def test_frozen_english_copy_stays_unchanged(tiny_model, tmp_path):
    trained, frozen = run(tiny_model, tmp_path, "--max_steps", "5", "--save_steps", "5", "--english_encoder", "frozen")
    start = weights(tiny_model)
    frozen_state = frozen.state_dict()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    for name, tensor in start.items():
        assert torch.equal(frozen_state[name], tensor), name
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(trained.lm.state_dict()[name], start[name])


@pytest.mark.parametrize("variant", [["--pool_layer", "2"], ["--mix_layers", "1-3", "--english_encoder", "frozen"]])
def test_resume_reproduces_the_uninterrupted_run(tiny_model, tmp_path, variant, reset_accelerate):
    common = ["--max_steps", "8", "--save_steps", "4", "--eval_steps", "100", "--warmup_ratio", "0.25",
              "--save_state_limit", "0", *variant]
    run(tiny_model, tmp_path / "full", *common)
    reset_accelerate()
    run(tiny_model, tmp_path / "resumed", *common, "--resume_from_checkpoint", str(tmp_path / "full" / "checkpoint-4"))
    full, resumed = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(resumed) == [5, 6, 7, 8]
    for step in resumed:
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), step
    a, b = weights(tmp_path / "full" / "checkpoint-8"), weights(tmp_path / "resumed" / "checkpoint-8")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)


def test_resume_latest_save_limits_and_log(tiny_model, tmp_path, reset_accelerate):
    args = ["--max_steps", "8", "--save_steps", "2", "--save_total_limit", "3", "--save_state_limit", "2"]
    run(tiny_model, tmp_path, *args)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    # every checkpoint keeps its export; only the newest two keep the resume state
    assert all((tmp_path / f"checkpoint-{s}" / "model.safetensors").is_file() for s in (4, 6, 8))
    assert [s for s in (4, 6, 8) if (tmp_path / f"checkpoint-{s}" / "accelerate_state").is_dir()] == [6, 8]
    # the resume state does not repeat the weights the export holds
    state = tmp_path / "checkpoint-8" / "accelerate_state"
    export = (tmp_path / "checkpoint-8" / "model.safetensors").stat().st_size
    assert sum(f.stat().st_size for f in state.iterdir()) < 2.2 * export  # the optimizer's two moments, no weights
    # a run stopped after step 6 (its last checkpoint lost) resumes from 'latest' = 6; the log keeps each step once
    import shutil
    shutil.rmtree(tmp_path / "checkpoint-8")
    reset_accelerate()
    run(tiny_model, tmp_path, *args, "--resume_from_checkpoint", "latest")
    assert (tmp_path / "checkpoint-8").is_dir()
    assert [r["step"] for r in read_log(tmp_path) if "cl_loss" in r] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_repeated_sentences_are_found_on_each_side(tiny_model, tmp_path, reset_accelerate):
    """One batch holding a Korean sentence with two translations and an English sentence with two sources: the
    logged dup_masked counts the 4 cells of the global batch that InfoNCE leaves out (each repeat, both ways)."""
    demo = list(iter_parallel_jsonl(TRAIN))[:4]
    (a, x), (b, y), (c, z), (d, w) = [(r["ko"], r["en"]) for r in demo]
    rows = [(a, x), (a, y), (b, z), (c, z), (d, w)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"ko": k, "en": e}, ensure_ascii=False) + "\n" for k, e in rows))
    def step_one(out, *extra):
        reset_accelerate()
        run(tiny_model, tmp_path / out, "--train_file", str(pairs), "--per_device_train_batch_size", "5",
            "--max_steps", "1", "--save_steps", "0", "--eval_steps", "100", *extra)
        return [(r["dup_masked"], r["cl_loss"]) for r in read_log(tmp_path / out) if "cl_loss" in r]
    [(masked, loss)] = step_one("masked")
    assert masked == 4
    # the cells are left out of the loss, in one batch and in chunks alike; without masking they count
    [(_, chunked)] = step_one("chunked", "--cl_chunk_size", "2")
    assert chunked == pytest.approx(loss, rel=1e-5)
    [(_, unmasked)] = step_one("unmasked", "--no_mask_duplicates")
    assert unmasked > loss + 1e-3


def test_per_source_metrics_from_the_minimum_count_of_pairs_up():
    """A source with exactly --min_source_pairs validation pairs gets its own metrics; one with fewer does not."""
    model = tc.ContrastiveModel(tiny_llama(40, hidden_size=32, num_layers=2, seed=0), layers=[1], bos_token_id=1)
    rows = [{"ko_ids": [1, 4 + i, 10 + i], "en_ids": [1, 20 + i], "ko_key": i, "en_key": 100 + i} for i in range(5)]
    loader = [ParallelCollator(train_demo_tokenizer(["a b c"]))(rows)]
    metrics = tc.evaluate(model, loader, "cpu", sources=["a"] * 3 + ["b"] * 2, min_source_pairs=2)
    assert "a/gap" in metrics and "b/gap" in metrics
    metrics = tc.evaluate(model, loader, "cpu", sources=["a"] * 3 + ["b"] * 2, min_source_pairs=3)
    assert "a/gap" in metrics and "b/gap" not in metrics
    assert "a/language_probe" in metrics and "b/language_probe" not in metrics


def test_eval_cka_and_probe_equal_the_functions_on_each_pair_encoded_alone():
    """eval/cka_debiased and eval/language_probe, overall and per source, are the functions of common.metrics
    applied to the pooled vectors of the validation pairs, each sentence here encoded alone (no padding)."""
    from common.metrics import cka_debiased, language_probe

    model = tc.ContrastiveModel(tiny_llama(60, hidden_size=32, num_layers=2, seed=0), layers=[2], bos_token_id=1)
    g = torch.Generator().manual_seed(0)
    rows = [{"ko_ids": [1, *torch.randint(4, 60, (2 + i % 4,), generator=g).tolist()],
             "en_ids": [1, *torch.randint(4, 60, (3 + i % 3,), generator=g).tolist()], "ko_key": i, "en_key": i}
            for i in range(10)]
    tokenizer = train_demo_tokenizer(["a b c"])
    loader = [ParallelCollator(tokenizer)(rows[:6]), ParallelCollator(tokenizer)(rows[6:])]
    sources = ["a"] * 6 + ["b"] * 4
    metrics = tc.evaluate(model.eval(), loader, "cpu", sources=sources, min_source_pairs=4)

    def alone(ids):
        ids = torch.tensor([ids])
        with torch.no_grad():
            return model.encode(ids, torch.ones_like(ids))[0]

    ko = torch.stack([alone(r["ko_ids"]) for r in rows])
    en = torch.stack([alone(r["en_ids"]) for r in rows])
    for prefix, idx in (("", list(range(10))), ("a/", list(range(6))), ("b/", list(range(6, 10)))):
        assert metrics[f"{prefix}cka_debiased"] == pytest.approx(cka_debiased(ko[idx], en[idx]), abs=1e-5)
        assert metrics[f"{prefix}language_probe"] == language_probe(ko[idx], en[idx])


def test_bad_parallel_line_names_file_and_line(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ko": "안녕", "en": "hi"}\n{"ko": "네"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'en'"):
        tc.main(["--model_name_or_path", str(tiny_model), "--train_file", str(bad), "--output_dir", str(tmp_path / "o"),
                 "--report_to", "none"])


@pytest.mark.parametrize("flags, message", [
    (["--pool_layer", "5"], r"outside 0..4"),
    (["--mix_layers", "3-1"], r"'A-B' with 0 <= A <= B"),
    (["--mix_layers", "2-9"], r"outside 0..4"),
    (["--pool_layer", "1", "--mix_layers", "1-2"], "not both"),
    (["--lm_weight", "0.5"], "--lm_train_file"),
    (["--english_encoder", "copy"], "argument --english_encoder: invalid choice: 'copy'"),
    (["--joint_forward", "--english_encoder", "frozen"], "not with --english_encoder frozen"),
    (["--pad_to_multiple_of", "-8"], "--pad_to_multiple_of must be >= 0"),
    (["--pack_length", "-1"], "--pack_length must be >= 0"),
    (["--profile_steps", "20"], "--profile_steps '20': expected FIRST-LAST"),
])
def test_bad_arguments_fail_before_the_model_is_loaded(tmp_path, flags, message):
    # a folder with a config but no weights: loading the model would fail with another error
    tiny_llama(100, hidden_size=32, num_layers=4).config.save_pretrained(tmp_path / "config_only")
    with pytest.raises(ValueError, match=message):
        tc.main(["--model_name_or_path", str(tmp_path / "config_only"), "--train_file", TRAIN,
                 "--output_dir", str(tmp_path / "o"), *flags])


def test_every_argument_has_help_and_an_argument_file_works(tiny_model, tmp_path):
    for action in build_parser(tc.Arguments)._actions:
        if action.dest != "help":
            assert action.help, action.dest
    args_file = tmp_path / "args.yaml"
    args_file.write_text(f"model_name_or_path: {tiny_model}\ntrain_file: {TRAIN}\noutput_dir: {tmp_path / 'o'}\n"
                         "max_steps: 2\nsave_steps: 2\nreport_to: none\nper_device_train_batch_size: 8\n")
    tc.main([str(args_file)])
    assert (tmp_path / "o" / "checkpoint-2").is_dir()


def test_embedded_demo_learns(tmp_path):
    """The README's first job, through the demo config plus overrides: alignment on held-out demo pairs must rise."""
    tc.main([tc.DEMO_CONFIG, "--output_dir", str(tmp_path), "--max_steps", "150", "--eval_steps", "150",
             "--save_steps", "150", "--report_to", "none"])
    evals = [r for r in read_log(tmp_path) if "eval/gap" in r]
    first, last = evals[0], evals[-1]
    assert last["eval/gap"] > first["eval/gap"] + 0.3
    assert last["eval/retrieval_ko_en"] > 0.5 and last["eval/retrieval_en_ko"] > 0.5  # chance: 1/256
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-150") is not None


def test_changed_data_file_is_read_again_not_served_from_cache(tmp_path):
    tokenizer = train_demo_tokenizer(["a b c", "가 나 다"])
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"ko": "가", "en": "a"}\n{"ko": "나", "en": "b"}\n', encoding="utf-8")
    first = tc.load_pairs(str(path), tokenizer, 16)
    path.write_text('{"ko": "다", "en": "c"}\n{"ko": "나", "en": "b"}\n{"ko": "가", "en": "a"}\n', encoding="utf-8")
    second = tc.load_pairs(str(path), tokenizer, 16)
    assert len(first) == 2 and len(second) == 3
    assert second[0]["ko_ids"] == tokenizer("다")["input_ids"]


def test_gradient_checkpointing_flag_recomputes_layers(tiny_model, tmp_path):
    trained, _ = run(tiny_model, tmp_path, "--max_steps", "1", "--save_steps", "1", "--gradient_checkpointing",
                     "--pool_layer", "3")
    mlp = trained.lm.model.layers[0].mlp
    calls, forward = [], mlp.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    mlp.forward = counted
    trained.train()
    ids = torch.tensor([[1, 20, 21, 22]])
    trained.encode(ids, torch.ones_like(ids)).sum().backward()
    assert len(calls) == 2  # forward, then the recompute in backward


def test_mixture_metrics_equal_a_recomputation_from_the_export(tiny_model, tmp_path):
    """The logged eval of a mixture run, recomputed by plain code from what the run leaves behind: the
    exported model, layer_weights.json and the validation sample (seeded, over the whole file)."""
    from transformers import AutoTokenizer

    from common.data import sample_indices, text_key
    from common.metrics import alignment_metrics, cka_debiased, language_probe

    run(tiny_model, tmp_path, "--max_steps", "3", "--save_steps", "3", "--eval_steps", "3", "--mix_layers", "1-3",
        "--mix_learning_rate", "0.5")
    ckpt = tmp_path / "checkpoint-3"
    weights = {int(k): v for k, v in json.loads((ckpt / "layer_weights.json").read_text()).items()}
    assert max(weights.values()) - min(weights.values()) > 0.01  # the weights did move
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    rows = list(iter_parallel_jsonl(VALID))
    rows = [rows[i] for i in sample_indices([r["source"] for r in rows], 64, 42)]
    captured = {}
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_hook(
            lambda m, a, out, i=i: captured.__setitem__(i + 1, out[0] if isinstance(out, tuple) else out))

    def vector(text):
        ids = tok(text, truncation=True, max_length=128)["input_ids"]
        with torch.no_grad():
            model(torch.tensor([ids]))
        v = [captured[layer][0, 1:].mean(0) for layer in sorted(weights)]  # BOS excluded, no padding
        return sum(weights[layer] * x / x.norm() for layer, x in zip(sorted(weights), v)), text_key(ids)

    ko, ko_keys = zip(*(vector(r["ko"]) for r in rows))
    en, en_keys = zip(*(vector(r["en"]) for r in rows))
    expected = alignment_metrics(torch.stack(ko), torch.stack(en), list(ko_keys), list(en_keys))
    expected.update(cka_debiased=cka_debiased(torch.stack(ko), torch.stack(en)),
                    language_probe=language_probe(torch.stack(ko), torch.stack(en)))
    logged = [r for r in read_log(tmp_path) if r["step"] == 3 and "eval/gap" in r][0]
    for name, value in expected.items():
        assert logged[f"eval/{name}"] == pytest.approx(value, abs=2e-5), name
    assert sum(logged[f"eval/layer_share/{layer}"] for layer in weights) == pytest.approx(1.0)


def test_tokenizing_pairs_in_two_processes_gives_the_same_rows(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    one, two = tc.load_pairs(VALID, tokenizer, 32), tc.load_pairs(VALID, tokenizer, 32, num_proc=2)
    assert len(one) == len(two) == 256
    assert one.to_dict() == two.to_dict()
