"""Stage 1's instruments for the research's open questions: the no-CL control, list-form layer mixtures,
the mixture's entropy penalty and temperature schedule, training only the new Korean embedding rows."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_contrastive as tc
import train_full
from common.data import iter_parallel_jsonl
from common.demo import tiny_llama, train_demo_tokenizer

pytestmark = pytest.mark.usefixtures("reset_accelerate")
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
TRAIN, VALID = str(DEMO / "train.jsonl"), str(DEMO / "validation.jsonl")
KO_TEXT, EN_TEXT = str(DEMO / "mono_ko_train.txt"), str(DEMO / "mono_en_train.txt")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_model")
    tokenizer = train_demo_tokenizer([row[s] for row in iter_parallel_jsonl(TRAIN) for s in ("ko", "en")])
    tiny_llama(len(tokenizer), hidden_size=32, num_layers=4, seed=2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run(tiny_model, out, *extra):
    return tc.main(["--model_name_or_path", str(tiny_model), "--train_file", TRAIN, "--validation_file", VALID,
                    "--output_dir", str(out), "--per_device_train_batch_size", "8", "--max_eval_pairs", "32",
                    "--report_to", "none", "--logging_steps", "1", "--learning_rate", "1e-3", *extra])


def log_of(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def per_step(out, key) -> dict[int, float]:
    return {r["step"]: r[key] for r in log_of(out) if key in r}


def test_parse_layers():
    assert tc.parse_layers("1-3") == tc.parse_layers("1,2,3") == tc.parse_layers("3,1-2") == [1, 2, 3]
    assert tc.parse_layers("1,5,9-12,17") == [1, 5, 9, 10, 11, 12, 17]
    for bad in ("3-1", "a", "1,,2", "1-"):
        with pytest.raises(ValueError, match="--mix_layers must be"):
            tc.parse_layers(bad)


def test_list_form_mixture_equals_the_range_form(tiny_model, tmp_path, reset_accelerate):
    common = ["--max_steps", "3", "--save_steps", "3", "--eval_steps", "3"]
    run(tiny_model, tmp_path / "range", *common, "--mix_layers", "1-3")
    reset_accelerate()
    run(tiny_model, tmp_path / "list", *common, "--mix_layers", "1,2-3")
    assert per_step(tmp_path / "list", "cl_loss") == per_step(tmp_path / "range", "cl_loss")
    assert per_step(tmp_path / "list", "layer_weight/2") == per_step(tmp_path / "range", "layer_weight/2")


def test_no_cl_control_is_the_lm_loss_of_stage_3(tiny_model, tmp_path, reset_accelerate):
    """--cl_weight 0: no contrastive term at all, the LM loss alone; on the same blocks (stage 1's LM
    stream is seeded by seed + 1, stage 3's Korean stream by seed) and the same optimizer it is stage 3."""
    lm = ["--block_size", "32", "--max_steps", "4", "--save_steps", "4", "--warmup_ratio", "0", "--eval_steps", "2"]
    run(tiny_model, tmp_path / "control", *lm, "--cl_weight", "0", "--lm_weight", "1", "--lm_train_file", KO_TEXT,
        "--per_device_lm_batch_size", "2", "--seed", "42")
    reset_accelerate()
    train_full.main(["--model_name_or_path", str(tiny_model), "--train_file", KO_TEXT, "--output_dir",
                     str(tmp_path / "stage3"), "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
                     "--report_to", "none", "--logging_steps", "1", "--seed", "43", *lm])
    control, stage3 = per_step(tmp_path / "control", "lm_loss"), per_step(tmp_path / "stage3", "loss")
    assert sorted(control) == [1, 2, 3, 4]
    for step in control:
        assert control[step] == pytest.approx(stage3[step], rel=1e-5), step
    assert not per_step(tmp_path / "control", "cl_loss")  # no contrastive forward or backward
    assert sorted(per_step(tmp_path / "control", "eval/gap")) == [0, 2, 4]  # alignment still measured


def test_lm_ko_ratio_mixes_two_lm_files(tiny_model, tmp_path):
    trained, _ = run(tiny_model, tmp_path, "--max_steps", "2", "--save_steps", "2", "--lm_weight", "0.5",
                     "--lm_train_file", KO_TEXT, "--lm_en_train_file", EN_TEXT, "--lm_ko_ratio", "0.75",
                     "--per_device_lm_batch_size", "4", "--block_size", "32")
    assert len(per_step(tmp_path, "lm_loss")) == 2
    args = json.loads((tmp_path / "checkpoint-2" / "training_args.json").read_text())
    assert args["lm_ko_ratio"] == 0.75 and args["lm_en_train_file"] == EN_TEXT


def test_mixture_entropy_penalty_and_temperature_schedule(tiny_model, tmp_path, reset_accelerate):
    common = ["--max_steps", "6", "--save_steps", "6", "--eval_steps", "100", "--mix_layers", "0-4",
              "--mix_learning_rate", "0.05"]
    run(tiny_model, tmp_path / "plain", *common)
    reset_accelerate()
    run(tiny_model, tmp_path / "penalty", *common, "--mix_entropy_weight", "5", "--mix_temperature_final", "0.5")
    for out in ("plain", "penalty"):
        for record in (r for r in log_of(tmp_path / out) if "mix_entropy" in r):
            # the logged entropy is H of the weights used in that step's forward (before its update)
            assert 0 < record["mix_entropy"] <= math.log(5) + 1e-6
    temps = per_step(tmp_path / "penalty", "mix_temperature")
    # logged at step s: the temperature step s used, 1.0 at the first step to 0.5 at the last
    assert temps[1] == pytest.approx(1.0) and temps[4] == pytest.approx(0.7) and temps[6] == pytest.approx(0.5)

    def spread(out):
        w = json.loads((tmp_path / out / "checkpoint-6" / "layer_weights.json").read_text()).values()
        return max(w) - min(w)

    assert spread("penalty") > 2 * spread("plain")


def test_new_token_embeddings_train_only_the_added_rows(tiny_model, tmp_path, reset_accelerate):
    before = load_file(str(tiny_model / "model.safetensors"))
    base = 300  # pretend the rows from 300 on were added by a vocabulary expansion
    run(tiny_model, tmp_path / "a", "--max_steps", "3", "--save_steps", "3", "--trainable", "new_token_embeddings",
        "--base_vocab_size", str(base))
    after = load_file(str(tmp_path / "a" / "checkpoint-3" / "model.safetensors"))
    emb = "model.embed_tokens.weight"
    assert torch.equal(after[emb][:base], before[emb][:base])
    assert not torch.equal(after[emb][base:], before[emb][base:])
    for name in before:
        if name != emb:
            assert torch.equal(after[name], before[name]), name
    # the base size is read from expand_vocab.json when the model folder has one
    (tiny_model / "expand_vocab.json").write_text(json.dumps({"base_vocab_size": base}))
    try:
        reset_accelerate()
        run(tiny_model, tmp_path / "b", "--max_steps", "1", "--save_steps", "1", "--trainable", "new_token_embeddings")
        b = load_file(str(tmp_path / "b" / "checkpoint-1" / "model.safetensors"))
        assert torch.equal(b[emb][:base], before[emb][:base])
    finally:
        (tiny_model / "expand_vocab.json").unlink()
    reset_accelerate()
    with pytest.raises(ValueError, match="base vocabulary size None"):
        run(tiny_model, tmp_path / "c", "--max_steps", "1", "--trainable", "new_token_embeddings")
