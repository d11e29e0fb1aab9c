import csv
import io
import json
import random
import unicodedata
import zipfile

import pytest

from common.data import DataError, iter_parallel_jsonl
from data_prep import prepare_parallel, sources
from data_prep.sources import clean_text, iter_json_records

openpyxl = pytest.importorskip("openpyxl")


def run(tmp_path, *argv, out="out"):
    out_dir = tmp_path / out
    report = prepare_parallel.main([*argv, "--output_dir", str(out_dir)])
    pairs = {s: list(iter_parallel_jsonl(str(out_dir / f"{s}.jsonl"))) for s in ("train", "validation")}
    return report, pairs


def all_pairs(pairs):
    return pairs["train"] + pairs["validation"]


# ------------------------------------------------------------------------------------ AI-Hub layouts


def write_xlsx(path, header, rows):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(header)
    for row in rows:
        ws.append(row)
    wb.save(path)


def test_xlsx_korean_english_corpus(tmp_path):
    """한국어-영어 번역(병렬) 말뭉치: 원문 Korean, 번역문 English, other columns differ per
    workbook."""
    d = tmp_path / "한국어-영어"
    d.mkdir()
    write_xlsx(d / "1_구어체(1)_200226.xlsx", ["SID", "원문", "번역문"],
               [[1, "나는 학교에 간다.", "I go to school."], [2, "밥 먹었어?", "Did you eat?"],
                [None, None, None]])
    write_xlsx(d / "3_문어체_뉴스(1)_200226.xlsx", ["ID", "날짜", "자동분류1", "원문", "번역문", "URL"],
               [[1, "2019-01-01", "경제", "주가가 올랐다.", "Stock prices rose.", "http://x"]])
    report, pairs = run(tmp_path, "--inputs", f"aihub={d}", "--validation_ratio", "0")
    got = {(p["ko"], p["en"], p["source"]) for p in pairs["train"]}
    assert got == {("나는 학교에 간다.", "I go to school.", "aihub"),
                   ("밥 먹었어?", "Did you eat?", "aihub"),
                   ("주가가 올랐다.", "Stock prices rose.", "aihub")}
    st = report["sources"]["aihub"]
    assert st["rows_read"] == 3 and st["blank_rows"] == 1 and st["layouts"] == {"xlsx 원문/번역문": 2}


def test_tech_social_science_csv_and_json_ignore_machine_draft(tmp_path):
    """기술과학/사회과학: CSV and {"data": [...]} JSON with ko, mt, en: en is used, mt never."""
    d = tmp_path / "기술과학"
    d.mkdir()
    rows = [("1", "전압을 측정한다.", "MT DRAFT ONE", "The voltage is measured."),
            ("2", "회로가 닫힌다.", "MT DRAFT TWO", "The circuit closes.")]
    with open(d / "1113_tech_train_set_1195228.csv", "w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sn", "file_name", "ko", "mt", "en", "domain"])
        for sn, ko, mt, en in rows:
            w.writerow([sn, "a.txt", ko, mt, en, "기술"])
    data = {"info": {"name": "tech"},
            "data": [{"sn": "9", "ko": "저항이 크다.", "mt": "MT DRAFT THREE", "en": "The resistance is high.",
                      "tags": ["a"]}]}
    (d / "1113_tech_valid_set_149403.json").write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    report, pairs = run(tmp_path, "--inputs", str(d))
    assert {(p["ko"], p["en"]) for p in pairs["train"]} == {(r[1], r[3]) for r in rows}
    # the file's own split
    assert [(p["ko"], p["en"]) for p in pairs["validation"]] == [("저항이 크다.", "The resistance is high.")]
    assert "MT DRAFT" not in json.dumps(pairs)
    assert report["sources"]["기술과학"]["layouts"] == {"csv ko/en": 1, "json ko/en": 1}


