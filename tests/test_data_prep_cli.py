"""The data_prep scripts run as ``python -m data_prep.SCRIPT``: bad input ends in one line on stderr,
``SCRIPT.py: error: message`` naming the file (and line), exit status 2, no traceback."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED_DATA


def run_module(module, *argv, debug=False):
    env = {**os.environ, "KOEN_ALIGN_DEBUG": "1" if debug else ""}
    return subprocess.run([sys.executable, "-m", f"data_prep.{module}", *map(str, argv)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def error_line(proc, script):
    """The last non-empty line of stderr, checked to be the script's one-line error."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"{script}.py: error: "), proc.stderr[-3000:]
    return last


def test_prepare_parallel_malformed_jsonl(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"ko": "가나다", "en": "abc"}\n{"ko": \n', encoding="utf-8")
    proc = run_module("prepare_parallel", "--inputs", tmp_path / "bad.jsonl", "--output_dir", tmp_path / "out")
    line = error_line(proc, "prepare_parallel")
    assert f"{tmp_path / 'bad.jsonl'}:2: not valid JSON" in line


def test_prepare_parallel_line_aligned_files_of_different_length(tmp_path):
    (tmp_path / "c.ko").write_text("하나\n둘\n셋\n", encoding="utf-8")
    (tmp_path / "c.en").write_text("one\ntwo\n", encoding="utf-8")
    proc = run_module("prepare_parallel", "--ko_files", tmp_path / "c.ko", "--en_files", tmp_path / "c.en",
                      "--output_dir", tmp_path / "out")
    line = error_line(proc, "prepare_parallel")
    assert f"{tmp_path / 'c.ko'} has 3 lines" in line and f"{tmp_path / 'c.en'} has 2" in line
    # the debugging switch keeps the traceback
    proc = run_module("prepare_parallel", "--ko_files", tmp_path / "c.ko", "--en_files", tmp_path / "c.en",
                      "--output_dir", tmp_path / "out", debug=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "DataError" in proc.stderr


def test_prepare_mono_text_not_in_the_encoding(tmp_path):
    (tmp_path / "docs.txt").write_bytes("첫 문서\n".encode() + "둘째 문서\n".encode("cp949"))
    proc = run_module("prepare_mono", "--inputs", tmp_path / "docs.txt", "--output_dir", tmp_path / "out")
    line = error_line(proc, "prepare_mono")
    assert f"{tmp_path / 'docs.txt'}:2: not utf-8 text" in line


def test_expand_vocab_base_that_is_not_sentencepiece(tmp_path):
    (tmp_path / "bad.model").write_bytes(b"not a model")
    (tmp_path / "ko.txt").write_text("한국어 문장입니다.\n", encoding="utf-8")
    proc = run_module("expand_vocab", "--base_tokenizer", tmp_path / "bad.model", "--ko_corpus", tmp_path / "ko.txt",
                      "--output_dir", tmp_path / "out")
    line = error_line(proc, "expand_vocab")
    assert f"{tmp_path / 'bad.model'}: not a SentencePiece model" in line


def test_expand_vocab_english_corpus(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    corpus = SHARED_DATA / "mono_en" / "enwiki"
    proc = run_module("expand_vocab", "--base_tokenizer", SHARED_DATA / "llama2_tokenizer" / "tokenizer.model",
                      "--ko_corpus", corpus, "--ko_vocab_size", "3000", "--output_dir", tmp_path / "out")
    line = error_line(proc, "expand_vocab")
    assert f"--ko_corpus {corpus}: not a Korean corpus" in line and "--min_hangul_piece_share" in line
    assert not (tmp_path / "out").exists()
