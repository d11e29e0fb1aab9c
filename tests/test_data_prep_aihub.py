"""prepare_parallel on the shapes and sizes of the real AI-Hub downloads (issue 12): split markers and
split folders, one-language 원천데이터 files in a whole tree, a layout named on the command line,
multi-part downloads, per-corpus-and-split stats, an interleaved validation file, and a JSON reader
whose cost does not grow with the records before it."""

import io
import json
import time
import zipfile

import pytest

from common.data import DataError, iter_parallel_jsonl
from data_prep import prepare_parallel, sources
from data_prep.sources import iter_json_records, name_tokens, split_of


def run(tmp_path, *argv, out="out"):
    out_dir = tmp_path / out
    report = prepare_parallel.main([*map(str, argv), "--output_dir", str(out_dir)])
    pairs = {s: list(iter_parallel_jsonl(str(out_dir / f"{s}.jsonl"))) for s in ("train", "validation")}
    return report, pairs


def items(n, start=0, tag=""):
    """Broadcast-style one-record files: 원문 Korean, 최종번역문 English."""
    return [{"ID": f"{tag}{i}", "원문": f"{tag}문장 {i}번을 말합니다.", "최종번역문": f"{tag}This is line {i}."}
            for i in range(start, start + n)]


def write_zip(path, records, folder="대사"):
    """One JSON per item, neutral member names (nothing in them names a split)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for i, rec in enumerate(records):
            zf.writestr(f"{folder}/{i:05d}.json", json.dumps(rec, ensure_ascii=False))


# ------------------------------------------------------------------------------------------ split names


@pytest.mark.parametrize("name, split, by", [
    ("TL1.zip", "train", "marker"), ("TL2.zip", "train", "marker"), ("TS1.zip", "train", "marker"),
    ("VL1.zip", "validation", "marker"), ("VS1.zip", "validation", "marker"),
    ("VL_방송콘텐츠.zip", "validation", "marker"),
    ("TL1구어체.zip", "train", "marker"), ("TS_01.zip", "train", "marker"),
    ("1.Training", "train", "folder"), ("2.Validation", "validation", "folder"),
    ("학습데이터", "train", "folder"), ("검증데이터", "validation", "folder"), ("학습", "train", "folder"),
    ("검증용", "validation", "folder"), ("sts-dev.tsv", "validation", "file name"),
    ("data.json", None, None), ("TLX.zip", None, None), ("test_and_train", None, None),
])
def test_split_names(name, split, by):
    parts = ("input", name, "00001.json") if by != "file name" else ("input", name)
    got = split_of(parts)
    assert (got.split, got.by) == (split, by) if split else got is None
    assert "tl1" in name_tokens("TL1구어체") and "구어체" in name_tokens("TL1구어체")


def test_tl_vl_zips_with_neutral_member_names_keep_their_split(tmp_path):
    """AI-Hub's TL1.zip / VL1.zip hold one JSON per item with neutral names: the archive's marker decides,
    for every item (the hash put 98% of a VL1.zip into training before)."""
    d = tmp_path / "download"
    write_zip(d / "TL1.zip", items(300, tag="t"))
    write_zip(d / "VL1.zip", items(200, tag="v"))
    report, pairs = run(tmp_path, "--inputs", f"broadcast={d}", "--validation_ratio", "0.5")
    assert len(pairs["validation"]) == 200 and all(p["en"].startswith("vThis") for p in pairs["validation"])
    assert len(pairs["train"]) == 300 and all(p["en"].startswith("tThis") for p in pairs["train"])
    assert report["splits"] == {
        str(d / "TL1.zip"): {"split": "train", "by": "marker", "files": 300, "pairs": {"train": 300, "validation": 0}},
        str(d / "VL1.zip"): {"split": "validation", "by": "marker", "files": 200,
                             "pairs": {"train": 0, "validation": 200}},
    }
    saved = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert saved["splits"] == report["splits"]


def test_training_validation_and_korean_split_folders(tmp_path):
    """Training/ and Validation/ trees (01.원천데이터, 02.라벨링데이터) with neutral archive names, and the
    Korean 학습데이터/검증데이터 folders: the folder decides; files without any split name are hashed."""
    d = tmp_path / "corpus"
    write_zip(d / "1.Training" / "02.라벨링데이터" / "방송_1.zip", items(120, tag="a"))
    write_zip(d / "2.Validation" / "02.라벨링데이터" / "방송_1.zip", items(40, tag="b"))
    (d / "학습데이터").mkdir()
    (d / "검증데이터").mkdir()
    (d / "학습데이터" / "part_01.json").write_text(json.dumps(items(60, tag="c"), ensure_ascii=False), "utf-8")
    (d / "검증데이터" / "part_01.json").write_text(json.dumps(items(30, tag="d"), ensure_ascii=False), "utf-8")
    (d / "extra").mkdir()
    (d / "extra" / "part_02.json").write_text(json.dumps(items(400, tag="e"), ensure_ascii=False), "utf-8")
    report, pairs = run(tmp_path, "--inputs", d, "--validation_ratio", "0.2")
    tags = {s: {p["en"][0] for p in pairs[s]} for s in pairs}
    assert {p["en"][0] for p in pairs["validation"] if p["en"][0] != "e"} == {"b", "d"}
    assert tags["train"] == {"a", "c", "e"}
    assert sum(p["en"][0] == "b" for p in pairs["validation"]) == 40
    assert sum(p["en"][0] == "d" for p in pairs["validation"]) == 30
    hashed_val = sum(p["en"][0] == "e" for p in pairs["validation"])
    assert 40 < hashed_val < 120  # about 20% of 400
    splits = report["splits"]
    assert splits[str(d / "1.Training")] == {"split": "train", "by": "folder", "files": 120,
                                             "pairs": {"train": 120, "validation": 0}}
    assert splits[str(d / "2.Validation")]["split"] == "validation" and splits[str(d / "2.Validation")]["files"] == 40
    assert splits[str(d / "학습데이터")]["by"] == "folder" and splits[str(d / "검증데이터")]["split"] == "validation"
    assert splits[str(d / "extra" / "part_02.json")] == {"split": "hash", "by": "hash", "files": 1,
                                                        "pairs": {"train": 400 - hashed_val, "validation": hashed_val}}


# ------------------------------------------------------------------------------- one-language files


def test_one_language_source_csv_beside_labelled_file_is_skipped_and_counted(tmp_path):
    """A 원천데이터 CSV with only ``sn, ko`` (and a JSON with only ``en``) beside the labelled file: in a
    whole tree it is skipped and counted per reason, never fatal; named on its own it is an error."""
    d = tmp_path / "기술과학"
    (d / "Training" / "01.원천데이터").mkdir(parents=True)
    (d / "Training" / "02.라벨링데이터").mkdir(parents=True)
    source = d / "Training" / "01.원천데이터" / "tech_1.csv"
    source.write_text("sn,ko\n1,전압을 측정한다.\n2,회로가 닫힌다.\n", encoding="utf-8")
    (d / "Training" / "01.원천데이터" / "tech_2.json").write_text(
        json.dumps({"data": [{"sn": "1", "en": "The voltage is measured."}]}), encoding="utf-8")
    (d / "Training" / "02.라벨링데이터" / "tech_1.csv").write_text(
        "sn,ko,mt,en\n1,전압을 측정한다.,MT,The voltage is measured.\n2,회로가 닫힌다.,MT,The circuit closes.\n",
        encoding="utf-8")
    report, pairs = run(tmp_path, "--inputs", d, "--validation_ratio", "0")
    assert {(p["ko"], p["en"]) for p in pairs["train"]} == {("전압을 측정한다.", "The voltage is measured."),
                                                            ("회로가 닫힌다.", "The circuit closes.")}
    assert report["skipped"] == {"one_language": 2}
    assert report["skipped_files"][str(source)].startswith("one_language: one language only: the Korean field 'ko'")
    assert "the English field 'en'" in report["skipped_files"][str(d / "Training" / "01.원천데이터" / "tech_2.json")]
    with pytest.raises(DataError, match=r"tech_1.csv:1: one language only: the Korean field 'ko' of the ko/en layout"):
        run(tmp_path, "--inputs", source)
    # a JSON whose first record lacks its translation is not a one-language file: that record is malformed
    (d / "Training" / "02.라벨링데이터" / "tech_3.json").write_text(json.dumps({"data": [
        {"sn": "1", "ko": "번역이 빠졌다."}, {"sn": "2", "ko": "저항이 크다.", "en": "The resistance is high."}]},
        ensure_ascii=False), encoding="utf-8")
    report, pairs = run(tmp_path, "--inputs", d, "--validation_ratio", "0")
    assert len(pairs["train"]) == 3 and report["sources"]["기술과학"]["removed"] == {"malformed_row": 1}
    assert report["skipped"] == {"one_language": 2}
    # a tree of source files only: no pairs, and the message says why
    with pytest.raises(DataError, match=r"01.원천데이터: no parallel pairs: .* 2 of them hold one language only"):
        run(tmp_path, "--inputs", d / "Training" / "01.원천데이터")


# ----------------------------------------------------------------------------- layout on the command line


def test_custom_field_layout_read_with_ko_field_en_field(tmp_path):
    """A layout the detection does not know (nested fields, other names): --ko_field/--en_field read it,
    several pairs at once (the first pair a file has), dotted names for nested JSON; a record whose
    Korean field holds no Hangul while its English one does is read the other way round."""
    d = tmp_path / "방송콘텐츠"
    d.mkdir()
    nested = {"header": {"version": "1.1"}, "body": [
        {"sid": 1, "src": {"lang": "ko", "text": "어디 가세요?"},
         "tgt": {"lang": "en", "text": "Where are you going?"}},
        {"sid": 2, "src": {"lang": "en", "text": "That was fun."}, "tgt": {"lang": "ko", "text": "재미있었어요."}},
    ]}
    (d / "drama_0001.json").write_text(json.dumps(nested, ensure_ascii=False), encoding="utf-8")
    (d / "news.csv").write_text("번호,한글문장,영문문장\n1,오늘은 맑습니다.,It is sunny today.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"cannot tell the Korean and English fields"):
        run(tmp_path, "--inputs", d)
    report, pairs = run(tmp_path, "--inputs", d, "--ko_field", "src.text", "한글문장",
                        "--en_field", "tgt.text", "영문문장", "--validation_ratio", "0")
    assert {(p["ko"], p["en"]) for p in pairs["train"]} == {("어디 가세요?", "Where are you going?"),
                                                            ("재미있었어요.", "That was fun."),
                                                            ("오늘은 맑습니다.", "It is sunny today.")}
    assert report["sources"]["방송콘텐츠"]["layouts"] == {"json src.text/tgt.text": 1, "csv 한글문장/영문문장": 1}
    # or the flags repeated, one pair at a time
    _, again = run(tmp_path, "--inputs", d, "--ko_field", "src.text", "--en_field", "tgt.text", "--ko_field=한글문장",
                   "--en_field", "영문문장", "--validation_ratio", "0", out="again")
    assert again == pairs
    # the same from a small config file (a mapping of the fields), overridable on the command line
    config = tmp_path / "fields.yaml"
    config.write_text("ko_field: [src.text, 한글문장]\nen_field: [tgt.text, 영문문장]\nvalidation_ratio: 0.0\n",
                      encoding="utf-8")
    report2 = prepare_parallel.main([str(config), "--inputs", str(d), "--output_dir", str(tmp_path / "o2")])
    assert report2["totals"]["train"] == 3
    with pytest.raises(ValueError, match=r"--ko_field .* and --en_field .* pair up by position"):
        run(tmp_path, "--inputs", d, "--ko_field", "src.text", "한글문장", "--en_field", "tgt.text")
    with pytest.raises(DataError, match=r"--ko_field ko --en_field en: not found among the fields"):
        run(tmp_path, "--inputs", d / "drama_0001.json", "--ko_field", "ko", "--en_field", "en")
    with pytest.raises(DataError, match=r"one language only: the English field 'tgt.text' of the src.txt/tgt.text "
                                        r"layout \(--ko_field/--en_field\) without 'src.txt'"):  # a typo
        run(tmp_path, "--inputs", d / "drama_0001.json", "--ko_field", "src.txt", "--en_field", "tgt.text")


# ----------------------------------------------------------------------------------------- part files


def test_split_download_parts_get_the_merge_command(tmp_path):
    whole = io.BytesIO()
    with zipfile.ZipFile(whole, "w") as zf:
        zf.writestr("data.json", json.dumps(items(5), ensure_ascii=False))
    data = whole.getvalue()
    d = tmp_path / "dl"
    d.mkdir()
    chunks = [data[i:i + 100] for i in range(0, len(data), 100)]
    assert len(chunks) >= 3
    for i, chunk in enumerate(chunks[:2] + [b"".join(chunks[2:])]):
        (d / f"TL1.zip.part{i}").write_bytes(chunk)
    # part10 sorts before part2 by name: the command lists them by number
    (d / "TL1.zip.part10").write_bytes(b"")
    with pytest.raises(DataError, match=r"TL1.zip.part0: one part of a download split into 4 part\(s\) "
                                        r"\(TL1.zip.part0, TL1.zip.part1, TL1.zip.part2, TL1.zip.part10\); part\(s\) "
                                        r"3, 4, 5, 6, 7, 8, 9 missing.*cat \S+part0 \S+part1 \S+part2 \S+part10 > "
                                        r"\S+TL1.zip"):
        run(tmp_path, "--inputs", d)
    (d / "TL1.zip.part10").unlink()
    with pytest.raises(DataError, match=r"TL1.zip.part1: one part of a download split into 3 part\(s\) .*merge "
                                        r"them, in this order, into one file and pass that: cat \S+part0 \S+part1 "
                                        r"\S+part2 >"):
        run(tmp_path, "--inputs", d / "TL1.zip.part1")
    # merged beside its parts: the parts are skipped (counted), the merged archive read
    (d / "TL1.zip").write_bytes(b"".join((d / f"TL1.zip.part{i}").read_bytes() for i in range(3)))
    report, pairs = run(tmp_path, "--inputs", d, "--validation_ratio", "0")
    assert len(pairs["train"]) == 5 and report["skipped"] == {"part_of_merged_file": 3}


# ------------------------------------------------------------------------------------ stats and output


def test_stats_per_corpus_and_split(tmp_path):
    """Per source and split: pairs kept, each filter's count, repeated Korean/English sides."""
    (tmp_path / "a").mkdir()
    train = [("하나", "one"), ("하나", "uno"), ("둘", "one"), ("하나", "one"), ("No Hangul", "No Hangul either")]
    valid = [("다섯", "five"), ("다섯", "cinq"), ("다섯", "five"), ("짧다", "This English side is far, far longer.")]
    for name, rows in (("train.jsonl", train), ("dev.jsonl", valid)):
        (tmp_path / "a" / name).write_text("".join(json.dumps({"ko": k, "en": e}, ensure_ascii=False) + "\n"
                                                   for k, e in rows), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"ko": "하나", "en": "one"}) + "\n", encoding="utf-8")
    report, _ = run(tmp_path, "--inputs", tmp_path / "a", f"b={tmp_path / 'b.jsonl'}", "--validation_ratio", "0")
    a = report["sources"]["a"]["splits"]
    assert a["train"] == {"kept": 3, "removed": {"ko_without_hangul": 1, "duplicate": 1},
                          "repeats": {"ko": 1, "en": 1}}
    assert a["validation"] == {"kept": 2, "removed": {"length_ratio": 1, "duplicate": 1},
                               "repeats": {"ko": 1, "en": 0}}
    # across sources: b's pair repeats a's, removed as a duplicate of the split
    assert report["sources"]["b"]["splits"]["train"] == {"kept": 0, "removed": {"duplicate": 1}, "repeats": {}}
    assert report["repeats"]["train"]["pairs"] == 3 and report["repeats"]["train"]["pair_removed"] == 2