def test_byte_identical_label_and_source_copies_are_read_once(tmp_path):
    """The newer 기술과학 set: label and source folders hold byte-identical JSON copies."""
    data = {"data": [{"sn": str(i), "ko": f"문장 {i}번입니다.", "en": f"This is sentence {i}.",
                      "ko_original": "x"} for i in range(20)]}
    for folder in ("라벨링데이터", "원천데이터"):
        (tmp_path / "new" / folder).mkdir(parents=True)
        (tmp_path / "new" / folder / "tech.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    report, pairs = run(tmp_path, "--inputs", str(tmp_path / "new"), "--validation_ratio", "0")
    assert len(all_pairs(pairs)) == 20
    assert report["sources"]["new"]["rows_read"] == 20 and "duplicate" not in report["sources"]["new"]["removed"]
    assert len(report["duplicate_files"]) == 1


def test_specialized_domain_top_level_list(tmp_path):
    """전문분야 한영 말뭉치: a top-level list of {"sid", "분야", "한국어", "영어"}."""
    recs = [{"sid": 1, "분야": "의료", "한국어": "혈압이 높습니다.", "영어": "Blood pressure is high."},
            {"sid": 2, "분야": "법률", "한국어": "계약은 무효이다.", "영어": "The contract is void."}]
    path = tmp_path / "전문분야_의료.json"
    path.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    _, pairs = run(tmp_path, "--inputs", str(path), "--validation_ratio", "0")
    assert [(p["ko"], p["en"]) for p in pairs["train"]] == [(r["한국어"], r["영어"]) for r in recs]


class Cp949Info(zipfile.ZipInfo):
    """Writes the member name as cp949 bytes without the UTF-8 flag, as AI-Hub's archives do."""

    def _encodeFilenameFlags(self):
        return self.filename.encode("cp949"), self.flag_bits & ~0x800


def test_broadcast_zip_with_cp949_names_koen_and_enko(tmp_path):
    """방송콘텐츠: one small JSON per file in zips per genre; 원문 is English in the enko (영한) sets."""
    path = tmp_path / "VL_방송콘텐츠.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, rec in [
            ("한영/드라마/대사_0001.json",
             {"ID": "1", "대분류": "드라마", "원문": "어디 가세요?",
              "최종번역문": "Where are you going?"}),
            ("영한/예능/대사_0002.json",
             {"ID": "2", "대분류": "예능", "원문": "That was fun.",
              "최종번역문": "재미있었어요."}),
        ]:
            zf.writestr(Cp949Info(name), json.dumps(rec, ensure_ascii=False).encode("utf-8"))
    with zipfile.ZipFile(path) as zf:  # what Python sees without the fix
        assert all(not (i.flag_bits & 0x800) for i in zf.infolist()) and "영한" not in zf.namelist()[1]
    report, pairs = run(tmp_path, "--inputs", str(path))
    assert pairs["train"] == []  # VL_ = validation
    assert {(p["ko"], p["en"]) for p in pairs["validation"]} == {("어디 가세요?", "Where are you going?"),
                                                                  ("재미있었어요.", "That was fun.")}
    assert report["sources"]["VL_방송콘텐츠"]["layouts"] == {"json 원문/최종번역문": 2}


def test_cp949_member_names_are_decoded():
    info = zipfile.ZipInfo("x")
    info.filename = "TL_한국어/파일.json".encode("cp949").decode("cp437")
    assert sources.zip_member_name(info) == "TL_한국어/파일.json"


