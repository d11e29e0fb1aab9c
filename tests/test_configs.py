"""configs/seed/: every config is valid for its script and says which experiment of the research it is; the
stage-1 configs run 2 steps with command-line overrides on a tiny 24-layer model (the target's depth); the
program script's commands parse with their scripts' arguments."""

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer

import eval_agreement
import report
import train_contrastive
import train_full
import train_lm_head
from common.args import parse_arguments
from common.data import iter_parallel_jsonl
from common.demo import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "configs" / "seed"
DEMO = ROOT / "data" / "demo"
SCRIPTS = {"stage1": train_contrastive, "stage2": train_lm_head, "stage3": train_full}
STAGE1 = sorted((SEED / "stage1").glob("*.yaml"))
# the research's experiments (../shared/RESEARCH.md) that must each have a config
REQUIRED = {"exp0_contrastive", "layer1", "layer17", "exp2_frozen_cl_lm", "exp3_frozen_mixture", "exp4_shared_mixture",
            "embeddings_only", "no_cl_control"}


def configs() -> list[tuple[str, Path]]:
    return [(stage, path) for stage in SCRIPTS for path in sorted((SEED / stage).glob("*.yaml"))]


@pytest.mark.parametrize("stage, path", configs(), ids=lambda x: x if isinstance(x, str) else x.stem)
def test_every_config_is_valid_for_its_script_and_says_what_it_is(stage, path):
    """Parsed by the script's own parser (an unknown key is an error) and, for stage 1, its checks on a
    24-layer model; each file opens with a comment naming the research's experiment and what it observed."""
    args = parse_arguments(SCRIPTS[stage].Arguments, [str(path)])
    if stage == "stage1":  # the data comes from the command line; any existing file passes the checks
        text = str(DEMO / "mono_ko_train.txt")
        args = parse_arguments(SCRIPTS[stage].Arguments, [str(path), "--lm_train_file", text])
        train_contrastive.check_args(args, num_layers=24)
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# Research"), f"{path.name}: the first line must say which experiment it is"
    assert "bserved" in path.read_text(encoding="utf-8"), f"{path.name}: say what the research observed"
    assert args.output_dir == f"runs/seed/{stage}/{path.stem}"