def test_validation_file_interleaves_the_sources(tmp_path):
    """validation.jsonl is not corpus by corpus: its order is the pairs' hash order (any first lines
    sample every source), the same on every run and for each pair when data is added."""
    for name in ("alpha", "beta", "gamma"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dev.jsonl").write_text("".join(
            json.dumps({"ko": f"{name} 문장 {i}번", "en": f"{name} sentence {i}"}, ensure_ascii=False) + "\n"
            for i in range(100)), encoding="utf-8")
    inputs = [tmp_path / n for n in ("alpha", "beta", "gamma")]
    _, pairs = run(tmp_path, "--inputs", *inputs, "--validation_ratio", "0")
    sources_seen = [p["source"] for p in pairs["validation"]]
    assert len(sources_seen) == 300
    assert set(sources_seen[:30]) == {"alpha", "beta", "gamma"}
    runs = sum(a != b for a, b in zip(sources_seen, sources_seen[1:]))
    assert runs > 100  # corpus by corpus would give 2
    hashes = [prepare_parallel.pair_hash(p["ko"], p["en"])[0] for p in pairs["validation"]]
    assert hashes == sorted(hashes)
    _, again = run(tmp_path, "--inputs", *reversed(inputs), "--validation_ratio", "0", out="again")
    assert again["validation"] == pairs["validation"]


