"""Stage 1's instruments for the research's open questions: the no-CL control, list-form layer mixtures,
the mixture's entropy penalty and temperature schedule, training only the new Korean embedding rows."""

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

import train_contrastive as tc
import train_full
from common.data import iter_parallel_jsonl
from common.demo import tiny_llama

pytestmark = pytest.mark.usefixtures("reset_accelerate")
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
TRAIN, VALID = str(DEMO / "train.jsonl"), str(DEMO / "validation.jsonl")
KO_TEXT, EN_TEXT = str(DEMO / "mono_ko_train.txt"), str(DEMO / "mono_en_train.txt")


@pytest.fixture
def tiny_model(tiny_pair_model) -> Path:
    return tiny_pair_model


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


@pytest.fixture
def samplers(monkeypatch) -> list:
    """The batch samplers stage 1 builds, in order: the pairs', then each LM stream's."""
    built = []
    sampler = tc.LengthGroupedBatchSampler

    def spy(*args, **kwargs):
        built.append(sampler(*args, **kwargs))
        return built[-1]
    monkeypatch.setattr(tc, "LengthGroupedBatchSampler", spy)
    return built


def test_lm_ko_ratio_mixes_two_lm_files(tiny_model, tmp_path, samplers):
    trained, _ = run(tiny_model, tmp_path, "--max_steps", "2", "--save_steps", "2", "--lm_weight", "0.5",
                     "--lm_train_file", KO_TEXT, "--lm_en_train_file", EN_TEXT, "--lm_ko_ratio", "0.75",
                     "--per_device_lm_batch_size", "4", "--block_size", "32")
    assert len(per_step(tmp_path, "lm_loss")) == 2
    args = json.loads((tmp_path / "checkpoint-2" / "training_args.json").read_text())
    assert args["lm_ko_ratio"] == 0.75 and args["lm_en_train_file"] == EN_TEXT
    # global batches: the pairs', then the Korean and the English LM stream's (0.75 of the 4 blocks are Korean)
    assert [s.batch_size for s in samplers] == [8, 3, 1]


def test_an_epoch_is_as_long_as_the_longer_stream(tiny_model, tmp_path, samplers):
    """--num_train_epochs counts the steps of the longer of the two streams cycled 1:1: here the LM text's."""
    pairs, text = tmp_path / "pairs.jsonl", tmp_path / "ko.txt"
    pairs.write_text("".join(Path(TRAIN).read_text(encoding="utf-8").splitlines(keepends=True)[:16]), encoding="utf-8")
    text.write_text("".join(Path(KO_TEXT).read_text(encoding="utf-8").splitlines(keepends=True)[:12]), encoding="utf-8")
    run(tiny_model, tmp_path / "out", "--train_file", str(pairs), "--num_train_epochs", "1", "--save_steps", "0",
        "--eval_steps", "100", "--lm_weight", "0.5", "--lm_train_file", str(text), "--block_size", "32",
        "--per_device_lm_batch_size", "2")
    lengths = [len(s) for s in samplers]  # batches per epoch: the pairs', then the LM text's
    assert lengths[0] == 2 and lengths[1] > 2  # 16 pairs in batches of 8; the text makes more LM batches
    assert sorted(per_step(tmp_path / "out", "cl_loss")) == list(range(1, lengths[1] + 1))


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
    # pretend the rows above the demo pairs' commonest token were added by a vocabulary expansion: the last base
    # row is then in nearly every batch, and a mask one row short would let it train
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = [row[side] for row in iter_parallel_jsonl(TRAIN) for side in ("ko", "en")]
    counts = Counter(i for ids in tokenizer(texts)["input_ids"] for i in ids if i not in tokenizer.all_special_ids)
    base = counts.most_common(1)[0][0] + 1
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


