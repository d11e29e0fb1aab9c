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

``--help`` lists the options by group: a field's ``metadata["group"]`` names its group (sections in the
order of ``GROUP_ORDER``), a dataclass may add groups that are a note only (``HELP_NOTES``, e.g. how to
run on several GPUs), and ``metadata["choices"]`` lists the values a field accepts, checked for flags and
config files alike. Every mistake in the arguments (an unknown flag, with the closest known one; a bad
value; a config file that is not first) raises ``ArgumentsError``, which the scripts print as one line.
"""

import argparse
import copy
import difflib
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType
from typing import get_type_hints

import yaml
from accelerate.utils import LoggerType
from transformers import HfArgumentParser, SchedulerType

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# Sections of --help in this order; fields of a group not listed here come after them, ungrouped ones first.
GROUP_ORDER = ("data", "model", "model and pooling", "objective", "optimisation", "speed", "logging and saving",
               "distributed")
# The trainers' "distributed" section: the launcher decides the processes; the flags there are for several nodes.
DISTRIBUTED_NOTE = (
    "Processes, GPUs, nodes and DeepSpeed ZeRO come from the launcher, not from flags: `accelerate launch "
    "--config_file ds_configs/accelerate_1node_8gpu_ddp.yaml SCRIPT ...` (see ds_configs/ and the README's "
    "Scale). Batch sizes are per process; the global batch is that times the processes."
)

# Values the trainers' --report_to and --lr_scheduler_type accept, as the libraries name them.
TRACKERS = ("none", *(t.value for t in LoggerType))
SCHEDULERS = tuple(t.value for t in SchedulerType)


class ArgumentsError(ValueError):
    """A mistake in the command line or a config file; the message is one line that names the flag."""
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown where they say something: not "(default: None)", and not the ``False`` of a
    ``--no_X`` switch, which reads as if the feature were off."""

    def _get_help_string(self, action):
        if isinstance(action, argparse._StoreFalseAction) or action.default in (None, "", argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` with help groups and choices from the fields' metadata, and errors raised as
    ``ArgumentsError`` (one line) instead of argparse's usage dump and exit."""

    def __init__(self, dataclass_type, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(dataclass_type, **kwargs)

    def _add_dataclass_arguments(self, dtype) -> None:
        notes = getattr(dtype, "HELP_NOTES", {})
        titles = dict.fromkeys([f.metadata.get("group") for f in fields(dtype)] + list(notes))
        titles.pop(None, None)
        rank = {title: i for i, title in enumerate(GROUP_ORDER)}
        groups = {title: self.add_argument_group(title, notes.get(title))
                  for title in sorted(titles, key=lambda t: rank.get(t, len(rank)))}
        hints = get_type_hints(dtype)
        for f in fields(dtype):
            if not f.init:
                continue
            # a copy without the "group" key, which argparse's add_argument would refuse
            metadata = dict(f.metadata)
            target = groups.get(metadata.pop("group", None), self)
            f = copy.copy(f)
            f.metadata, f.type = MappingProxyType(metadata), hints[f.name]
            self._parse_dataclass_field(target, f)
        for action in self._actions:
            # --help shows one spelling: --a_b (--a-b still parses: the parser looks flags up by every spelling)
            action.option_strings = [o for o in action.option_strings if "-" not in o[2:]]
            if isinstance(action, argparse._StoreFalseAction) and action.option_strings[0] == f"--no_{action.dest}":
                action.help = f"Turn --{action.dest} off."
            elif action.type is int:
                action.metavar = "N"
            elif action.type is float:
                action.metavar = "X"
            elif action.nargs == "?" and action.const is True:  # a switch: --flag, --flag false
                action.metavar = "true|false"
            elif action.option_strings and action.choices is None and (
                    is_input_path_field(action.dest) or action.dest.endswith("_dir")):
                action.metavar = "PATH"

    def error(self, message: str):
        raise ArgumentsError(f"{message} (see --help)")

    def unknown(self, rest: list[str]) -> ArgumentsError:
        """The error for arguments no option took: the first one, with the closest known flag."""
        token = rest[0]
        if not token.startswith("-"):
            if token.endswith(CONFIG_SUFFIXES):
                return ArgumentsError(f"unexpected argument {token!r}: a config file comes first, before any flag")
            return ArgumentsError(f"unexpected argument {token!r}: neither a flag nor a flag's value (see --help)")
        name = token.split("=", 1)[0]
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--") and "-" not in o[2:]]
        close = difflib.get_close_matches("--" + name.lstrip("-").replace("-", "_"), known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see --help for the flags"
        return ArgumentsError(f"unknown flag {name}: {hint}")


def usage_line(default_config: str | None, positional: str | None) -> str:
    """``usage:`` text naming the config file that may come first and, for a script with a default
    config, that no argument at all runs it."""
    lead = f" {positional.upper()} [...]" if positional else ""
    line = f"%(prog)s [CONFIG.yaml|.json]{lead} [--flag VALUE ...]   (flags after a config file override it)"
    if default_config is None:
        return line
    here = Path.cwd()
    demo = Path(default_config)
    demo = demo.relative_to(here) if demo.is_absolute() and demo.is_relative_to(here) else demo
    return f"%(prog)s   (no argument: the embedded demo, {demo})\n       {line}"


def check_choices(args, dataclass_type) -> None:
    """Values outside a field's ``choices`` (a config file's values bypass argparse's check)."""
    for f in fields(dataclass_type):
        allowed = f.metadata.get("choices")
        if allowed is not None and getattr(args, f.name) not in allowed:
            raise ArgumentsError(f"--{f.name} {getattr(args, f.name)!r}: expected one of "
                                 f"{', '.join(map(str, allowed))}")


def build_parser(dataclass_type, *, default_config: str | None = None, positional: str | None = None,
                 **parser_kwargs) -> ArgumentParser:
    """The parser of ``dataclass_type``, as ``parse_arguments`` uses it (and --help prints it)."""
    parser_kwargs.setdefault("usage", usage_line(default_config, positional))
    return ArgumentParser(dataclass_type, **parser_kwargs)


def parse_arguments(dataclass_type, argv: list[str] | None = None, *, default_config: str | None = None,
                    positional: str | None = None, **parser_kwargs):
    """Parse ``argv`` (default ``sys.argv[1:]``) into one ``dataclass_type``.

    - ``argv`` empty and ``default_config`` given: the default config is read (the embedded demo).
    - A first argument ending in .json/.yaml/.yml is a config file; the flags after it override it.
    - ``positional``: the name of a list field that collects the leading non-option arguments
      (``eval_agreement.py CKPT CKPT --output_dir DIR``); flags may add to it too.

    A mistake raises ``ArgumentsError``: one line naming the flag (an unknown one with the closest known).
    """
    parser = build_parser(dataclass_type, default_config=default_config, positional=positional, **parser_kwargs)
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
            raise parser.unknown(unknown)
        setattr(args, positional, lead + list(getattr(args, positional)) + rest)
    elif rest:
        raise parser.unknown(rest)
    check_choices(args, dataclass_type)
    return args
