"""Where the data_prep scripts write by default, and which module owns the shared code."""

import dataclasses
import re

import pytest

from common.data import DataError
from data_prep import expand_vocab, prepare_mono, prepare_parallel, sources

SCRIPTS = [prepare_parallel, prepare_mono, expand_vocab]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda m: m.__name__)
def test_outputs_default_under_runs_never_into_shipped_data(script):
    default = next(f.default for f in dataclasses.fields(script.Arguments) if f.name == "output_dir")
    assert default.startswith("runs/"), default
    examples = re.findall(r"--output_dir (\S+)", script.__doc__)
    assert examples and all(path.startswith("runs/") for path in examples), examples


def test_shared_reader_and_data_error_have_one_home():
    assert expand_vocab.iter_clean_documents is sources.iter_clean_documents
    assert prepare_mono.iter_documents is sources.iter_documents  # the document reader both scripts use
    assert prepare_mono.DEFAULT_EXCLUDE is sources.DEFAULT_EXCLUDE
    assert "DataError" not in sources.__all__ and set(sources.__all__) <= set(dir(sources))
    assert prepare_parallel.DataError is expand_vocab.DataError is DataError