def test_nested_zip_and_generic_jsonl_with_field_override(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("pairs.jsonl", '{"kr_sent": "고양이가 잔다.", "en_sent": "The cat sleeps."}\n\n'
                                   '{"kr_sent": "개가 짖는다.", "en_sent": "The dog barks."}\n')
    with zipfile.ZipFile(tmp_path / "outer.zip", "w") as zf:
        zf.writestr("Training/inner.zip", inner.getvalue())
    message = r"inner.zip/pairs.jsonl:1: cannot tell the Korean and English fields among \['kr_sent', 'en_sent'\]"
    with pytest.raises(DataError, match=message):
        run(tmp_path, "--inputs", str(tmp_path / "outer.zip"))
    _, pairs = run(tmp_path, "--inputs", str(tmp_path / "outer.zip"), "--ko_field", "kr_sent", "--en_field", "en_sent",
                   "--validation_ratio", "0")  # Training/: no validation split
    assert [p["en"] for p in pairs["train"]] == ["The cat sleeps.", "The dog barks."]


def test_config_file_with_command_line_override(tmp_path):
    """``prepare_parallel.py CONFIG.yaml --flag value``: the file's settings (a relative input beside the
    file), then the flags after it win."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pairs.tsv").write_text(
        "ko\ten\n좋은 문장입니다.\tThis is a good sentence.\n짧다\tThis English side is far, far longer.\n",
        encoding="utf-8")
    config = tmp_path / "conf" / "parallel.yaml"
    config.write_text(f"inputs: [pairs.tsv]\nvalidation_ratio: 0.0\nmax_length_ratio: 3.0\n"
                      f"output_dir: {tmp_path / 'from_config'}\n", encoding="utf-8")
    report = prepare_parallel.main([str(config), "--output_dir", str(tmp_path / "out")])
    assert report["totals"]["removed"] == {"length_ratio": 1}
    assert report["arguments"]["inputs"] == [str(tmp_path / "conf" / "pairs.tsv")]
    assert (tmp_path / "out" / "train.jsonl").is_file() and not (tmp_path / "from_config").exists()
    report, pairs = run(tmp_path, str(config), "--max_length_ratio", "0", out="override")
    assert report["arguments"]["max_length_ratio"] == 0 and report["arguments"]["validation_ratio"] == 0
    assert [p["ko"] for p in pairs["train"]] == ["좋은 문장입니다.", "짧다"] and pairs["validation"] == []


# ---------------------------------------------------------------------------------- processing


def test_each_filter_counts_its_pairs(tmp_path):
    rows = [
        ("좋은 문장입니다.", "This is a good sentence."),        # kept
        ("좋은 문장입니다.", "This is a good sentence."),        # duplicate
        ("", "Empty Korean."),                                   # empty_side
        ("가" * 50, "Too long."),                               # too_long (--max_chars 40)
        ("Same text", "same text"),                             # identical_sides
        ("No Hangul here", "No Hangul here either"),            # ko_without_hangul
        ("한국어 문장", "영어 자리에 한국어 문장"),                # en_mostly_hangul
        ("짧다", "This English side is far, far longer."),      # length_ratio
        ("\u1100\u1161\u11a8 \u200b 문장\u3000\u3000입니다  ", "NFC  and\u00a0spaces "),  # kept, cleaned
    ]
    path = tmp_path / "pairs.tsv"
    path.write_text("ko\ten\n" + "".join(f"{k}\t{e}\n" for k, e in rows) + "only one column\n", encoding="utf-8")
    report, pairs = run(tmp_path, "--inputs", str(path), "--validation_ratio", "0", "--max_chars", "40")
    assert report["totals"]["removed"] == {"malformed_row": 1, "empty_side": 1, "too_long": 1, "identical_sides": 1,
                                           "ko_without_hangul": 1, "en_mostly_hangul": 1, "length_ratio": 1,
                                           "duplicate": 1}
    assert [(p["ko"], p["en"]) for p in pairs["train"]] == [("좋은 문장입니다.", "This is a good sentence."),
                                                            ("각 문장 입니다", "NFC and spaces")]
    assert report["sources"]["pairs"]["examples"]["malformed_row"] == [f"{path}:11"]


def test_clean_text():
    assert clean_text("\ufeff a\u200b\tb\x07  \n c\u3000") == "a b c"
    assert clean_text(unicodedata.normalize("NFD", "한국어")) == "한국어"
    assert clean_text(" para one \r\n\n  two\u2028three ", keep_newlines=True) == "para one\ntwo\nthree"


def make_pairs(n, seed):
    rng = random.Random(seed)
    return [{"ko": f"문장 번호 {i} 입니다 {rng.random():.6f}",
             "en": f"Sentence number {i} here {rng.random():.6f}"} for i in range(n)]


def test_split_is_stable_when_order_changes_or_data_is_added(tmp_path):
    a, b = make_pairs(1500, 0), make_pairs(700, 1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in a),
                                            encoding="utf-8")
    shuffled = a[:]
    random.Random(5).shuffle(shuffled)
    (tmp_path / "b" / "x.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in b + shuffled),
                                            encoding="utf-8")
    _, first = run(tmp_path, "--inputs", str(tmp_path / "a"), "--validation_ratio", "0.2", out="o1")
    _, second = run(tmp_path, "--inputs", str(tmp_path / "b"), "--validation_ratio", "0.2", out="o2")
    side1 = {(p["ko"], p["en"]): s for s in first for p in first[s]}
    side2 = {(p["ko"], p["en"]): s for s in second for p in second[s]}
    assert len(side1) == 1500 and len(side2) == 2200
    assert all(side2[k] == s for k, s in side1.items())
    assert 0.15 < len(first["validation"]) / 1500 < 0.25


def test_validation_pairs_are_removed_from_training(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"ko": "같은 문장", "en": "same sentence"}\n'
                                          '{"ko": "다른 문장", "en": "other sentence"}\n', encoding="utf-8")
    (tmp_path / "dev.jsonl").write_text('{"ko": "같은 문장", "en": "same sentence"}\n', encoding="utf-8")
    report, pairs = run(tmp_path, "--inputs", str(tmp_path / "train.jsonl"), str(tmp_path / "dev.jsonl"))
    assert [p["ko"] for p in pairs["train"]] == ["다른 문장"]
    assert [p["ko"] for p in pairs["validation"]] == ["같은 문장"]
    assert report["sources"]["train"]["removed"] == {"in_validation": 1}


# ------------------------------------------------------------------------------------------ bad input


def test_line_aligned_files_of_different_length(tmp_path):
    (tmp_path / "c.ko").write_text("하나\n둘\n셋\n", encoding="utf-8")
    (tmp_path / "c.en").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"c.ko has 3 lines, .*c.en has 2"):
        run(tmp_path, "--ko_files", str(tmp_path / "c.ko"), "--en_files", str(tmp_path / "c.en"))
    with pytest.raises(DataError, match=r"c.ko has 3 lines, .*c.en has 2"):
        run(tmp_path, "--inputs", str(tmp_path))  # paired by name inside a folder
    assert not list((tmp_path / "out").glob(".*candidates*"))


@pytest.mark.parametrize("name, content, message", [
    ("broken.xlsx", b"PK\x03\x04 not really a workbook", r"broken.xlsx: cannot read as an xlsx workbook"),
    ("bad.json", b'{"data": [\n {"ko": "\xea\xb0\x80", "en": "a"},\n {"ko": "b" "en": "c"}\n]}',
     r"bad.json:3: not valid JSON"),
    ("bad.jsonl", b'{"ko": "\xea\xb0\x80", "en": "a"}\n{"ko": \n', r"bad.jsonl:2: not valid JSON"),
    ("cp.tsv", "ko\ten\n가\ta\n".encode() + "나다\tb\n".encode("cp949"),
     r"cp.tsv:3: not utf-8 text .*pass --encoding cp949"),
    ("fields.csv", "korean_text,english_text\n가,a\n".encode(),
     r"fields.csv:1: cannot tell the Korean and English fields among \['korean_text', 'english_text'\]"),
])
def test_bad_input_names_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        run(tmp_path, "--inputs", str(path))


def test_cp949_csv_with_encoding_flag(tmp_path):
    path = tmp_path / "cp.csv"
    path.write_bytes("원문,번역문\n안녕하세요,Hello\n".encode("cp949"))
    _, pairs = run(tmp_path, "--inputs", str(path), "--encoding", "cp949", "--validation_ratio", "0")
    assert [(p["ko"], p["en"]) for p in pairs["train"]] == [("안녕하세요", "Hello")]


@pytest.mark.parametrize("pretty", [True, False])
def test_streaming_json_matches_json_load(monkeypatch, pretty):
    """Chunks of 7 bytes: every value, key, number and multi-byte character is cut somewhere."""
    monkeypatch.setattr(sources._JsonStream, "CHUNK", 7)
    records = [{"ko": "한국어 ü 😀", "en": f"text {i}", "n": 12345.678 * i, "ok": i % 2 == 0, "x": None}
               for i in range(30)]
    shapes = [records, {"meta": {"v": [1, 2]}, "names": ["a", "b"], "data": records, "count": 30}, records[0]]
    for shape in shapes:
        text = json.dumps(shape, ensure_ascii=False, indent=2 if pretty else None)
        got = [r for r, _ in iter_json_records(io.BytesIO(text.encode()), "f.json")]
        assert got == (records if shape is not records[0] else [records[0]])
    jsonl = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    got = list(iter_json_records(io.BytesIO(jsonl.encode()), "f.json"))
    assert [r for r, _ in got] == records and got[4][1] == "f.json:5"


# ------------------------------------------------------------------------------------------ real data


def read_lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_real_parallel_sets(shared_data, tmp_path):
    """NTREX-128 (line-aligned, found by name in its folder), Tatoeba (header-less TSV + line-aligned test
    files), KorSTS+STS-B (row-aligned, 2 pairs a row), the noisy news tar.gz: every row counted, every kept
    pair is one of the originals, correctly aligned."""
    d = shared_data
    report, pairs = run(tmp_path, "--inputs", f"ntrex={d / 'ntrex128_en_ko'}", f"tatoeba={d / 'tatoeba_kor_eng'}",
                        f"korsts={d / 'korsts_stsb_en_ko'}", f"news={d / 'jungyeul_koen_news_devtest'}")
    src = report["sources"]
    assert src["ntrex"]["rows_read"] == 1997 and src["ntrex"]["layouts"] == {"line-aligned": 1}
    assert src["tatoeba"]["rows_read"] == 3798 + 2400
    assert src["tatoeba"]["layouts"] == {"line-aligned": 1, "tsv header-less columns 1/0": 1}
    assert src["korsts"]["rows_read"] == 17256 and src["korsts"]["layouts"] == {"KorSTS+STS-B": 3}
    assert src["news"]["rows_read"] == 3000
    for name, st in src.items():  # nothing unaccounted for
        assert st["rows_read"] == st["train"] + st["validation"] + sum(st["removed"].values()), name
    assert src["ntrex"]["removed"]["identical_sides"] == 1  # line 681: French left untranslated on both sides
    assert src["news"]["train"] == 0  # dev/test archives keep their split
    print("\nper-filter removals:", json.dumps({n: s["removed"] for n, s in src.items()}))

    ntrex = {}
    for ko, en in zip(read_lines(d / "ntrex128_en_ko/newstest2019-ref.kor.txt"),
                      read_lines(d / "ntrex128_en_ko/newstest2019-src.eng.txt")):
        ntrex.setdefault(clean_text(ko), set()).add(clean_text(en))
    tatoeba = {}
    for line in read_lines(d / "tatoeba_kor_eng/kor.txt"):
        en, ko, _ = line.split("\t")
        tatoeba.setdefault(clean_text(ko), set()).add(clean_text(en))
    for ko, en in zip(read_lines(d / "tatoeba_kor_eng/tatoeba-test-v2021-08-07.kor"),
                      read_lines(d / "tatoeba_kor_eng/tatoeba-test-v2021-08-07.eng")):
        tatoeba.setdefault(clean_text(ko), set()).add(clean_text(en))
    sts = {}
    for split in ("train", "dev", "test"):
        ko_rows = read_lines(d / f"korsts_stsb_en_ko/ko/sts-{split}.tsv")[1:]
        en_rows = read_lines(d / f"korsts_stsb_en_ko/en/sts-{split}.csv")
        for k, e in zip(ko_rows, en_rows):
            k, e = k.split("\t"), e.split("\t")
            for c in (5, 6):
                sts.setdefault(clean_text(k[c]), set()).add(clean_text(e[c]))
    checked = 0
    for p in all_pairs(pairs):
        if p["source"] == "ntrex":
            assert p["en"] in ntrex[p["ko"]]
        elif p["source"] == "tatoeba":
            assert p["en"] in tatoeba[p["ko"]]
        elif p["source"] == "korsts":
            assert p["en"] in sts[p["ko"]]
        else:
            continue
        checked += 1
    assert checked > 20000


# ------------------------------------------------------------------------------ degenerate results


def write_jsonl(path, pairs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")


def test_input_without_pairs_is_an_error_naming_it(tmp_path):
    good = tmp_path / "good.tsv"
    good.write_text("ko\ten\n좋은 문장입니다.\tThis is a good sentence.\n", encoding="utf-8")
    with zipfile.ZipFile(tmp_path / "docs.zip", "w") as zf:  # an archive of something else
        zf.writestr("README.txt", "About this corpus.\n")
        zf.writestr("LICENSE", "CC BY 4.0\n")
    with pytest.raises(DataError, match=r"docs.zip: no parallel pairs: none of its 2 file\(s\) is recognised .*"
                                        r"README.txt.*--ko_files"):
        run(tmp_path, "--inputs", str(good), str(tmp_path / "docs.zip"), "--validation_ratio", "0")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no parallel pairs: no files in it"):
        run(tmp_path, "--inputs", str(good), str(tmp_path / "empty"), "--validation_ratio", "0")
    (tmp_path / "header_only.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"header_only.jsonl: no parallel pairs: the 1 file\(s\) recognised "
                                        r"\(jsonl \(empty\)\) hold no rows"):
        run(tmp_path, "--inputs", str(tmp_path / "header_only.jsonl"), "--validation_ratio", "0")
    same = tmp_path / "same.tsv"
    same.write_text("ko\ten\nSame text\tsame text\nNo Hangul\tNo Hangul at all\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"same.tsv: no parallel pairs kept: all 2 rows read were removed by the "
                                        r"filters \((identical_sides=1, ko_without_hangul=1|ko_without_hangul=1, "
                                        r"identical_sides=1)\)"):
        run(tmp_path, "--inputs", str(good), str(same), "--validation_ratio", "0")
    assert not (tmp_path / "out" / "train.jsonl").exists()
    # an input whose files are copies of files already read adds nothing, and that is not an error
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "good.tsv").write_bytes(good.read_bytes())
    report, pairs = run(tmp_path, "--inputs", str(good), str(tmp_path / "copy"), "--validation_ratio", "0")
    assert len(pairs["train"]) == 1 and len(report["duplicate_files"]) == 1


def test_empty_validation_split_is_an_error_with_the_numbers_and_the_flag(tmp_path):
    pairs = make_pairs(50, 0)
    threshold = round(0.01 * 1_000_000)
    assert all(prepare_parallel.pair_hash(clean_text(p["ko"]), clean_text(p["en"]))[1] >= threshold for p in pairs)
    write_jsonl(tmp_path / "small.jsonl", pairs)
    message = (r"the validation split is empty: 50 pairs kept, all in train; 50 of them split by hash with "
               r"--validation_ratio 0.01 \(about 0.5 expected in validation\)\. To get a validation split, raise "
               r"--validation_ratio \(e.g. --validation_ratio 0.4: about 20 of these 50 pairs\).*--validation_ratio 0")
    with pytest.raises(DataError, match=message):
        run(tmp_path, "--inputs", str(tmp_path / "small.jsonl"))
    assert not (tmp_path / "out" / "validation.jsonl").exists() and not list((tmp_path / "out").glob(".*"))
    report, got = run(tmp_path, "--inputs", str(tmp_path / "small.jsonl"), "--validation_ratio", "0.4")
    assert len(got["validation"]) > 10 and report["totals"]["validation"] == len(got["validation"])
    _, got = run(tmp_path, "--inputs", str(tmp_path / "small.jsonl"), "--validation_ratio", "0")  # on purpose
    assert len(got["train"]) == 50 and got["validation"] == []
    # files named as training: the hash does not split them
    write_jsonl(tmp_path / "Training" / "big.jsonl", make_pairs(3000, 1))
    with pytest.raises(DataError, match=r"3000 pairs kept, all in train; 3000 from files whose path names them as "
                                        r"training \(e.g. .*Training/big.jsonl\).*--split_from_names false"):
        run(tmp_path, "--inputs", str(tmp_path / "Training"))
    _, got = run(tmp_path, "--inputs", str(tmp_path / "Training"), "--split_from_names", "false")
    assert 10 < len(got["validation"]) < 60


def test_stats_count_repeated_sides_per_split(tmp_path):
    train = [("하나", "one"), ("하나", "uno"), ("둘", "one"), ("하나", "one"), ("셋", "three"), ("넷", "four")]
    valid = [("다섯", "five"), ("다섯", "cinq"), ("다섯", "fünf"), ("여섯", "five"), ("다섯", "five")]
    write_jsonl(tmp_path / "train.jsonl", [{"ko": k, "en": e} for k, e in train])
    write_jsonl(tmp_path / "dev.jsonl", [{"ko": k, "en": e} for k, e in valid])
    report, pairs = run(tmp_path, "--inputs", str(tmp_path / "train.jsonl"), str(tmp_path / "dev.jsonl"))
    assert report["repeats"] == {
        "train": {"pairs": 5, "ko": 1, "en": 1, "pair": 0, "pair_removed": 1},
        "validation": {"pairs": 4, "ko": 2, "en": 1, "pair": 0, "pair_removed": 1},
    }
    assert len(pairs["train"]) == 5 and len(pairs["validation"]) == 4
    saved = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert saved["repeats"] == report["repeats"]


def test_line_aligned_files_given_as_inputs_get_a_hint(tmp_path):
    (tmp_path / "a.ko").write_text("하나\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("one\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a.ko: not recognised as parallel data .*--ko_files KO_FILE "
                                        r"--en_files EN_FILE"):
        run(tmp_path, "--inputs", str(tmp_path / "a.ko"), str(tmp_path / "a.en"))
    _, pairs = run(tmp_path, "--ko_files", str(tmp_path / "a.ko"), "--en_files", str(tmp_path / "a.en"),
                   "--validation_ratio", "0")
    assert [(p["ko"], p["en"]) for p in pairs["train"]] == [("하나", "one")]


def test_min_chars_applies_to_both_sides():
    """--min_chars removes a pair whose English side (not only its Korean side) is too short."""
    args = prepare_parallel.Arguments(min_chars=3)
    assert prepare_parallel.pair_filter("안녕하세요", "hi", args) == "too_short"
    assert prepare_parallel.pair_filter("안녕", "hello", args) == "too_short"
    assert prepare_parallel.pair_filter("안녕하세요", "hello", args) is None
