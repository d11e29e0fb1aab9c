"""common/args.py: a config file, then command-line flags that override it; --help in groups; one-line errors."""

import re
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

import train_contrastive
import train_full
import train_lm_head
from common.args import GROUP_ORDER, ArgumentsError, build_parser, parse_arguments

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Settings:
    model_name_or_path: str | None = field(default=None, metadata={"help": "model"})
    train_file: str | None = field(default=None, metadata={"help": "pairs"})
    output_dir: str = field(default="runs/x", metadata={"help": "out"})
    learning_rate: float = field(default=2e-5, metadata={"help": "lr"})
    max_steps: int = field(default=-1, metadata={"help": "steps"})
    symmetric: bool = field(default=True, metadata={"help": "both directions"})
    models: list[str] = field(default_factory=list, metadata={"help": "checkpoints"})


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_config_then_overrides(tmp_path):
    cfg = write(tmp_path / "run.yaml", "learning_rate: 1e-3\nmax_steps: 400\nsymmetric: false\noutput_dir: a\n")
    args = parse_arguments(Settings, [cfg])
    # YAML reads 1e-3 as a string; it is converted as the flag would be
    assert args.learning_rate == 1e-3 and isinstance(args.learning_rate, float)
    assert (args.max_steps, args.symmetric, args.output_dir) == (400, False, "a")
    args = parse_arguments(Settings, [cfg, "--max_steps", "5", "--symmetric", "true"])
    assert (args.learning_rate, args.max_steps, args.symmetric, args.output_dir) == (1e-3, 5, True, "a")


def test_json_config_and_default_config(tmp_path):
    cfg = write(tmp_path / "run.json", '{"max_steps": 7}')
    assert parse_arguments(Settings, [cfg]).max_steps == 7
    assert parse_arguments(Settings, [], default_config=cfg).max_steps == 7  # no argument: the default config
    assert parse_arguments(Settings, ["--max_steps", "3"], default_config=cfg).max_steps == 3  # flags alone: no config


def test_relative_inputs_resolve_beside_the_config_only_when_they_exist_there(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "pairs.jsonl").write_text("{}\n")
    cfg = write(tmp_path / "cfg" / "run.yaml", "train_file: pairs.jsonl\nmodel_name_or_path: org/model\n"
                                                "output_dir: pairs.jsonl\n")
    args = parse_arguments(Settings, [cfg])
    assert args.train_file == str(tmp_path / "cfg" / "pairs.jsonl")
    assert args.model_name_or_path == "org/model"  # not beside the config: left as written (a hub id here)
    assert args.output_dir == "pairs.jsonl"  # outputs are never moved