# ----------------------------------------------------------------------------------------- JSON reader


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_json_reader_line_numbers(monkeypatch, chunk):
    """Each record's line, and an error's line, are right whatever the chunk boundaries."""
    monkeypatch.setattr(sources._JsonStream, "CHUNK", chunk)
    records = [{"ko": "한국어 " * (i % 5), "en": f"text {i}", "n": i} for i in range(40)]
    text = json.dumps({"info": {"a": 1}, "data": records}, ensure_ascii=False, indent=2)
    starts = [n for n, line in enumerate(text.split("\n"), 1) if line == "    {"]
    got = list(iter_json_records(io.BytesIO(text.encode()), "f.json"))
    assert [r for r, _ in got] == records
    assert [w for _, w in got] == [f"f.json:{n}" for n in starts]
    lines = text.split("\n")
    bad = next(i for i, line in enumerate(lines) if '"text 33"' in line)
    lines[bad] = lines[bad].rstrip(",")  # a missing comma: the error is on the next line
    with pytest.raises(DataError, match=rf"f.json:{bad + 2}: not valid JSON"):
        list(iter_json_records(io.BytesIO("\n".join(lines).encode()), "f.json"))
    # one value much longer than a chunk
    big = {"data": [{"ko": "가" * 5000, "en": "a" * 20000}]}
    assert [r for r, _ in iter_json_records(io.BytesIO(json.dumps(big).encode()), "f.json")] == big["data"]


def test_json_reader_cost_does_not_grow_with_the_records_before(tmp_path):
    """The reader re-counted the lines of the buffer for every record (quadratic within each 1 MB chunk:
    seconds for a few MB). Now within a small factor of json.loads on the same text."""
    records = [{"sn": i, "ko": "한국어 문장입니다 " * 3, "mt": "x" * 40, "en": "An English sentence here. " * 3}
               for i in range(20000)]
    raw = json.dumps({"data": records}, ensure_ascii=False, indent=4).encode()
    assert len(raw) > 5_000_000
    t0 = time.perf_counter()
    json.loads(raw)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_json_records(io.BytesIO(raw), "big.json"))
    t_read = time.perf_counter() - t0
    assert n == 20000
    assert t_read < 10 * t_load + 0.5, (t_read, t_load)
