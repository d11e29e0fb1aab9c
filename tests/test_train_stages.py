"""Stages 2 (train_lm_head.py) and 3 (train_full.py): what must not move, resume, instruction masking,
learning on real Korean text, 1 vs 2 processes, bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaTokenizer

import train_full
import train_lm_head
from common.data import DataError, iter_mono_texts, load_text_blocks, tokenize_instruction
from common.demo import tiny_llama, train_demo_tokenizer

pytestmark = pytest.mark.usefixtures("reset_accelerate")
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_model")
    texts = [t for lang in ("ko", "en") for t in iter_mono_texts(str(DEMO / f"mono_{lang}_train.txt"))]
    tokenizer = train_demo_tokenizer(texts)
    tiny_llama(len(tokenizer), hidden_size=64, num_layers=2, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def demo_args(model, out, *extra):
    return ["--model_name_or_path", str(model), "--train_file", str(DEMO / "mono_ko_train.txt"),
            "--validation_file", str(DEMO / "mono_ko_validation.txt"),
            "--en_validation_file", str(DEMO / "mono_en_validation.txt"),
            "--output_dir", str(out), "--block_size", "32", "--per_device_train_batch_size", "4",
            "--learning_rate", "1e-3",
            "--report_to", "none", "--logging_steps", "1", "--max_eval_blocks", "16", *extra]


def read_log(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def by_step(log: list[dict]) -> dict[int, dict]:
    """Training and evaluation records of the same step merged."""
    merged: dict[int, dict] = {}
    for record in log:
        merged.setdefault(record["step"], {}).update(record)
    return merged


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def test_lm_head_only_leaves_everything_else_bitwise_unchanged(tiny_model, tmp_path):
    train_lm_head.main(demo_args(tiny_model, tmp_path, "--max_steps", "5", "--save_steps", "5",
                                 "--weight_decay", "0.1"))
    before, after = weights(tiny_model), weights(tmp_path / "checkpoint-5")
    assert set(before) == set(after)
    for name in before:
        if name != "lm_head.weight":
            assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])
    optimizer = torch.load(tmp_path / "checkpoint-5" / "accelerate_state" / "optimizer.bin", weights_only=False)
    assert [len(g["params"]) for g in optimizer["param_groups"]] == [1]  # the head alone
    assert len(optimizer["state"]) == 1 and optimizer["state"][0]["exp_avg"].shape == before["lm_head.weight"].shape


def test_lm_head_in_two_processes_matches_one_and_freezes_the_body(tiny_model, tmp_path):
    common = ["--max_steps", "3", "--save_steps", "3", "--eval_steps", "100", "--warmup_ratio", "0"]
    train_lm_head.main(demo_args(tiny_model, tmp_path / "one", *common))
    args = demo_args(tiny_model, tmp_path / "two", *common)
    args[args.index("--per_device_train_batch_size") + 1] = "2"  # same global batch of 4 over 2 processes
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "train_lm_head.py"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "over 2 process(es)" in proc.stderr
    one, two = weights(tmp_path / "one" / "checkpoint-3"), weights(tmp_path / "two" / "checkpoint-3")
    start = weights(tiny_model)
    for name in start:
        if name != "lm_head.weight":
            assert torch.equal(two[name], start[name]), name
    torch.testing.assert_close(two["lm_head.weight"], one["lm_head.weight"], rtol=1e-5, atol=1e-6)
    loss = lambda out: [r["loss"] for r in read_log(out) if "loss" in r]  # noqa: E731
    assert loss(tmp_path / "two") == pytest.approx(loss(tmp_path / "one"), rel=1e-5)


def test_tied_head_is_refused(tmp_path):
    tokenizer = train_demo_tokenizer(["가 나 다", "a b c"])
    tiny_llama(len(tokenizer), hidden_size=32, num_layers=1, tie_word_embeddings=True).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="tied to the input embeddings"):
        train_lm_head.main(demo_args(tmp_path / "m", tmp_path / "o", "--max_steps", "1"))


@pytest.mark.parametrize("script", [train_lm_head, train_full])
def test_resume_reproduces_the_uninterrupted_run(tiny_model, tmp_path, script, reset_accelerate):
    sft = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"질문 {i}: 가 나", "response": f"답 {i} 다 라"} for i in range(10)]
    sft.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    extra = ["--en_train_file", str(DEMO / "mono_en_train.txt"), "--ko_ratio", "0.75", "--instruction_file", str(sft),
             "--per_device_instruction_batch_size", "3", "--instruction_weight", "0.5"] if script is train_full else []
    common = ["--max_steps", "8", "--save_steps", "4", "--eval_steps", "4", "--warmup_ratio", "0.25",
              "--save_state_limit", "0", *extra]
    script.main(demo_args(tiny_model, tmp_path / "full", *common))
    reset_accelerate()
    script.main(demo_args(tiny_model, tmp_path / "resumed", *common,
                          "--resume_from_checkpoint", str(tmp_path / "full" / "checkpoint-4")))
    full, resumed = by_step(read_log(tmp_path / "full")), by_step(read_log(tmp_path / "resumed"))
    assert sorted(resumed) == [5, 6, 7, 8]
    for step, record in resumed.items():
        assert "loss" in record
        for key in ("loss", "sft_loss", "text_loss", "eval/ko_loss", "eval/en_loss"):
            if key in record:
                assert record[key] == pytest.approx(full[step][key], rel=1e-6, abs=1e-7), (step, key)
    a, b = weights(tmp_path / "full" / "checkpoint-8"), weights(tmp_path / "resumed" / "checkpoint-8")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)
    if script is train_full:
        assert all("sft_loss" in full[s] for s in range(1, 9))
        for s in range(1, 9):  # --instruction_weight 0.5 weighs the instruction loss in the sum
            assert full[s]["loss"] == pytest.approx(full[s]["text_loss"] + 0.5 * full[s]["sft_loss"], rel=1e-6)


def test_instruction_prompt_tokens_carry_no_loss(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = [("선생님은 오늘", "책을 읽어요."), ("The teacher", "reads a book today.")]
    rows = [tokenize_instruction(tokenizer, prompt, response, 64) for prompt, response in texts]
    for row, (prompt, response) in zip(rows, texts):
        prompt_ids = tokenizer(prompt)["input_ids"]  # with BOS; the response without, then EOS
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert row["input_ids"] == prompt_ids + response_ids
        assert row["labels"] == [-100] * len(prompt_ids) + response_ids
    tokenizer.padding_side = "left"  # as the Llama-2 tokenizer's: the trainer's collator pads on the right anyway
    batch = train_full.instruction_collator(tokenizer)(rows)
    lengths = batch["attention_mask"].sum(dim=1)
    r, short = int(lengths.argmin()), int(lengths.min())  # the shorter row: its padding is at the end
    assert short < batch["attention_mask"].shape[1]
    assert batch["attention_mask"][r, :short].all() and not batch["attention_mask"][r, short:].any()
    assert (batch["labels"][r, short:] == -100).all()
    lm = tiny_llama(len(tokenizer), hidden_size=64, num_layers=2, seed=1)
    model = train_full.FullModel(lm)
    _, sft_loss = model(input_ids=batch["input_ids"][:, :4], sft_input_ids=batch["input_ids"],
                        sft_attention_mask=batch["attention_mask"], sft_labels=batch["labels"])
    # reference: -log p(token) averaged over response tokens only, from the raw logits
    logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    terms = []
    for b, row in enumerate(rows):
        n_prompt = row["labels"].count(-100)
        for t in range(max(n_prompt, 1), len(row["input_ids"])):
            terms.append(-logp[b, t - 1, row["input_ids"][t]])
    assert sft_loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_loss_falls_on_real_korean_text(shared_data, tmp_path, reset_accelerate):
    """Tiny random Llama with the Llama-2 tokenizer: stage 3 then stage 2 on Korean Wikipedia."""
    wiki = sorted((shared_data / "mono_ko" / "kowiki").iterdir())
    def plain(path, n):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip() and not line.startswith(("<doc", "</doc"))]
        return "\n".join(lines[:n]) + "\n"
    (tmp_path / "ko_train.txt").write_text(plain(wiki[0], 1500), encoding="utf-8")
    (tmp_path / "ko_val.txt").write_text(plain(wiki[-1], 100), encoding="utf-8")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(shared_data / "llama2_tokenizer" / "tokenizer.model", model_dir)
    tokenizer = LlamaTokenizer.from_pretrained(str(model_dir), add_bos_token=True)
    tiny_llama(len(tokenizer), hidden_size=64, num_layers=2, seed=0, bos_token_id=1, eos_token_id=2,
               pad_token_id=None).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    common = ["--train_file", str(tmp_path / "ko_train.txt"), "--validation_file", str(tmp_path / "ko_val.txt"),
              "--block_size", "128", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
              "--max_steps", "40",
              "--eval_steps", "40", "--save_steps", "40", "--report_to", "none", "--max_eval_blocks", "32"]
    train_full.main(["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "s3"), *common])
    s3 = [r for r in read_log(tmp_path / "s3") if "eval/ko_perplexity" in r]
    reset_accelerate()
    train_lm_head.main(["--model_name_or_path", str(tmp_path / "s3" / "checkpoint-40"),
                        "--output_dir", str(tmp_path / "s2"), *common])
    s2 = [r for r in read_log(tmp_path / "s2") if "eval/ko_perplexity" in r]
    print("stage 3 ko perplexity:", s3[0]["eval/ko_perplexity"], "->", s3[-1]["eval/ko_perplexity"])
    print("stage 2 ko perplexity:", s2[0]["eval/ko_perplexity"], "->", s2[-1]["eval/ko_perplexity"])
    assert s3[-1]["eval/ko_perplexity"] < 0.2 * s3[0]["eval/ko_perplexity"]
    assert s2[0]["eval/ko_perplexity"] == pytest.approx(s3[-1]["eval/ko_perplexity"], rel=1e-4)  # same weights
    assert s2[-1]["eval/ko_perplexity"] < s2[0]["eval/ko_perplexity"]


def test_packing_keeps_every_token_of_real_text(shared_data, tmp_path):
    wiki = sorted((shared_data / "mono_ko" / "kowiki").iterdir())[0]
    lines = [line for line in wiki.read_text(encoding="utf-8").splitlines() if line.strip()][:2500]
    (tmp_path / "ko.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = train_demo_tokenizer(lines, vocab_size=3000)
    blocks = load_text_blocks(str(tmp_path / "ko.txt"), tokenizer, 64)
    stream = [t for ids in tokenizer(lines)["input_ids"] for t in (*ids, tokenizer.eos_token_id)]
    packed = [t for block in blocks["input_ids"] for t in block]
    assert len(packed) == len(stream) // 64 * 64 and len(stream) - len(packed) < 64
    assert packed == stream[: len(packed)]  # across the tokenizer's 1,000-document batches too


@pytest.mark.parametrize("content, message", [
    ("", "no text"),
    ('{"text": "가 나"}\n이것은 JSON이 아니다\n', r"bad.jsonl:2: not valid JSON"),
    ('{"text": "가 나"}\n{"body": "다"}\n', r"bad.jsonl:2: expected a JSON object with a 'text' field"),
])
def test_bad_text_input_names_file_and_line(tiny_model, tmp_path, content, message, reset_accelerate):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content, encoding="utf-8")
    for script in (train_lm_head, train_full):
        reset_accelerate()
        args = demo_args(tiny_model, tmp_path / "o", "--max_steps", "1")
        args[args.index("--train_file") + 1] = str(bad)
        with pytest.raises(DataError, match=message):
            script.main(args)


def test_block_size_beyond_context_and_bad_instructions(tiny_model, tmp_path, reset_accelerate):
    with pytest.raises(ValueError, match="exceeds the model's context of 512"):
        train_full.main(demo_args(tiny_model, tmp_path / "o", "--block_size", "1024", "--max_steps", "1"))
    reset_accelerate()
    bad = tmp_path / "sft.jsonl"
    bad.write_text('{"prompt": "가", "response": "나"}\n{"prompt": "가"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"sft.jsonl:2: expected a JSON object with 'prompt' and 'response'"):
        train_full.main(demo_args(tiny_model, tmp_path / "o", "--instruction_file", str(bad), "--max_steps", "1"))


@pytest.mark.parametrize("script", [train_lm_head, train_full])
def test_a_malformed_profile_range_fails_before_anything_loads(script, tmp_path):
    # a folder with a config but no weights or tokenizer: loading anything would fail with another error
    tiny_llama(100, hidden_size=32, num_layers=2).config.save_pretrained(tmp_path / "config_only")
    with pytest.raises(ValueError, match=r"--profile_steps '20': expected FIRST-LAST"):
        script.main(["--model_name_or_path", str(tmp_path / "config_only"), "--train_file", str(tmp_path / "none"),
                     "--output_dir", str(tmp_path / "o"), "--profile_steps", "20"])
    assert not (tmp_path / "o").exists()


def test_demos_run(tmp_path, reset_accelerate):
    overrides = ["--max_steps", "20", "--eval_steps", "20", "--save_steps", "20", "--report_to", "none"]
    train_lm_head.main([train_lm_head.DEMO_CONFIG, "--output_dir", str(tmp_path / "s2"), *overrides])
    s2 = [r for r in read_log(tmp_path / "s2") if "eval/ko_perplexity" in r]
    assert s2[-1]["eval/ko_perplexity"] < s2[0]["eval/ko_perplexity"]
    reset_accelerate()
    train_full.main([train_full.DEMO_CONFIG, "--output_dir", str(tmp_path / "s3"), *overrides])
    s3 = [r for r in read_log(tmp_path / "s3") if "eval/en_perplexity" in r]
    for lang in ("ko", "en"):
        assert s3[-1][f"eval/{lang}_perplexity"] < s3[0][f"eval/{lang}_perplexity"], lang


def test_instruction_rows_without_a_response_token_are_dropped_and_never_give_nan(tiny_model, tmp_path, caplog,
                                                                                  reset_accelerate):
    """A prompt that fills the block leaves no response token; a batch of only such rows used to give
    loss 0/0 = NaN, which poisoned every weight."""
    long_prompt = " ".join(["선생님은 오늘 학교에서 책을 읽어요"] * 20)  # far beyond 32 tokens
    rows = [{"prompt": long_prompt, "response": "네"}] * 6 + [{"prompt": "가", "response": "나 다 라"}] * 2
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with caplog.at_level("WARNING", logger="train_full"):
        model = train_full.main(demo_args(tiny_model, tmp_path / "o", "--instruction_file", str(sft),
                                          "--per_device_instruction_batch_size", "2", "--max_steps", "4",
                                          "--save_steps", "4"))
    assert "6 of 8 instruction examples have no response token within --block_size 32" in caplog.text
    losses = [r["sft_loss"] for r in read_log(tmp_path / "o") if "sft_loss" in r]
    assert len(losses) == 4 and all(loss == loss for loss in losses)  # no NaN
    assert all(torch.isfinite(p).all() for p in model.parameters())
    reset_accelerate()
    sft.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:6]), encoding="utf-8")
    with pytest.raises(DataError, match="no instruction example has a response token within --block_size 32"):
        train_full.main(demo_args(tiny_model, tmp_path / "o2", "--instruction_file", str(sft), "--max_steps", "1"))
