"""Command-line parsing shared by the scripts: an optional config file, then flags that override it.

    train_contrastive.py                                   # the script's default config (the embedded demo)
    train_contrastive.py run.yaml                          # every setting from the file
    train_contrastive.py run.yaml --learning_rate 1e-4     # the file, with one setting changed
    train_contrastive.py --model_name_or_path M ...        # flags only

A config file is ``.yaml``/``.yml``/``.json``: one mapping of argument names to values. Its values
become the parser's defaults, so flags after it win, and a value written as a string is converted
exactly as the same flag would be (``learning_rate: 1e-3`` is a float, although YAML reads it as a
string). A relative input path in a config file (``model_name_or_path``, ``*_file``, ``inputs``, ...)
that exists beside the config file is taken from there, so a config can ship with its data; any
other relative path, ``output_dir`` included, is relative to the current directory.
"""

import json
import os
import sys
from dataclasses import fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# Argument names that name inputs to read (resolved against a config file's folder when they exist there).
_INPUT_NAMES = {"model_name_or_path", "models", "baseline", "inputs", "include_path", "english_model", "tokenizer"}
_INPUT_SUFFIXES = ("_file", "_files", "_data", "_corpus", "_tokenizer")


def is_input_path_field(name: str) -> bool:
    return name in _INPUT_NAMES or name.endswith(_INPUT_SUFFIXES)


def read_config(path: str, dataclass_type) -> dict:
    """The settings in a config file, checked against ``dataclass_type``'s fields, with relative
    input paths that exist beside the file made absolute."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path}: no such file")
    text = Path(path).read_text(encoding="utf-8")
    try:
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "JSON" if path.endswith(".json") else "YAML"
        raise ValueError(f"config file {path}: not valid {kind} ({e})") from None
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path}: expected a mapping of argument names to values")
    known = {f.name for f in fields(dataclass_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config file {path}: unknown setting(s) {unknown}; see --help for the names")
    here = Path(path).resolve().parent

    def resolve(value):
        if isinstance(value, str) and value and not os.path.isabs(value) and (here / value).exists():
            return str(here / value)
        return value

    for name, value in values.items():
        if is_input_path_field(name):
            values[name] = [resolve(v) for v in value] if isinstance(value, list) else resolve(value)
    return values


def parse_arguments(dataclass_type, argv: list[str] | None = None, *, default_config: str | None = None,
                    positional: str | None = None, **parser_kwargs):
    """Parse ``argv`` (default ``sys.argv[1:]``) into one ``dataclass_type``.

    - ``argv`` empty and ``default_config`` given: the default config is read (the embedded demo).
    - A first argument ending in .json/.yaml/.yml is a config file; the flags after it override it.
    - ``positional``: the name of a list field that collects the leading non-option arguments
      (``eval_agreement.py CKPT CKPT --output_dir DIR``); flags may add to it too.
    """
    parser = HfArgumentParser(dataclass_type, **parser_kwargs)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv and default_config is not None:
        argv = [str(default_config)]
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        parser.set_defaults(**read_config(argv.pop(0), dataclass_type))
    lead = []
    if positional is not None:
        while argv and not argv[0].startswith("-"):
            lead.append(argv.pop(0))
    args, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if positional is not None:
        unknown = [r for r in rest if r.startswith("-")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        setattr(args, positional, lead + list(getattr(args, positional)) + rest)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args
