"""common/args.py: a config file, then command-line flags that override it."""

from dataclasses import dataclass, field

import pytest

from common.args import parse_arguments


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
    with pytest.raises(SystemExit):
        parse_arguments(Settings, ["--max_stepz", "3"])


def test_positional_list(tmp_path):
    cfg = write(tmp_path / "e.yaml", "max_steps: 2\n")
    args = parse_arguments(Settings, ["a", "b", "--max_steps", "3"], positional="models")
    assert args.models == ["a", "b"] and args.max_steps == 3
    args = parse_arguments(Settings, [cfg, "c", "--output_dir", "o"], positional="models")
    assert args.models == ["c"] and (args.max_steps, args.output_dir) == (2, "o")