def test_pcgrad_equals_a_hand_written_projection_and_the_sum_without_conflict():
    g1 = [torch.tensor([1.0, 0.0]), torch.tensor([[2.0]])]
    g2 = [torch.tensor([-1.0, 1.0]), torch.tensor([[-1.0]])]  # g1 . g2 = -1 - 2 = -3: they conflict
    v1, v2 = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([-1.0, 1.0, -1.0])
    p1 = v1 - (v1 @ v2) / (v2 @ v2) * v2
    p2 = v2 - (v2 @ v1) / (v1 @ v1) * v1
    out = torch.cat([g.reshape(-1) for g in tc.pcgrad(g1, g2)])
    torch.testing.assert_close(out, p1 + p2)
    assert (p1 @ v2).abs() < 1e-6 and (p2 @ v1).abs() < 1e-6  # each projected onto the other's normal plane
    agree = [torch.tensor([1.0, 1.0]), torch.tensor([[0.5]])]
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in tc.pcgrad(g1, agree)]),
                               torch.tensor([2.0, 1.0, 2.5]))


def test_combined_gradients_and_cosines_equal_two_separate_backward_passes():
    torch.manual_seed(0)
    model = tiny_llama(50, hidden_size=16, num_layers=2)
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    ids = torch.randint(4, 50, (2, 6))

    def terms():
        out = model(input_ids=ids, labels=ids, output_hidden_states=True)
        return out.hidden_states[1].pow(2).mean(), out.loss  # a stand-in "contrastive" term and the LM loss

    separate = []
    for k in range(2):
        model.zero_grad()
        terms()[k].backward()
        separate.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])
    a, b = terms()
    stats = tc.combine_gradients(params, names, a, b, "sum", group_size=1)
    for p, g1, g2 in zip(params, *separate):
        torch.testing.assert_close(p.grad, g1 + g2)
    flat1, flat2 = (torch.cat([g.reshape(-1) for g in gs]) for gs in separate)
    assert stats["grad_cos/all"] == pytest.approx(torch.nn.functional.cosine_similarity(flat1, flat2, dim=0).item(),
                                                  rel=1e-5)
    idx = [i for i, n in enumerate(names) if ".layers.0." in n]
    l1, l2 = (torch.cat([gs[i].reshape(-1) for i in idx]) for gs in separate)
    assert stats["grad_cos/layers_1-1"] == pytest.approx(torch.nn.functional.cosine_similarity(l1, l2, dim=0).item(),
                                                         rel=1e-5)
    assert stats["grad_norm/cl"] == pytest.approx(flat1.norm().item(), rel=1e-5)
    assert stats["grad_norm/lm"] == pytest.approx(flat2.norm().item(), rel=1e-5)
    assert "grad_cos/embeddings" in stats
    assert "grad_cos/layers_2-2" not in stats  # the stand-in term never reaches layer 2: no cosine to report


def test_measuring_the_conflict_does_not_change_the_training(tiny_model, tmp_path, reset_accelerate):
    """A step that measures backwards the two losses apart and sums them: the run must be the same as one
    that never measures; and the schedules of the LM weight are what --lm_weight_schedule says."""
    common = ["--max_steps", "4", "--save_steps", "4", "--eval_steps", "100", "--lm_weight", "0.5",
              "--lm_train_file", KO_TEXT, "--block_size", "32", "--per_device_lm_batch_size", "2",
              "--lm_weight_schedule", "warmup", "--mix_layers", "3-4", "--mix_learning_rate", "0.05",
              "--mix_entropy_weight", "5", "--cl_weight", "0.5"]
    run(tiny_model, tmp_path / "plain", *common)
    reset_accelerate()
    run(tiny_model, tmp_path / "measured", *common, "--grad_conflict_steps", "2", "--grad_conflict_group_size", "2")
    for key in ("cl_loss", "lm_loss", "layer_weight/3"):
        plain, measured = per_step(tmp_path / "plain", key), per_step(tmp_path / "measured", key)
        assert measured == pytest.approx(plain, rel=1e-5), key
    cos = per_step(tmp_path / "measured", "grad_cos/all")
    assert sorted(cos) == [2, 4] and all(-1 <= c <= 1 for c in cos.values())
    assert {"grad_cos/layers_1-2", "grad_cos/layers_3-4", "grad_cos/embeddings", "grad_norm/cl"} <= {
        k for r in log_of(tmp_path / "measured") for k in r}
    weights = per_step(tmp_path / "plain", "lm_weight")
    assert [weights[s] for s in (1, 2, 3, 4)] == pytest.approx([0.0, 0.5 / 3, 0.5 * 2 / 3, 0.5])
    reset_accelerate()
    run(tiny_model, tmp_path / "pcgrad", *common, "--objective_balance", "pcgrad")
    assert len(per_step(tmp_path / "pcgrad", "cl_loss")) == 4


