import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.data import DataError
from common.demo import train_demo_tokenizer
from data_prep import prepare_mono

WIKI = """<doc id="5" url="https://ko.wikipedia.org/wiki?curid=5" title="지미 카터">
지미 카터

제임스 얼 카터 주니어는 민주당 출신 미국 39대 대통령이다.
</doc>
<doc id="9" url="https://ko.wikipedia.org/wiki?curid=9" title="Python">
Python

Python is a programming language.
</doc>
<doc id="10" url="https://ko.wikipedia.org/wiki?curid=10" title="수학">
수학

수학은 수, 양, 구조, 공간, 변화 등의 개념을 다루는 학문이다.\u200b
</doc>
"""


def run(tmp_path, *argv, out="out"):
    out_dir = tmp_path / out
    report = prepare_mono.main([*argv, "--output_dir", str(out_dir)])
    docs = [json.loads(line) for line in (out_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    return report, docs


def test_wiki_extractor_documents_and_language_filter(tmp_path):
    (tmp_path / "wiki_00").write_text(WIKI + WIKI.split("</doc>")[0] + "</doc>\n", encoding="utf-8")  # + a duplicate
    report, docs = run(tmp_path, "--inputs", str(tmp_path / "wiki_00"), "--lang", "ko")
    carter = "지미 카터\n제임스 얼 카터 주니어는 민주당 출신 미국 39대 대통령이다."
    math_doc = "수학\n수학은 수, 양, 구조, 공간, 변화 등의 개념을 다루는 학문이다."
    assert docs == [{"text": carter, "lang": "ko"}, {"text": math_doc, "lang": "ko"}]
    st = report["inputs"][str(tmp_path / "wiki_00")]
    assert st["documents_read"] == 4 and st["removed"] == {"lang_mismatch": 1, "duplicate": 1}
    _, docs = run(tmp_path, "--inputs", str(tmp_path / "wiki_00"), "--lang", "auto", out="auto")
    assert [d["lang"] for d in docs] == ["ko", "en", "ko"]


def test_plain_text_units_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("첫 문단 첫 줄\n첫 문단 둘째 줄\n\n둘째 문단\n", encoding="utf-8")
    _, lines = run(tmp_path, "--inputs", str(tmp_path / "a.txt"), out="l")
    _, paras = run(tmp_path, "--inputs", str(tmp_path / "a.txt"), "--plain_text_unit", "paragraph", out="p")
    _, whole = run(tmp_path, "--inputs", str(tmp_path / "a.txt"), "--plain_text_unit", "file", out="f")
    assert [d["text"] for d in lines] == ["첫 문단 첫 줄", "첫 문단 둘째 줄", "둘째 문단"]
    assert [d["text"] for d in paras] == ["첫 문단 첫 줄\n첫 문단 둘째 줄", "둘째 문단"]
    assert [d["text"] for d in whole] == ["첫 문단 첫 줄\n첫 문단 둘째 줄\n둘째 문단"]
    (tmp_path / "b.jsonl").write_text('{"text": "Hello there.", "lang": "en"}\n{"text": "안녕"}\n', encoding="utf-8")
    _, docs = run(tmp_path, "--inputs", str(tmp_path / "b.jsonl"), out="j")
    assert docs == [{"text": "Hello there.", "lang": "en"}, {"text": "안녕", "lang": "ko"}]


@pytest.mark.parametrize("name, content, message", [
    ("wiki_01", '<doc id="1" url="u" title="t">\n본문\n<doc id="2" url="u" title="t2">\n',
     r"wiki_01:3: <doc> inside the document opened at line 1"),
    ("wiki_02", '<doc id="1" url="u" title="t">\n본문\n', r"wiki_02:1: <doc> is never closed"),
    ("t.txt", "좋은 줄\n".encode().decode() + "\n", None),
    ("m.jsonl", '{"text": "가"}\n{"txt": "나"}\n',
     r"m.jsonl:2: expected a JSON object with a string 'text' field \(found: \['txt'\]\)"),
])
def test_bad_input_names_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    if message is None:
        path.write_bytes("좋은 줄\n".encode() + "나쁜 줄\n".encode("cp949"))
        message = r"t.txt:2: not utf-8 text .*--encoding cp949"
    with pytest.raises(DataError, match=message):
        run(tmp_path, "--inputs", str(path))


def test_packed_blocks_equal_what_the_trainer_packs(tmp_path):
    """The saved blocks are exactly what the trainers build from the written JSONL
    (common.data.load_text_blocks), and the trainers' reader accepts the folder."""
    from datasets import load_from_disk

    from common.data import load_text_blocks

    texts = [f"문서 {i}: " + "한국어 문장이 여기 있습니다. " * (i % 7 + 1) for i in range(300)]
    (tmp_path / "docs.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    tok = train_demo_tokenizer(texts, vocab_size=300)
    tok.save_pretrained(tmp_path / "tok")
    report, _ = run(tmp_path, "--inputs", str(tmp_path / "docs.txt"), "--tokenizer", str(tmp_path / "tok"),
                    "--block_size", "64", "--validation_ratio", "0.1")
    blocks = load_from_disk(str(tmp_path / "out" / "train_blocks"))
    assert blocks.column_names == ["input_ids"] and len(blocks) == report["blocks"]["train"] > 10
    assert all(len(b) == 64 for b in blocks["input_ids"])
    reference = load_text_blocks(str(tmp_path / "out" / "train.jsonl"), tok, 64)
    assert blocks["input_ids"] == reference["input_ids"]
    assert load_text_blocks(str(tmp_path / "out" / "train_blocks"), tok, 64)["input_ids"] == blocks["input_ids"]
    lines = (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line)["text"] for line in lines]
    stream = [t for d in docs for t in (*tok(d)["input_ids"], tok.eos_token_id)]
    assert sum(blocks["input_ids"], []) == stream[: len(stream) // 64 * 64]  # nothing lost but the final tail
    assert (tmp_path / "out" / "validation_blocks").is_dir() and report["documents"]["validation"] > 0


def test_real_mono_text(shared_data, tmp_path):
    """kowiki (wiki-extractor, 412 articles) and konlpy's texts; enwiki + WikiText-2; PROVENANCE left out."""
    report, docs = run(tmp_path, "--inputs", str(shared_data / "mono_ko" / "kowiki"), "--lang", "ko", out="ko")
    raw = "".join((shared_data / "mono_ko" / "kowiki" / f"wiki_0{i}").read_text(encoding="utf-8") for i in range(3))
    assert report["inputs"][str(shared_data / "mono_ko" / "kowiki")]["documents_read"] == raw.count("<doc ") == 412
    assert all(d["lang"] == "ko" and d["text"] for d in docs)
    report, docs = run(tmp_path, "--inputs", str(shared_data / "mono_en"), "--lang", "en", out="en")
    st = report["inputs"][str(shared_data / "mono_en")]
    assert not any("PROVENANCE" in d["text"] for d in docs[:5])
    assert st["documents_read"] == sum(st["kept"].values()) + sum(st["removed"].values())
    print("\nmono_en:", st["documents_read"], "read, removed", st["removed"])


def test_help_runs_as_a_module_from_the_repository_root():
    """``python -m data_prep.prepare_mono --help`` from the repository root: no path set up beforehand."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "data_prep.prepare_mono", "--help"], cwd=root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "--plain_text_unit" in result.stdout and "runs/data/mono" in result.stdout


def test_document_of_exactly_min_chars_is_kept():
    """--min_chars is the shortest length kept: a document of exactly that many characters passes."""
    work = prepare_mono.DocumentWork("ko", 5, 0)
    assert work.verdict("가나다라마", None)[0] is None
    assert work.verdict("가나다라", None)[0] == "too_short"
