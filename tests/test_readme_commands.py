"""The README's first two blocks, run as written: the embedded demo, then stage 2 from its checkpoint and stage 3
from stage 2's (shortened by flags after the config file). They print no warning and no traceback, each stage
starts from the checkpoint the one before wrote, and a mistake under the launcher is one line with status 1."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_CONFIGS = {"train_contrastive.py": "data/demo/stage1.yaml", "train_lm_head.py": "data/demo/stage2.yaml",
                  "train_full.py": "data/demo/stage3.yaml"}


def readme_commands(block: int) -> list[list[str]]:
    """The commands of the README's ``block``-th bash block (0-based), continuation lines joined, comments cut."""
    text = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)[block]
    return [shlex.split(line, comments=True) for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def launched(commands: list[list[str]]) -> list[list[str]]:
    return [c for c in commands if c[:2] == ["accelerate", "launch"]]


def accelerate() -> str:
    return shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")


def run(command: list[str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([accelerate(), *command[1:], *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_first_commands_and_the_demo_chain(tmp_path):
    first, chain = launched(readme_commands(0)), launched(readme_commands(1))
    assert len(first) == 1 and first[0][-1] == "train_contrastive.py"  # no argument: the embedded demo
    assert [c[-1] if c[-1].endswith(".py") else next(a for a in c if a.endswith(".py")) for c in chain] == \
        ["train_lm_head.py", "train_full.py"]
    # each stage starts from the last checkpoint of the one before, as its demo config writes it
    previous = SCRIPT_CONFIGS["train_contrastive.py"]
    for command in chain:
        script = next(a for a in command if a.endswith(".py"))
        config = command[command.index(script) + 1]
        assert config == SCRIPT_CONFIGS[script]
        before = yaml.safe_load((ROOT / previous).read_text())
        assert option(command, "--model_name_or_path") == f"{before['output_dir']}/checkpoint-{before['max_steps']}"
        previous = config

    short = ["--max_steps", "3", "--eval_steps", "3", "--save_steps", "3", "--report_to", "none"]
    outputs = {}
    stage1 = tmp_path / "stage1"
    result = run(first[0], SCRIPT_CONFIGS["train_contrastive.py"], *short, "--max_eval_pairs", "32",
                 "--output_dir", str(stage1))
    outputs["stage1"] = result
    model = stage1 / "checkpoint-3"
    for name, command in zip(("stage2", "stage3"), chain):
        argv = list(command)
        argv[argv.index("--model_name_or_path") + 1] = str(model)
        outputs[name] = result = run(argv, *short, "--max_eval_blocks", "8", "--output_dir", str(tmp_path / name))
        model = tmp_path / name / "checkpoint-3"
    for name, result in outputs.items():
        printed = result.stdout + result.stderr
        assert result.returncode == 0, (name, printed[-3000:])
        assert not re.search(r"warn|traceback|error", printed, re.I), (name, printed[-3000:])
        assert (tmp_path / name / "checkpoint-3" / "config.json").is_file()

    # stage 2 trained the head of stage 1's checkpoint: everything else is that checkpoint's, bitwise
    one, two = (load_file(str(tmp_path / s / "checkpoint-3" / "model.safetensors")) for s in ("stage1", "stage2"))
    assert one.keys() == two.keys() and "lm_head.weight" in one
    assert all((one[k] == two[k]).all() for k in one if k != "lm_head.weight")
    assert not (one["lm_head.weight"] == two["lm_head.weight"]).all()
    # stage 3 started from stage 2's checkpoint: its step-0 perplexities are stage 2's last
    logs = {s: [json.loads(line) for line in (tmp_path / s / "log.jsonl").read_text().splitlines()]
            for s in ("stage2", "stage3")}
    last2 = [r for r in logs["stage2"] if "eval/ko_perplexity" in r][-1]
    first3 = next(r for r in logs["stage3"] if r["step"] == 0 and "eval/ko_perplexity" in r)
    for key in ("eval/ko_perplexity", "eval/en_perplexity"):
        assert first3[key] == pytest.approx(last2[key], rel=1e-6), key

    # then the evaluation of the three checkpoints and the report, on a few items (the README's folders replaced)
    evaluate, report = [c for c in readme_commands(1) if c[0] == "python"]
    assert evaluate[1:3] == ["eval_agreement.py", "data/demo/eval.yaml"] and report[1] == "report.py"
    folders = {"runs/contrastive": tmp_path / "stage1", "runs/lm_head": tmp_path / "stage2",
               "runs/full": tmp_path / "stage3", "runs/eval_demo": tmp_path / "eval",
               "runs/report_demo": tmp_path / "report"}

    def local(arg: str) -> str:
        for readme, here in folders.items():
            if arg == readme or arg.startswith(readme + "/"):
                return str(here / "checkpoint-3") if "/checkpoint-" in arg else str(here)
        return arg

    for command, extra in ((evaluate, ["--limit", "6", "--bootstrap_iters", "50", "--max_pairs", "24"]), (report, [])):
        result = subprocess.run([sys.executable, *map(local, command[1:]), *extra], cwd=ROOT, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, (command[1], (result.stdout + result.stderr)[-3000:])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert sorted(results) == ["model", "stage1/checkpoint-3", "stage2/checkpoint-3", "stage3/checkpoint-3"]
    runs = {r["run"]: r for r in json.loads((tmp_path / "report" / "report.json").read_text())["runs"]}
    assert runs["stage2"]["start"] == str(tmp_path / "stage1" / "checkpoint-3")
    assert runs["stage3"]["start"] == str(tmp_path / "stage2" / "checkpoint-3")


def test_a_mistake_under_the_launcher_is_one_line_and_status_1():
    """`accelerate launch -q` passes the script's line on and exits 1 (the script itself exits 2)."""
    command = launched(readme_commands(1))[0]
    argv = list(command)
    argv[argv.index("--model_name_or_path") + 1] = "runs/no-such-run/checkpoint-9"
    result = run(argv)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == ("train_lm_head.py: error: --model_name_or_path runs/no-such-run/checkpoint-9: "
                             "no such folder\n")