@pytest.mark.parametrize("text, message", [
    ("learning_rat: 1e-3\n", r"unknown setting\(s\) \['learning_rat'\]"),
    ("- a\n- b\n", "expected a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_config_names_the_file(tmp_path, text, message):
    cfg = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ValueError, match=message) as err:
        parse_arguments(Settings, [cfg])
    assert "bad.yaml" in str(err.value)


def test_missing_config_and_unknown_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        parse_arguments(Settings, [str(tmp_path / "nope.yaml")])
    with pytest.raises(ArgumentsError, match=r"^unknown flag --max_stepz: did you mean --max_steps\?$"):
        parse_arguments(Settings, ["--max_stepz", "3"])


def test_positional_list(tmp_path):
    cfg = write(tmp_path / "e.yaml", "max_steps: 2\n")
    args = parse_arguments(Settings, ["a", "b", "--max_steps", "3"], positional="models")
    assert args.models == ["a", "b"] and args.max_steps == 3
    args = parse_arguments(Settings, [cfg, "c", "--output_dir", "o"], positional="models")
    assert args.models == ["c"] and (args.max_steps, args.output_dir) == (2, "o")


@dataclass
class Grouped:
    pooling: str = field(default="mean", metadata={"group": "model and pooling", "choices": ("mean", "last"),
                                                   "help": "how"})
    train_file: str | None = field(default=None, metadata={"group": "data", "help": "pairs"})
    symmetric: bool = field(default=True, metadata={"group": "objective", "help": "both directions"})
    seed: int = field(default=1, metadata={"help": "seed"})


@pytest.mark.parametrize("argv, message", [
    (["--max-stepz", "3"], r"^unknown flag --max-stepz: did you mean --max_steps\?$"),  # the dashed spelling too
    (["--zzz"], r"^unknown flag --zzz: see --help for the flags$"),
    (["--max_steps", "x"], r"^argument --max_steps: invalid int value: 'x' \(see --help\)$"),
    (["--max_steps", "3", "run.yaml"], r"^unexpected argument 'run.yaml': a config file comes first"),
    (["--max_steps", "3", "4"], r"^unexpected argument '4': neither a flag nor a flag's value"),
])
def test_argument_mistakes_are_one_line_errors(argv, message):
    with pytest.raises(ArgumentsError, match=message) as err:
        parse_arguments(Settings, argv)
    assert "\n" not in str(err.value)


def test_choices_are_checked_for_flags_and_config_files(tmp_path):
    assert parse_arguments(Grouped, ["--pooling", "last"]).pooling == "last"
    with pytest.raises(ArgumentsError, match=r"argument --pooling: invalid choice: 'max'"):
        parse_arguments(Grouped, ["--pooling", "max"])
    cfg = write(tmp_path / "c.yaml", "pooling: max\n")  # argparse does not check defaults: parse_arguments does
    with pytest.raises(ArgumentsError, match=r"^--pooling 'max': expected one of mean, last$"):
        parse_arguments(Grouped, [cfg])


def help_sections(text: str) -> dict[str, list[str]]:
    """--help's sections: title -> the flags listed in it, in order."""
    sections, title = {}, None
    for line in text.splitlines():
        if re.fullmatch(r"[a-z][a-z ]*:", line):
            title = line[:-1]
            sections[title] = []
        elif title and (m := re.match(r"  (--[a-z_0-9]+)", line)):
            sections[title].append(m.group(1))
    return sections


def test_help_groups_come_from_the_field_metadata():
    text = build_parser(Grouped).format_help()
    assert help_sections(text) == {"options": ["--seed"], "data": ["--train_file"],
                                   "model and pooling": ["--pooling"], "objective": ["--symmetric", "--no_symmetric"]}
    assert "--pooling {mean,last}" in text  # choices listed
    no = text[text.index("--no_symmetric"):]
    assert no.split("\n")[0].split(None, 1)[1] == "Turn --symmetric off."  # not "(default: False)"


@pytest.mark.parametrize("script, model_group, extra", [
    (train_contrastive, "model and pooling", {"--pooling": "{mean,last}", "--english_encoder": "{shared,frozen}",
                                              "--objective_balance": "{sum,pcgrad}"}),
    (train_lm_head, "model", {}),
    (train_full, "model", {}),
])
def test_trainer_help_is_grouped_with_choices_and_the_demo(script, model_group, extra):
    text = build_parser(script.Arguments, default_config=script.DEMO_CONFIG).format_help()
    sections = help_sections(text)
    assert list(sections) == ["options", *(g for g in GROUP_ORDER if g in sections)]
    assert sections["options"] == []  # -h only
    assert sections["distributed"] == ["--save_on_each_node", "--ddp_timeout"]  # the note, and the several-node flags
    assert "ds_configs/" in text[text.index("\ndistributed:"):]
    listed = {flag: title for title, flags in sections.items() for flag in flags}
    for f in fields(script.Arguments):  # every field in its metadata's group, none left out
        assert listed[f"--{f.name}"] == f.metadata["group"], f.name
    assert sections[model_group][0] == "--model_name_or_path"
    for flag, choices in {"--report_to": "{none,all,", "--lr_scheduler_type": "{linear,cosine,", **extra}.items():
        assert f"{flag} {choices}" in text
    usage = text.split("\n\n")[0]
    assert "(no argument: the embedded demo, " in usage and "[CONFIG.yaml|.json]" in usage
    switches = re.findall(r"\n  --no_(\w+)\s+(\S[^\n]*)", text)  # --no_X: what it does, no "(default: False)"
    assert all(help_text == f"Turn --{name} off." for name, help_text in switches)
    assert len(switches) == sum(f.default is True for f in fields(script.Arguments))


def test_an_unknown_flag_is_one_line_from_the_script():
    result = subprocess.run([sys.executable, "train_contrastive.py", "--pool_layr", "3"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "train_contrastive.py: error: unknown flag --pool_layr: did you mean --pool_layer?\n"
