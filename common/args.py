"""Command-line parsing shared by the scripts: flags, or a single .json / .yaml file of arguments."""

import os
import sys

from transformers import HfArgumentParser


def parse_arguments(dataclass_type, argv: list[str] | None = None):
    """Parse ``argv`` (default ``sys.argv[1:]``) into one ``dataclass_type``; a lone argument ending
    in .json, .yaml or .yml is read as a file of arguments instead."""
    parser = HfArgumentParser(dataclass_type)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        parse = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
        (args,) = parse(os.path.abspath(argv[0]))
    else:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args