def test_stage1_configs_are_the_research_experiments():
    assert {p.stem for p in STAGE1} >= REQUIRED
    a = {p.stem: parse_arguments(train_contrastive.Arguments, [str(p)]) for p in STAGE1}
    assert a["layer1"].pool_layer == 1 and a["layer17"].pool_layer == 17
    for name in ("exp0_contrastive", "layer1", "layer17", "embeddings_only"):
        assert a[name].lm_weight == 0 and a[name].cl_weight > 0 and a[name].english_encoder == "shared", name
    assert a["exp2_frozen_cl_lm"].english_encoder == "frozen" and a["exp2_frozen_cl_lm"].lm_weight > 0
    assert a["exp2_frozen_cl_lm"].mix_layers is None
    for name, english in (("exp3_frozen_mixture", "frozen"), ("exp4_shared_mixture", "shared")):
        assert a[name].mix_layers and a[name].lm_weight > 0 and a[name].english_encoder == english, name
    assert a["embeddings_only"].trainable == "embeddings"
    assert a["no_cl_control"].cl_weight == 0 and a["no_cl_control"].lm_weight > 0
    # open question 4: exp 4 with PCGrad instead of the sum, the gradient conflict logged; nothing else changed
    assert a["exp4_pcgrad"].objective_balance == "pcgrad" and a["exp4_pcgrad"].grad_conflict_steps > 0
    differ = {k for k, v in vars(a["exp4_pcgrad"]).items() if v != getattr(a["exp4_shared_mixture"], k)}
    assert differ == {"objective_balance", "grad_conflict_steps", "cl_chunk_size", "output_dir"}
    # the control and the CL + LM runs train the same LM objective for the same number of steps
    for name in ("exp2_frozen_cl_lm", "exp3_frozen_mixture", "exp4_shared_mixture"):
        for key in ("max_steps", "block_size", "lm_ko_ratio", "per_device_lm_batch_size", "learning_rate"):
            assert getattr(a[name], key) == getattr(a["no_cl_control"], key), (name, key)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models' matrices are a few KB: on a busy machine, CPU threads waiting on each other made one
    2-step run take 20 s instead of 1; one thread is faster for them and changes nothing these tests check."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny24(tmp_path_factory) -> dict:
    """A 24-layer random Llama (32 wide) with the demo tokenizer, 64 training pairs, 32 validation pairs."""
    tmp = tmp_path_factory.mktemp("tiny24")
    tokenizer = AutoTokenizer.from_pretrained(DEMO / "model")
    tiny_llama(len(tokenizer), hidden_size=32, num_layers=24, seed=3).save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    rows = list(iter_parallel_jsonl(str(DEMO / "train.jsonl")))
    for name, part in (("train.jsonl", rows[:64]), ("validation.jsonl", rows[64:96])):
        (tmp / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    return {"model": str(tmp / "model"), "train": str(tmp / "train.jsonl"), "validation": str(tmp / "validation.jsonl")}


def small_overrides(out: Path) -> list[str]:
    """What makes a 1.3B config a 2-step CPU run; everything else comes from the config."""
    return ["--output_dir", str(out), "--max_steps", "2", "--save_steps", "2", "--eval_steps", "2", "--bf16", "false",
            "--report_to", "none", "--block_size", "32", "--logging_steps", "1"]


@pytest.mark.usefixtures("reset_accelerate")
@pytest.mark.parametrize("path", STAGE1, ids=lambda p: p.stem)
def test_stage1_config_runs_two_steps_with_overrides(path, tiny24, tmp_path):
    """`train_contrastive.py CONFIG --model_name_or_path ... --train_file ...`: the config's own settings (layer,
    mixture over 1-24, frozen copy, LM loss, trainable set, no-CL control) on the 24-layer model."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    train_contrastive.main([
        str(path), "--model_name_or_path", tiny24["model"], "--train_file", tiny24["train"],
        "--validation_file", tiny24["validation"], "--lm_train_file", str(DEMO / "mono_ko_train.txt"),
        "--lm_en_train_file", str(DEMO / "mono_en_train.txt"), "--per_device_train_batch_size", "4",
        "--per_device_lm_batch_size", "2", "--max_eval_pairs", "16", *small_overrides(tmp_path)])
    ckpt = tmp_path / "checkpoint-2"
    saved = json.loads((ckpt / "training_args.json").read_text())
    for key in ("pool_layer", "mix_layers", "english_encoder", "trainable", "cl_weight", "lm_weight", "pooling"):
        if key in config:
            assert saved[key] == config[key], key
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    loss = "cl_loss" if config.get("cl_weight", 1) > 0 else "lm_loss"
    assert [r["step"] for r in log if loss in r] == [1, 2]
    assert [r["step"] for r in log if "eval/gap" in r] == [0, 2]
    if config.get("lm_weight", 0) > 0:
        assert all(r["lm_loss"] > 0 for r in log if "lm_loss" in r)
    if config.get("mix_layers"):
        assert len(json.loads((ckpt / "layer_weights.json").read_text())) == 24


@pytest.mark.usefixtures("reset_accelerate")
def test_stage2_and_stage3_configs_run_two_steps_with_overrides(tiny24, tmp_path, reset_accelerate):
    text = {"ko": str(DEMO / "mono_ko_train.txt"), "en": str(DEMO / "mono_en_train.txt"),
            "ko_val": str(DEMO / "mono_ko_validation.txt"), "en_val": str(DEMO / "mono_en_validation.txt")}
    train_lm_head.main([str(SEED / "stage2" / "lm_head_ko.yaml"), "--model_name_or_path", tiny24["model"],
                        "--train_file", text["ko"], "--validation_file", text["ko_val"], "--en_validation_file",
                        text["en_val"], "--per_device_train_batch_size", "2", "--max_eval_blocks", "4",
                        *small_overrides(tmp_path / "s2")])
    reset_accelerate()
    train_full.main([str(SEED / "stage3" / "full_ko_en.yaml"), "--model_name_or_path",
                     str(tmp_path / "s2" / "checkpoint-2"), "--train_file", text["ko"], "--en_train_file", text["en"],
                     "--validation_file", text["ko_val"], "--per_device_train_batch_size", "2",
                     "--max_eval_blocks", "4", *small_overrides(tmp_path / "s3")])
    assert (tmp_path / "s3" / "checkpoint-2" / "model.safetensors").is_file()


def dry_run(**env) -> list[list[str]]:
    """The commands run_program.sh prints with DRY_RUN=1 (run from the repository root, as documented)."""
    proc = subprocess.run(["bash", str(SEED / "run_program.sh")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DRY_RUN": "1", "MODEL": "models/base-ko", **env})
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def script_argv(command: list[str]) -> tuple[str, list[str]]:
    i = next(i for i, word in enumerate(command) if word.endswith(".py"))
    return command[i], command[i + 1:]


def test_program_script_runs_the_stages_in_order_and_its_commands_parse():
    commands = dry_run(OUT="runs/seed_test")
    parsers = {"train_contrastive.py": train_contrastive.Arguments, "train_lm_head.py": train_lm_head.Arguments,
               "train_full.py": train_full.Arguments}
    order = []
    for command in commands:
        script, argv = script_argv(command)
        if script in parsers:
            args = parse_arguments(parsers[script], argv)
            assert args.model_name_or_path and args.train_file and args.output_dir.startswith("runs/seed_test/")
            order.append(args.output_dir.removeprefix("runs/seed_test/"))
            if script == "train_contrastive.py":
                assert command[:2] == ["accelerate", "launch"]
                assert argv[0].endswith(f"{Path(args.output_dir).name}.yaml")
                assert args.per_device_train_batch_size == 256 and args.seed == 42
                assert args.model_name_or_path == "models/base-ko"
        elif script == "eval_agreement.py":
            args = eval_agreement.parse_args(argv)
            assert args.max_pairs == 2000 and args.seed == 42  # the trainers' validation sample: same pairs
            order.append("eval " + Path(args.output_dir).name)
        else:
            assert script == "report.py"
            args = parse_arguments(report.Arguments, argv, positional="inputs")
            order.append("report")
    stage1 = [p.stem for p in STAGE1]
    expected_stage1 = ["exp0_contrastive", "layer1", "layer17", "exp2_frozen_cl_lm", "exp3_frozen_mixture",
                       "exp4_shared_mixture", "embeddings_only", "no_cl_control", "exp4_pcgrad"]
    assert sorted(expected_stage1) == sorted(stage1)
    expected = [x for name in expected_stage1 for x in (f"stage1/{name}", f"eval {name}")]
    expected += ["eval base", "stage2/lm_head_ko", "eval stage2_lm_head_ko", "stage3/full_ko_en",
                 "eval stage3_full_ko_en", "report"]
    assert order == expected
    stage2 = parse_arguments(train_lm_head.Arguments, script_argv(commands[order.index("stage2/lm_head_ko")])[1])
    assert stage2.model_name_or_path.startswith("runs/seed_test/stage1/exp4_shared_mixture/checkpoint-")


def test_program_script_divides_the_global_batch_over_the_gpus():
    commands = dry_run(NUM_GPUS="8", ACCELERATE_CONFIG="ds_configs/accelerate_1node_8gpu_ddp.yaml",
                       EXPERIMENTS="layer1")
    launch = next(c for c in commands if "train_contrastive.py" in c)
    assert launch[launch.index("--num_processes") + 1] == "8"
    assert parse_arguments(train_contrastive.Arguments, script_argv(launch)[1]).per_device_train_batch_size == 32
    proc = subprocess.run(["bash", str(SEED / "run_program.sh")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "DRY_RUN": "1", "MODEL": "m", "NUM_GPUS": "3"}, timeout=60)
    assert proc.returncode == 2 and "not divisible" in proc.stderr