@pytest.mark.parametrize("variant", [
    ["--pool_layer", "3"],
    ["--english_encoder", "frozen", "--mix_layers", "1-3", "--mix_learning_rate", "0.05", "--mix_entropy_weight", "5"],
    ["--lm_weight", "0.5", "--lm_train_file", KO_TEXT, "--block_size", "32", "--per_device_lm_batch_size", "2",
     "--cl_weight", "0.5"],
    ["--pool_layer", "2", "--joint_forward"],
])
def test_gradient_caching_equals_the_whole_batch(tiny_model, tmp_path, reset_accelerate, variant):
    """--cl_chunk_size: 8 steps in chunks of 3 pairs (16 a step: uneven chunks) against the unchunked run."""
    common = ["--max_steps", "8", "--save_steps", "8", "--eval_steps", "100", "--per_device_train_batch_size", "16",
              *variant]
    run(tiny_model, tmp_path / "whole", *common)
    reset_accelerate()
    run(tiny_model, tmp_path / "chunked", *common, "--cl_chunk_size", "3")
    for key in ("cl_loss", "lm_loss"):
        whole, chunked = per_step(tmp_path / "whole", key), per_step(tmp_path / "chunked", key)
        assert chunked == pytest.approx(whole, rel=1e-4, abs=1e-6), key
    a = load_file(str(tmp_path / "whole" / "checkpoint-8" / "model.safetensors"))
    b = load_file(str(tmp_path / "chunked" / "checkpoint-8" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4)
    if "--mix_layers" in variant:
        w = [json.loads((tmp_path / d / "checkpoint-8" / "layer_weights.json").read_text())
             for d in ("whole", "chunked")]
        assert w[1] == pytest.approx(w[0], rel=1e-4)


def test_ddp_searches_for_unused_parameters_when_a_loss_is_off():
    assert not tc.ddp_kwargs(0.5, 1.0).find_unused_parameters
    assert tc.ddp_kwargs(0.0, 1.0).find_unused_parameters  # no LM loss: the head and upper layers get no gradient
    assert tc.ddp_kwargs(0.5, 0.0).find_unused_parameters  # the no-CL control: the mixture gets none


def test_model_flops_count_the_layers_each_side_passes_through():
    from common.flops import layer_params, lm_params, stage1_flops

    model = tiny_llama(50, hidden_size=16, num_layers=3)
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    assert layer_params(model, 2) == 2 * per_layer
    assert lm_params(model) == 3 * per_layer + 50 * 16  # every layer and the LM head, not the embedding lookup
    # shared: forward + backward on both sides; frozen English: its forward only; LM tokens through everything
    assert stage1_flops(100, 10, 20, False) == 6 * 100 * 30
    assert stage1_flops(100, 10, 20, True, lm_params_=1000, lm_tokens=7) == 6 * 100 * 10 + 2 * 100 * 20 + 6 * 1000 * 7


def test_the_trainer_logs_real_and_padded_token_throughput(tiny_model, tmp_path):
    run(tiny_model, tmp_path, "--max_steps", "2", "--save_steps", "2", "--eval_steps", "100")
    record = [r for r in log_of(tmp_path) if "tokens_per_s" in r][0]
    assert 0 < record["tokens_per_s"] <= record["padded_tokens_per_s"]
    assert "mfu" not in record  # measured against a GPU's peak only
