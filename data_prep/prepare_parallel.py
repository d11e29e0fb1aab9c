"""Korean-English parallel corpora (AI-Hub downloads, line-aligned files, TSV/CSV/JSON) -> parallel JSONL.

Writes ``OUTPUT_DIR/train.jsonl`` and ``OUTPUT_DIR/validation.jsonl`` (one ``{"ko", "en", "source"}`` a
line, NFC) and ``OUTPUT_DIR/stats.json`` (pairs read and kept per source and per source and split, pairs
removed per filter with the first locations, the split of every file and why, files skipped per reason),
and prints a summary.

Usage (from the repository root):
    python -m data_prep.prepare_parallel --inputs ~/aihub/한국어-영어_번역_말뭉치 ~/aihub/기술과학.zip \\
        --output_dir runs/data/parallel
    python -m data_prep.prepare_parallel --inputs ntrex=../shared/data/ntrex128_en_ko \\
        tatoeba=../shared/data/tatoeba_kor_eng/kor.txt --output_dir runs/data/parallel
    python -m data_prep.prepare_parallel --ko_files a.ko --en_files a.en --output_dir runs/data/parallel
    python -m data_prep.prepare_parallel --inputs corpus.jsonl --ko_field korean_text --en_field english_text ...
    python -m data_prep.prepare_parallel --inputs ~/aihub/방송콘텐츠 \\
        --ko_field 원문 src.text --en_field 최종번역문 tgt.text --output_dir runs/data/broadcast
    python -m data_prep.prepare_parallel parallel.yaml --output_dir runs/data/parallel2  # a config file + overrides

Bad input (a file that cannot be read, an input without any parallel pair, an empty validation split
that was asked for) ends the run with one line, ``prepare_parallel.py: error: ...`` naming the file and
line where there is one, and exit status 2 (``KOEN_ALIGN_DEBUG=1`` shows the traceback).

``--inputs`` takes files, folders, zip and tar archives in any mix (``NAME=PATH`` names the source;
default: the input's name without extension). Inside, each file is recognised by its content:
- xlsx (한국어-영어 번역(병렬) 말뭉치): every sheet, header row, ``원문`` Korean, ``번역문`` English;
- CSV / TSV with a header, JSON (a list of records, ``{"data": [...]}``, or one record per file), JSONL.
  Fields: ``ko``/``en`` (기술과학, 사회과학: ``mt``, the machine draft, is never used),
  ``한국어``/``영어`` (전문분야), ``원문``/``최종번역문`` (방송콘텐츠: ``원문`` is English in
  ``enko``/``영한`` sets, named by a path component, or when only the translation holds Hangul),
  ``korean``/``english``, ``kor``/``eng``;
  ``--ko_field``/``--en_field`` override the detection, for a layout it does not know: names paired by
  position, several pairs allowed (a file is read with the first pair it has), ``a.b`` for a nested JSON
  field, column numbers for header-less TSV; in a config file, ``ko_field: [...]`` / ``en_field: [...]``.
  A record whose Korean field holds no Hangul while its English one does is read the other way round
  (``영한`` sets, where ``원문`` is English);
- two line-aligned text files named alike but for a language token (``x.ko``/``x.en``,
  ``x-src.eng.txt``/``x-ref.kor.txt``); their line counts must match;
- header-less TSV with a Korean and an English column (Tatoeba ``kor.txt``: English, Korean, attribution);
- KorSTS (``ko/sts-*.tsv``) with the STS-B originals (``en/sts-*.csv``): row-aligned, 2 pairs a row.
Zip members with cp949 names (no UTF-8 flag) are decoded right; nested zips are read in place; tar
archives are unpacked to a temporary folder. Byte-identical files (AI-Hub's label and source copies)
are read once. Files that are none of the above (README, licences, .labels, ...) are skipped
(``not_parallel_data``); so are, in a folder or archive, files with the Korean or the English field of
a layout but not the other (``one_language``: AI-Hub's 원천데이터, e.g. a CSV of ``sn, ko``; an error
when the file is named on its own), and the parts of a split download beside their merged file
(``part_of_merged_file``): stats.json's ``skipped`` counts them per reason, ``skipped_files`` lists
them (the first 1000 of each reason). Parts without their merged file (``x.zip.part0``, ``.part1``,
...) stop the run with the ``cat`` command that merges them, parts in order. An unreadable file or
unrecognised fields in a .xlsx/.csv/.json/.jsonl stop the run with the file, the line or row, and the
fields found (``--exclude`` leaves files out). An input
that yields no pair (no file recognised, no rows, or every row removed by the filters) stops the run
with its name and the counts; an input whose files are all byte-identical copies of files already
read is not an error (listed under ``duplicate_files``).

Processing: NFC, control and invisible characters removed, whitespace collapsed; then, in this order,
a pair is removed (and counted) for: a missing field (``malformed_row``), an empty side
(``empty_side``), a side outside ``--min_chars``..``--max_chars`` characters (``too_short``,
``too_long``), identical sides (``identical_sides``), a Korean side without Hangul
(``ko_without_hangul``), an English side whose letters are mostly Hangul (``en_mostly_hangul``),
UTF-8 byte lengths more than ``--max_length_ratio`` apart (``length_ratio``; Hangul is 3 bytes a
syllable, so byte lengths of a good pair are close: median en/ko 0.78 on NTREX). Exact duplicate pairs
are then removed (``duplicate``), and a training pair that also occurs in validation is removed from
training (``in_validation``).

Split: a file whose path names its split keeps it, the innermost name that names one split deciding:
AI-Hub's markers ``TL1``/``TL2``/``TS1``/``TL_`` (training labels, source) -> train and
``VL1``/``VS1``/``VL_`` -> validation, in an archive or folder name (``TL1.zip`` of items named
``00001.json``); the words train/training/훈련/학습 (``1.Training``, ``학습데이터``) and
valid/validation/val/dev/test/검증 (``2.Validation``, ``검증데이터``) in a folder, archive or file name.
Otherwise a hash of the cleaned pair decides (``--validation_ratio``), so reruns, reordered inputs and
added data keep every pair on the same side. stats.json's ``splits`` says, per file, the split and why
(``by``: ``marker``, ``folder``, ``file name`` or ``hash``) with the pairs it gave (before duplicate
removal); files that share the deciding folder or archive share its entry (a ``VL1.zip`` of 100,000
one-item files is one entry).
With ``--validation_ratio`` above 0, a run whose validation split comes out empty (too few pairs for
the ratio, or only files named as training) is an error that gives the numbers; ``--validation_ratio
0`` writes training pairs only (and an empty validation.jsonl) on purpose.

Repeated sides: stats.json's ``repeats`` gives, per split, over the pairs written, how many repeat a
Korean side (``ko``), an English side (``en``) or the whole pair (``pair``) already seen in that split:
the count of rows whose side was seen before, so ``pairs - ko`` distinct Korean sides. Two pairs that
share a side are false negatives of each other when they meet in one in-batch contrastive batch.
``pair`` is 0 (exact duplicates are removed; ``pair_removed`` says how many). Per source, each
``sources.NAME.splits.{train,validation}`` gives ``kept``, ``removed`` per filter (a removed pair of a
hash-split file counts in the split its hash gives) and ``repeats`` within the source.

Order: train.jsonl in reading order; validation.jsonl in the order of the pairs' hashes, so that the
sources are interleaved and any first N lines sample all of them (a fixed shuffle: the same on every
run, and each pair keeps its place relative to the others when data is added).

Speed and memory: JSON is read as a stream at about the cost of ``json.load`` (line numbers are counted
once over the text, not once a record); ``python -m bench.bench_prepare_parallel`` times the whole run
against a bare ``json.load`` + JSONL write. Memory: one record at a time plus 8 bytes a kept pair and
8 a validation pair (the duplicate check runs on 64-bit hashes in a second pass over temporary files;
the repeated-side counts add 16 bytes a pair of the split being written); xlsx files are read in
read-only mode.
"""

import csv
import hashlib
import json
import os
import re
import shlex
import sys
import time
from array import array
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from itertools import chain, groupby, islice
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from common.args import parse_arguments
from common.cli import run_main
from common.data import DataError, parse_json_line
from data_prep.sources import (
    Entry,
    clean_text,
    digest_entry,
    hangul_share,
    has_hangul,
    iter_entries,
    iter_json_records,
    iter_lines,
    lower_ext,
    name_tokens,
    part_path,
    split_of,
)

csv.field_size_limit(1 << 30)


@dataclass
class Arguments:
    inputs: list[str] = field(default_factory=list, metadata={
        "help": "Files, folders, zip or tar archives, any mix. NAME=PATH sets the 'source' of its pairs (default: "
                "the input's name without extension)."})
    output_dir: str = field(default="runs/data/parallel", metadata={
        "help": "Where train.jsonl, validation.jsonl and stats.json are written."})
    ko_files: list[str] = field(default_factory=list, metadata={
        "help": "Line-aligned Korean text files (NAME=PATH allowed), paired by position with --en_files."})
    en_files: list[str] = field(default_factory=list, metadata={
        "help": "Line-aligned English text files, paired by position with --ko_files."})
    ko_field: list[str] = field(default_factory=list, metadata={
        "help": "Name(s) of the Korean field/column, paired by position with --en_field; overrides the layout "
                "detection. Several names: the first pair a file has is read. 'a.b' reads a nested JSON field; "
                "for header-less TSV: the column's 0-based number."})
    en_field: list[str] = field(default_factory=list, metadata={
        "help": "Name(s) of the English field/column, paired by position with --ko_field."})
    exclude: list[str] = field(default_factory=list, metadata={
        "help": "Glob patterns (fnmatch on the file's full name, archive path included) of files to leave out."})
    encoding: str = field(default="utf-8", metadata={
        "help": "Text encoding of text, CSV and JSON files (e.g. cp949 for some AI-Hub CSVs)."})
    validation_ratio: float = field(default=0.01, metadata={
        "help": "Share of the pairs of corpora without their own split that go to validation (decided by a hash "
                "of the pair)."})
    split_from_names: bool = field(default=True, metadata={
        "help": "Keep a corpus's own split when a path component names it (AI-Hub TL1/TS1/VL1/VS1 markers, "
                "Training/Validation/학습/검증 folders, train/valid/dev/test in a name); false: the hash decides "
                "for everything."})
    min_chars: int = field(default=1, metadata={
        "help": "Remove pairs with a side shorter than this many characters (after cleaning)."})
    max_chars: int = field(default=1000, metadata={
        "help": "Remove pairs with a side longer than this many characters."})
    max_length_ratio: float = field(default=3.0, metadata={
        "help": "Remove pairs whose sides' UTF-8 byte lengths differ by more than this factor; 0 turns the filter "
                "off."})
    ratio_min_bytes: int = field(default=30, metadata={
        "help": "Apply --max_length_ratio only when the longer side has at least this many UTF-8 bytes (short "
                "pairs vary a lot)."})
    max_en_hangul_share: float = field(default=0.5, metadata={
        "help": "Remove pairs whose English side has more than this share of Hangul among its letters."})


FILTERS = ("malformed_row", "empty_side", "too_short", "too_long", "identical_sides", "ko_without_hangul",
           "en_mostly_hangul", "length_ratio", "duplicate", "in_validation")
KNOWN_FIELDS = [("ko", "en"), ("한국어", "영어"), ("원문", "번역문"), ("원문", "최종번역문"),
                ("korean", "english"), ("kor", "eng"), ("ko_text", "en_text")]
KO_TOKENS, EN_TOKENS = {"ko", "kor", "kr", "korean"}, {"en", "eng", "english"}
ROLE_TOKENS = {"src", "ref", "source", "target", "tgt", "reference"}
STS_HEADER = ["genre", "filename", "year", "id", "score", "sentence1", "sentence2"]
DATA_EXTS = {".xlsx", ".xlsm", ".csv", ".json", ".jsonl"}
MAX_EXAMPLES = 3
LOOK_AHEAD = 100  # records read to tell a one-language JSON file from one whose first record lacks a side


# ------------------------------------------------------------------------------------------- detection


def path_direction(parts: tuple[str, ...]) -> str | None:
    """'enko' / 'koen' when a path component says which way a 원문/최종번역문 set was translated."""
    tokens = {t for p in parts for t in name_tokens(p)}
    if tokens & {"enko", "영한"}:
        return "enko"
    if tokens & {"koen", "한영"}:
        return "koen"
    return None


class OneLanguage(DataError):
    """A file with the Korean or the English field of a layout but not the other (AI-Hub's 원천데이터,
    source text without its translation): skipped and counted in a whole tree, an error when named."""


_MISSING = object()


def lookup(record: dict, name: str, default=None):
    """``record[name]``, or for a dotted name absent as such, the nested field (``translation.ko``)."""
    if name in record:
        return record[name]
    if "." not in name:
        return default
    value = record
    for key in name.split("."):
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def detect_fields(fields: list[str], where: str, args: Arguments, parts: tuple[str, ...],
                  record: dict | None = None) -> tuple[str, str, str, str]:
    """(ko key, en key, direction, layout name) for records with these fields (``record``: the first
    record, where nested ``a.b`` names are looked up). direction: 'koen' (as named), 'enko' (swap), or
    'auto' (swap a record when only the en field holds Hangul). A file with one side of a layout only
    raises ``OneLanguage``."""
    if args.ko_field:
        def present(name):
            return name in fields or (record is not None and lookup(record, name, _MISSING) is not _MISSING)

        pairs = list(zip(args.ko_field, args.en_field))
        for ko, en in pairs:
            if present(ko) and present(en):
                # 'auto': a record whose Korean field has no Hangul while its English field does is read the
                # other way round (the 영한 sets of a 원문/최종번역문 layout); such a pair was lost otherwise
                return ko, en, "auto", f"{ko}/{en}"
        for ko, en in pairs:
            if present(ko) != present(en):
                raise one_language(where, fields, (ko, en), ko if present(ko) else en, "--ko_field/--en_field")
        names = " ".join(f"--ko_field {ko} --en_field {en}" for ko, en in pairs)
        raise DataError(f"{where}: {names}: not found among the fields {fields}")
    by_lower = {f.strip().lower(): f for f in fields if isinstance(f, str)}
    for ko, en in KNOWN_FIELDS:
        if ko in by_lower and en in by_lower:
            direction = "koen"
            if (ko, en) == ("원문", "최종번역문"):
                direction = path_direction(parts) or "auto"
            return by_lower[ko], by_lower[en], direction, f"{ko}/{en}"
    for ko, en in KNOWN_FIELDS:
        if (ko in by_lower) != (en in by_lower):
            raise one_language(where, fields, (ko, en), by_lower.get(ko) or by_lower[en], "the layout detection")
    raise DataError(f"{where}: cannot tell the Korean and English fields among {fields}; "
                    "pass --ko_field and --en_field")


def one_language(where: str, fields: list, layout: tuple[str, str], found: str, by: str) -> OneLanguage:
    lang = "Korean" if found == layout[0] else "English"
    missing = layout[1] if found == layout[0] else layout[0]
    return OneLanguage(f"{where}: one language only: the {lang} field {found!r} of the {layout[0]}/{layout[1]} "
                       f"layout ({by}) without {missing!r} (fields: {fields}); not parallel data (AI-Hub's "
                       "원천데이터 hold the source text alone: pass the 라벨링데이터, or the whole tree, where "
                       "such files are skipped); other field names: --ko_field and --en_field")


def oriented(ko, en, direction: str):
    if direction == "enko" or (direction == "auto" and isinstance(ko, str) and isinstance(en, str)
                               and not has_hangul(ko) and has_hangul(en)):
        return en, ko
    return ko, en


def as_text(value) -> str | None:
    """Cell/field value as text: None stays None (a missing field), numbers become strings."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return None


def language_key(entry: Entry) -> tuple[str, tuple] | None:
    """('ko'|'en', key) when the file name carries a language token as its last part (before .txt):
    files with the same key and opposite languages are line-aligned pairs."""
    tokens = [t for t in entry.basename.lower().replace("-", ".").replace("_", ".").split(".") if t]
    if len(tokens) < 2:
        return None
    i = len(tokens) - 2 if tokens[-1] == "txt" else len(tokens) - 1
    lang = "ko" if tokens[i] in KO_TOKENS else "en" if tokens[i] in EN_TOKENS else None
    if lang is None:
        return None
    rest = tuple(t for j, t in enumerate(tokens) if j != i and t not in ROLE_TOKENS)
    return lang, (entry.parts[:-1], rest)


def aligned_hint(entry: Entry | None) -> str:
    """For an unrecognised file: how line-aligned text files are given (a pair, not one --inputs each)."""
    lang = language_key(entry) if entry is not None else None
    other = "--en_files" if lang and lang[0] == "ko" else "--ko_files"
    if lang:
        return (f"; a line-aligned {'Korean' if lang[0] == 'ko' else 'English'} file is read with its partner: "
                f"pass them as --ko_files KO_FILE --en_files EN_FILE (here {other} for the other side), or pass "
                "their folder as --inputs (files named alike but for ko/en are paired)")
    return ("; line-aligned text files go as --ko_files KO_FILE --en_files EN_FILE (or their folder as --inputs, "
            "named alike but for ko/en)")


def first_line(entry: Entry, encoding: str) -> str:
    with entry.open() as f:
        for _, line in iter_lines(f, entry.name, encoding):
            return line.rstrip("\r\n")
    return ""


# --------------------------------------------------------------------------------------------- readers
# Each reader yields (ko, en, where); ko or en is None when the record lacks the field (counted as
# malformed_row). ``layout`` describes what was recognised, for stats.json.


def read_line_aligned(ko: Entry, en: Entry, encoding: str) -> Iterator[tuple]:
    with ko.open() as fk, en.open() as fe:
        lines_ko, lines_en = iter_lines(fk, ko.name, encoding), iter_lines(fe, en.name, encoding)
        n = 0
        for n, line_ko in lines_ko:
            nxt = next(lines_en, None)
            if nxt is None:
                ko_lines = n + sum(1 for _ in lines_ko)
                raise DataError(f"line-aligned files differ in length: {ko.name} has {ko_lines} lines, "
                                f"{en.name} has {n - 1}")
            yield line_ko, nxt[1], f"{ko.name}:{n}"
        rest = sum(1 for _ in lines_en)
        if rest:
            raise DataError(f"line-aligned files differ in length: {ko.name} has {n} lines, {en.name} has {n + rest}")


def read_sts(ko: Entry, en: Entry, encoding: str) -> Iterator[tuple]:
    """KorSTS row i (after its header) translates STS-B row i; both sentences of a row make a pair.
    Split on TAB only: the sentences contain unbalanced quotes; STS-B rows may carry 2 extra columns."""
    with ko.open() as fk, en.open() as fe:
        lines_ko, lines_en = iter_lines(fk, ko.name, encoding), iter_lines(fe, en.name, encoding)
        next(lines_ko, None)  # header
        rows = 0
        for n, line_ko in lines_ko:
            nxt = next(lines_en, None)
            if nxt is None:
                raise DataError(f"{ko.name} has more rows than {en.name} ({en.name} ends at line {rows})")
            m, line_en = nxt
            a, b = line_ko.rstrip("\r\n").split("\t"), line_en.rstrip("\r\n").split("\t")
            if len(a) < 7 or len(b) < 7:
                yield None, None, f"{ko.name}:{n}"
                continue
            if a[:4] != b[:4]:
                raise DataError(f"{ko.name}:{n} and {en.name}:{m} are not the same STS row ({a[:4]} vs {b[:4]})")
            rows += 1
            yield a[5], b[5], f"{ko.name}:{n}"
            yield a[6], b[6], f"{ko.name}:{n}"
        if next(lines_en, None) is not None:
            raise DataError(f"{en.name} has more rows than {ko.name} ({rows} rows)")


def read_xlsx(entry: Entry, args: Arguments) -> tuple[str, Iterator[tuple]]:
    import openpyxl

    f = entry.open()
    try:
        wb = openpyxl.load_workbook(f, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises zipfile, KeyError, XML errors ... for a damaged file
        f.close()
        raise DataError(f"{entry.name}: cannot read as an xlsx workbook ({type(e).__name__}: {e})") from None
    layouts = []
    sheets = []
    try:
        for ws in wb.worksheets:
            rows = ws.iter_rows(values_only=True)
            header = next(rows, None)
            if header is None:
                continue
            names = ["" if h is None else str(h).strip() for h in header]
            where = f"{entry.name} sheet {ws.title!r} row 1"
            ko_key, en_key, direction, layout = detect_fields(names, where, args, entry.parts)
            sheets.append((ws.title, rows, names.index(ko_key), names.index(en_key), direction))
            layouts.append(layout)
    except BaseException:
        wb.close()
        f.close()
        raise

    def gen():
        try:
            for title, rows, i, j, direction in sheets:
                for r, row in enumerate(rows, start=2):
                    if all(v is None for v in row):
                        yield "", "", None  # a blank row: counted, not a pair
                        continue
                    ko = as_text(row[i]) if i < len(row) else None
                    en = as_text(row[j]) if j < len(row) else None
                    yield *oriented(ko, en, direction), f"{entry.name} sheet {title!r} row {r}"
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{entry.name}: xlsx unreadable after row {r} ({type(e).__name__}: {e})") from None
        finally:
            wb.close()
            f.close()

    return f"xlsx {'/'.join(sorted(set(layouts)))}", gen()


def read_records(entry: Entry, records: Iterator[tuple], args: Arguments, kind: str) -> tuple[str, Iterator[tuple]]:
    """JSON / JSONL records: fields detected on the first record."""
    first = next(records, None)
    if first is None:
        return f"{kind} (empty)", iter(())
    record, where = first
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected JSON objects with Korean and English fields, got {type(record).__name__}")
    try:
        ko_key, en_key, direction, layout = detect_fields(list(record), where, args, entry.parts, record)
    except OneLanguage:
        # one record without its translation is a malformed row, not a one-language file: look further
        ahead = list(islice(records, LOOK_AHEAD))
        records = chain(ahead, records)
        for rec, at in ahead:
            if isinstance(rec, dict):
                try:
                    ko_key, en_key, direction, layout = detect_fields(list(rec), at, args, entry.parts, rec)
                    break
                except DataError:
                    continue
        else:
            raise
    get = lookup if "." in ko_key + en_key else dict.get

    def gen():
        for rec, at in chain((first,), records):
            if not isinstance(rec, dict):
                yield None, None, at
                continue
            yield *oriented(as_text(get(rec, ko_key)), as_text(get(rec, en_key)), direction), at

    return f"{kind} {layout}", gen()


def iter_jsonl(entry: Entry, encoding: str) -> Iterator[tuple]:
    with entry.open() as f:
        for n, line in iter_lines(f, entry.name, encoding):
            if line.strip():
                yield parse_json_line(line, f"{entry.name}:{n}"), f"{entry.name}:{n}"


def iter_json(entry: Entry, encoding: str) -> Iterator[tuple]:
    with entry.open() as f:
        yield from iter_json_records(f, entry.name, encoding)


def read_delimited(entry: Entry, args: Arguments, header_line: str) -> tuple[str, Iterator[tuple]] | None:
    """CSV/TSV with a header naming the fields, or header-less TSV with a Korean and an English column.
    None when neither is recognised (for .tsv/.txt files met inside a folder)."""
    ext = lower_ext(entry.basename)
    tab = ext != ".csv" or ("\t" in header_line and "," not in header_line)
    delimiter = "\t" if tab else ","
    header = header_line.split("\t") if tab else next(csv.reader([header_line]))
    try:
        ko_key, en_key, direction, layout = detect_fields(header, f"{entry.name}:1", args, entry.parts)
        has_header = True
    except DataError as e:
        if not tab:
            raise
        cols = headerless_columns(entry, args)
        if cols is None:
            if ext in DATA_EXTS or isinstance(e, OneLanguage):
                raise
            return None
        (i, j), has_header, direction, layout = cols, False, "koen", f"header-less columns {cols[0]}/{cols[1]}"
    if has_header:
        i, j = header.index(ko_key), header.index(en_key)

    def gen():
        with entry.open() as f:
            lines = (line for _, line in iter_lines(f, entry.name, args.encoding))
            reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL)
            try:
                if has_header:
                    next(reader, None)
                for row in reader:
                    where = f"{entry.name}:{reader.line_num}"
                    if not row or all(not c.strip() for c in row):
                        yield "", "", None
                        continue
                    ko = row[i] if i < len(row) else None
                    en = row[j] if j < len(row) else None
                    yield *oriented(ko, en, direction), where
            except csv.Error as e:
                raise DataError(f"{entry.name}:{reader.line_num}: {e}") from None

    return f"{'tsv' if tab else 'csv'} {layout}", gen()


def headerless_columns(entry: Entry, args: Arguments, sample: int = 200) -> tuple[int, int] | None:
    """(ko column, en column) of a header-less TSV: the column mostly Hangul, and among the columns
    mostly Latin the one with the most varied starts (so Tatoeba's attribution column is not taken)."""
    if len(args.ko_field) == 1 and args.ko_field[0].isdigit() and args.en_field[0].isdigit():
        return int(args.ko_field[0]), int(args.en_field[0])
    rows = []
    with entry.open() as f:
        for n, line in iter_lines(f, entry.name, args.encoding):
            if line.strip():
                rows.append(line.rstrip("\r\n").split("\t"))
            if len(rows) >= sample:
                break
    if not rows or min(len(r) for r in rows) < 2:
        return None
    ncols = min(len(r) for r in rows)
    ko_share = [sum(hangul_share(r[c]) > 0.5 for r in rows) / len(rows) for c in range(ncols)]
    ko_col = int(np.argmax(ko_share))
    if ko_share[ko_col] < 0.8:
        return None

    def latin_share(c: int) -> float:
        return sum(any("a" <= ch.lower() <= "z" for ch in r[c]) and hangul_share(r[c]) < 0.1 for r in rows) / len(rows)

    latin = [c for c in range(ncols) if c != ko_col and latin_share(c) >= 0.8]
    if not latin:
        return None
    en_col = max(latin, key=lambda c: len({r[c][:10] for r in rows}))
    return ko_col, en_col


# ------------------------------------------------------------------------------------------------ plan


@dataclass
class Job:
    source: str
    entries: list[Entry]
    kind: str  # 'aligned', 'sts', 'file'
    direct: bool = False  # the file was named on the command line (unrecognised -> error, not skip)
    input: str = ""  # the --inputs / --ko_files+--en_files argument it comes from (named in errors)


def source_name(spec: str) -> tuple[str, str]:
    if "=" in spec and not os.path.exists(spec):
        name, path = spec.split("=", 1)
        return name, path
    base = os.path.basename(os.path.normpath(spec))
    ext = lower_ext(base)
    return (base[: -len(ext)] if ext else base), spec


def plan(args: Arguments, stack: ExitStack, stats: dict) -> list[Job]:
    """Group the files of every input into jobs: line-aligned pairs, KorSTS pairs, single files."""
    jobs = []
    if len(args.ko_files) != len(args.en_files):
        raise ValueError(f"--ko_files ({len(args.ko_files)}) and --en_files ({len(args.en_files)}) must pair up")
    for ko_spec, en_spec in zip(args.ko_files, args.en_files):
        name, ko_path = source_name(ko_spec)
        _, en_path = source_name(en_spec)
        ko, en = next(iter_entries(ko_path, stack)), next(iter_entries(en_path, stack))
        jobs.append(Job(name, [ko, en], "aligned", True, f"--ko_files {ko_spec} / --en_files {en_spec}"))
    for spec in args.inputs:
        source, path = source_name(spec)
        found = list(iter_entries(path, stack))
        entries = [e for e in found if not any(fnmatch(e.name, p) for p in args.exclude)]
        if not entries:
            why = f"all {len(found)} file(s) left out by --exclude {args.exclude}" if found else "no files in it"
            raise DataError(f"{spec}: no parallel pairs: {why}")
        entries = without_merged_parts(entries, stats)
        first_job = len(jobs)
        direct = (len(entries) == 1 and os.path.isfile(path)
                  and lower_ext(path) not in (".zip", ".tar", ".tar.gz", ".tgz"))
        used = set()
        by_key = defaultdict(dict)
        for e in entries:
            lk = language_key(e) if lower_ext(e.basename) not in DATA_EXTS else None
            if lk:
                by_key[lk[1]].setdefault(lk[0], []).append(e)
        for key, langs in by_key.items():
            if len(langs.get("ko", [])) == 1 and len(langs.get("en", [])) == 1:
                jobs.append(Job(source, [langs["ko"][0], langs["en"][0]], "aligned"))
                used.update({langs["ko"][0].name, langs["en"][0].name})
        en_by_place = {(e.parts[:-2], e.parts[-2], os.path.splitext(e.basename)[0]): e
                       for e in entries if len(e.parts) >= 2}
        for e in entries:
            if len(e.parts) >= 2 and e.parts[-2] == "ko" and lower_ext(e.basename) == ".tsv" and e.name not in used:
                partner = en_by_place.get((e.parts[:-2], "en", os.path.splitext(e.basename)[0]))
                if partner is not None and first_line(e, args.encoding).split("\t") == STS_HEADER:
                    jobs.append(Job(source, [e, partner], "sts"))
                    used.update({e.name, partner.name})
        jobs.extend(Job(source, [e], "file", direct) for e in entries if e.name not in used)
        for job in jobs[first_job:]:
            job.input = spec
    # byte-identical files (or pairs of files) are read once
    seen = {}
    unique = []
    for job in jobs:
        key = tuple(digest_entry(e) for e in job.entries)
        if key in seen:
            stats["duplicate_files"][" + ".join(e.name for e in job.entries)] = f"same bytes as {seen[key]}"
            stats["duplicates_by_input"][job.input] += 1
            continue
        seen[key] = " + ".join(e.name for e in job.entries)
        unique.append(job)
    return unique


_PART = re.compile(r"(.+)\.part(\d+)", re.IGNORECASE)


def without_merged_parts(entries: list[Entry], stats: dict) -> list[Entry]:
    """The entries without the parts of a split download (``x.zip.part0``, ``x.zip.part1``, ...). Parts
    beside their merged file (``x.zip``) are skipped (counted); parts without it stop the run with the
    command that merges them: a part alone is no readable file, and reading the parts' data as
    separate files (or skipping them) would lose the corpus without a word."""
    groups = defaultdict(list)
    for e in entries:
        if m := _PART.fullmatch(e.name):
            groups[m.group(1)].append((int(m.group(2)), e))
    if not groups:
        return entries
    names = {e.name for e in entries}
    for base, found in groups.items():
        if base in names or os.path.exists(base) or any(n.startswith(base + "/") for n in names):
            for _, e in found:
                note_skip(stats, e.name, "part_of_merged_file", f"a part of {base}, which is read instead")
            continue
        folder = os.path.dirname(base)
        parts = {n: e.name for n, e in found}
        if found[0][1].path is not None and os.path.isdir(folder):  # a part named alone: its siblings too
            for f in os.listdir(folder):
                if (m := _PART.fullmatch(os.path.join(folder, f))) and m.group(1) == base:
                    parts.setdefault(int(m.group(2)), os.path.join(folder, f))
        numbers = sorted(parts)
        missing = sorted(set(range(min(numbers[0], 1), numbers[-1] + 1)) - set(numbers))
        gap = (f"; part(s) {', '.join(map(str, missing))} missing: download them first" if missing else "")
        merge = " ".join(shlex.quote(parts[n]) for n in numbers)
        raise DataError(f"{found[0][1].name}: one part of a download split into {len(parts)} part(s) "
                        f"({', '.join(os.path.basename(parts[n]) for n in numbers)}){gap}; merge them, in this "
                        f"order, into one file and pass that: cat {merge} > {shlex.quote(base)}")
    return [e for e in entries if not _PART.fullmatch(e.name)]


def open_job(job: Job, args: Arguments) -> tuple[str, Iterator[tuple]] | None:
    """(layout, rows) for a job, or None when the file is not parallel data (skipped, reported)."""
    if job.kind == "aligned":
        return "line-aligned", read_line_aligned(*job.entries, args.encoding)
    if job.kind == "sts":
        return "KorSTS+STS-B", read_sts(*job.entries, args.encoding)
    entry = job.entries[0]
    ext = lower_ext(entry.basename)
    if ext in (".xlsx", ".xlsm"):
        return read_xlsx(entry, args)
    if ext == ".jsonl":
        return read_records(entry, iter_jsonl(entry, args.encoding), args, "jsonl")
    if ext == ".json":
        return read_records(entry, iter_json(entry, args.encoding), args, "json")
    if ext in (".csv", ".tsv", ".txt", ""):
        line = first_line(entry, args.encoding)
        if ext == ".csv" or "\t" in line:
            return read_delimited(entry, args, line)
    return None


# ----------------------------------------------------------------------------------------- processing


def pair_filter(ko: str, en: str, args: Arguments) -> str | None:
    """The first filter that removes the (cleaned) pair, or None to keep it."""
    if not ko or not en:
        return "empty_side"
    if min(len(ko), len(en)) < args.min_chars:
        return "too_short"
    if max(len(ko), len(en)) > args.max_chars:
        return "too_long"
    if ko.casefold() == en.casefold():
        return "identical_sides"
    if not has_hangul(ko):
        return "ko_without_hangul"
    if hangul_share(en) > args.max_en_hangul_share:
        return "en_mostly_hangul"
    if args.max_length_ratio > 0:
        bk, be = len(ko.encode()), len(en.encode())
        if max(bk, be) >= args.ratio_min_bytes and max(bk, be) > args.max_length_ratio * min(bk, be):
            return "length_ratio"
    return None


def pair_hash(ko: str, en: str) -> tuple[int, int]:
    """(identity hash, split number in [0, 1e6)) of a cleaned pair: the same pair always gets the same."""
    d = hashlib.blake2b(f"{ko}\x00{en}".encode(), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little") % 1_000_000


def first_occurrences(hashes: np.ndarray) -> np.ndarray:
    keep = np.zeros(len(hashes), dtype=bool)
    keep[np.unique(hashes, return_index=True)[1]] = True
    return keep


def check_no_pairs(spec: str, tally: dict) -> None:
    """An input that yields no pair is a mistake (a wrong folder, an archive of something else, a filter
    setting that removes everything): stop with its name and what was found in it."""
    if tally["kept"]:
        return
    if tally["rows_read"]:
        removed = ", ".join(f"{k}={v}" for k, v in sorted(tally["removed"].items(), key=lambda kv: -kv[1]))
        raise DataError(f"{spec}: no parallel pairs kept: all {tally['rows_read']} rows read were removed by the "
                        f"filters ({removed}); see --min_chars, --max_chars, --max_length_ratio, "
                        "--max_en_hangul_share and the field detection (--ko_field/--en_field)")
    if tally["read"]:
        raise DataError(f"{spec}: no parallel pairs: the {tally['read']} file(s) recognised "
                        f"({', '.join(sorted(tally['layouts']))}) hold no rows")
    skipped, examples = tally["skipped"], tally["skipped_examples"]
    n = sum(skipped.values())
    why = ""
    if skipped.get("one_language"):
        why = (f"; {skipped['one_language']} of them hold one language only (AI-Hub's 원천데이터?), e.g. "
               f"{examples['one_language']}")
    raise DataError(f"{spec}: no parallel pairs: none of its {n} file(s) is recognised as parallel data "
                    f"(e.g. {', '.join(tally['skipped_names'])}){why}{aligned_hint(None)}")


def check_validation_split(args: Arguments, split_by: dict, cand: "Candidates") -> None:
    """An empty validation split, when one was asked for (``--validation_ratio`` > 0), is an error, not
    a warning: the trainers refuse an empty --validation_file ("no pairs") only when a training run
    starts, possibly long after this run's summary scrolled away, and a model picked without validation
    numbers is worse than a rerun of this script with one flag changed. The cases are small or
    training-only inputs, where the message gives the flag; ``--validation_ratio 0`` says that no
    validation split is wanted (validation.jsonl is then written empty on purpose)."""
    if args.validation_ratio == 0 or len(cand.hashes["validation"]) or not len(cand.hashes["train"]):
        return
    kept = len(cand.hashes["train"])
    hashed, named = split_by["hash"], split_by["named_train"]
    parts = [f"the validation split is empty: {kept} pairs kept, all in train"]
    fixes = []
    if hashed:
        expected = hashed * args.validation_ratio
        parts.append(f"{hashed} of them split by hash with --validation_ratio {args.validation_ratio} "
                     f"(about {expected:.2g} expected in validation)")
        suggest = min(0.5, max(0.05, round(20 / hashed, 2)))
        fixes.append(f"raise --validation_ratio (e.g. --validation_ratio {suggest}: about "
                     f"{round(suggest * hashed)} of these {hashed} pairs)")
    if named:
        parts.append(f"{named} from files whose path names them as training (e.g. {split_by['named_example']})")
        fixes.append("add a validation file (a path naming VL1/VS1/Validation/검증/valid/dev/test), or pass "
                     "--split_from_names false so that the hash splits them too")
    raise DataError("; ".join(parts) + ". To get a validation split, " + "; or ".join(fixes)
                    + ". To go without one, pass --validation_ratio 0 (training pairs only).")


def check_args(args: Arguments) -> None:
    if not args.inputs and not args.ko_files:
        raise ValueError("nothing to read: give --inputs and/or --ko_files/--en_files")
    if not 0 <= args.validation_ratio < 1:
        raise ValueError(f"--validation_ratio must be in [0, 1), got {args.validation_ratio}")
    if args.min_chars < 1 or args.max_chars < args.min_chars:
        raise ValueError("need 1 <= --min_chars <= --max_chars")
    for name in ("ko_field", "en_field"):  # a config file may give one name as a string
        if isinstance(getattr(args, name), str):
            setattr(args, name, [getattr(args, name)])
    if len(args.ko_field) != len(args.en_field):
        raise ValueError(f"--ko_field ({args.ko_field}) and --en_field ({args.en_field}) pair up by position: give "
                         "as many of each")


class Candidates:
    """The first pass's output: kept pairs appended, as JSON lines, to a temporary file per split; their
    identity hashes (8 bytes a pair), and the byte offsets of the validation lines (8 bytes a validation
    pair, to write them in hash order)."""

    def __init__(self, out: Path):
        self.paths = {s: out / f".{s}.candidates.jsonl" for s in ("train", "validation")}
        self.hashes = {s: array("Q") for s in self.paths}
        self.offsets = array("Q")
        self.files = {}

    def open(self, stack: ExitStack) -> None:
        self.files = {s: stack.enter_context(open(p, "wb")) for s, p in self.paths.items()}

    def add(self, split: str, ident: int, ko: str, en: str, source: str) -> None:
        f = self.files[split]
        if split == "validation":
            self.offsets.append(f.tell())
        f.write(json.dumps({"ko": ko, "en": en, "source": source}, ensure_ascii=False).encode() + b"\n")
        self.hashes[split].append(ident)

    def remove(self) -> None:
        for p in self.paths.values():
            p.unlink(missing_ok=True)


def merge_repeated(argv: list[str], flags: tuple[str, ...] = ("ko_field", "en_field")) -> list[str]:
    """``--ko_field A --ko_field B`` as ``--ko_field A B`` (argparse keeps the last of a repeated flag)."""
    values, rest, current = {}, [], None
    for arg in argv:
        name, eq, value = arg.partition("=")
        flag = name[2:].replace("-", "_") if name.startswith("--") else None
        if flag in flags:
            current = values.setdefault(flag, [])
            if eq:
                current.append(value)
                current = None
            continue
        if current is not None and not arg.startswith("-"):
            current.append(arg)
            continue
        current = None
        rest.append(arg)
    for flag, vals in values.items():
        rest += [f"--{flag}", *vals]
    return rest


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(Arguments, merge_repeated(list(sys.argv[1:] if argv is None else argv)))
    check_args(args)
    t0 = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = {"sources": defaultdict(new_source_stats), "splits": {}, "skipped": defaultdict(int),
             "skipped_files": {}, "duplicate_files": {}, "repeats": {}, "duplicates_by_input": defaultdict(int)}
    cand = Candidates(out)
    try:
        split_by = read_all(args, stats, cand)
        check_validation_split(args, split_by, cand)
        write_outputs(out, stats, cand)
    finally:  # a failed run leaves no half-written candidates behind
        cand.remove()
    return finish(args, stats, out, time.perf_counter() - t0)


def new_source_stats() -> dict:
    return {"files": 0, "layouts": defaultdict(int), "rows_read": 0, "blank_rows": 0, "train": 0, "validation": 0,
            "removed": defaultdict(int), "examples": defaultdict(list),
            "splits": {s: {"kept": 0, "removed": defaultdict(int), "repeats": {}} for s in ("train", "validation")}}


def new_input_tally() -> dict:
    return {"read": 0, "layouts": set(), "rows_read": 0, "kept": 0, "removed": defaultdict(int),
            "skipped": defaultdict(int), "skipped_names": [], "skipped_examples": {}}


MAX_SKIPPED_LISTED = 1000  # per reason, in stats.json's skipped_files (the counts in "skipped" are complete)


def note_skip(stats: dict, name: str, reason: str, detail: str, tally: dict | None = None) -> None:
    """A file left out: counted per reason (``stats["skipped"]``), listed with why (the first
    ``MAX_SKIPPED_LISTED`` of each reason)."""
    stats["skipped"][reason] += 1
    if stats["skipped"][reason] <= MAX_SKIPPED_LISTED:
        stats["skipped_files"][name] = f"{reason}: {detail}"
    if tally is not None:
        tally["skipped"][reason] += 1
        tally["skipped_examples"].setdefault(reason, detail)
        if len(tally["skipped_names"]) < 3:
            tally["skipped_names"].append(name)


def read_all(args: Arguments, stats: dict, cand: Candidates) -> dict:
    """First pass: every row read, cleaned and filtered; kept pairs appended to the candidate file of
    their split. An input that yields no pair stops the run as soon as it is read. Returns how the kept
    pairs were split: ``hash`` (by ``--validation_ratio``), ``named_train`` (by a training file name)
    and ``named_example`` (one such file)."""
    threshold = round(args.validation_ratio * 1_000_000)
    split_by = {"hash": 0, "named_train": 0, "named_example": None}
    # a context manager: a run stopped by bad input closes the bar before the error line is printed
    with ExitStack() as stack:
        progress = stack.enter_context(tqdm(desc="pairs", unit=" pairs", mininterval=1.0))
        jobs = plan(args, stack, stats)
        cand.open(stack)
        for spec, input_jobs in groupby(jobs, key=lambda job: job.input):
            tally = new_input_tally()
            for job in input_jobs:
                read_job(job, args, stats, tally, cand, split_by, threshold, progress)
            if not stats["duplicates_by_input"][spec]:  # copies of files read before: no error
                check_no_pairs(spec, tally)
    return split_by


def file_split(job: Job, args: Arguments, stats: dict) -> tuple[str | None, dict]:
    """(the split a job's path names, or None for the hash) and its entry in ``stats["splits"]``:
    keyed by the folder, archive or file whose name decided (all the files of a ``VL1.zip`` or a
    ``Validation/`` folder share one entry), or by the file itself when the hash splits it."""
    entry = job.entries[0]
    named = split_of(entry.parts) if args.split_from_names else None
    if named is None:
        key, split, by = entry.name, "hash", "hash"
    else:
        key, split, by = part_path(entry, named.index), named.split, named.by
    record = stats["splits"].setdefault(key, {"split": split, "by": by, "files": 0,
                                              "pairs": {"train": 0, "validation": 0}})
    record["files"] += len(job.entries)
    return (named.split if named else None), record


def read_job(job: Job, args: Arguments, stats: dict, tally: dict, cand: Candidates, split_by: dict,
             threshold: int, progress) -> None:
    try:
        opened = open_job(job, args)
    except OneLanguage as e:
        if job.direct:
            raise
        note_skip(stats, job.entries[0].name, "one_language", str(e).split(": ", 1)[1], tally)
        return
    if opened is None:
        if job.direct:
            raise DataError(f"{job.entries[0].name}: not recognised as parallel data "
                            f"(xlsx, csv, tsv, json, jsonl, line-aligned pair){aligned_hint(job.entries[0])}")
        note_skip(stats, job.entries[0].name, "not_parallel_data", "not parallel data", tally)
        return
    layout, rows = opened
    st = stats["sources"][job.source]
    st["files"] += len(job.entries)
    st["layouts"][layout] += 1
    tally["read"] += 1
    tally["layouts"].add(layout)
    own_split, file_record = file_split(job, args, stats)
    per_split, kept = st["splits"], file_record["pairs"]
    n = 0
    for ko, en, where in rows:
        if where is None:
            st["blank_rows"] += 1
            continue
        n += 1
        if ko is None or en is None:
            reason = "malformed_row"
            ko, en = clean_text(ko or ""), clean_text(en or "")
        else:
            ko, en = clean_text(ko), clean_text(en)
            reason = pair_filter(ko, en, args)
        ident, bucket = pair_hash(ko, en)
        split = own_split or ("validation" if bucket < threshold else "train")
        if reason:
            st["removed"][reason] += 1
            per_split[split]["removed"][reason] += 1
            tally["removed"][reason] += 1
            if len(st["examples"][reason]) < MAX_EXAMPLES:
                st["examples"][reason].append(where)
            continue
        if own_split is None:
            split_by["hash"] += 1
        elif split == "train":
            split_by["named_train"] += 1
            split_by["named_example"] = split_by["named_example"] or job.entries[0].name
        cand.add(split, ident, ko, en, job.source)
        kept[split] += 1
        tally["kept"] += 1
        if n % 1024 == 0:
            progress.update(1024)
    progress.update(n % 1024)
    st["rows_read"] += n
    tally["rows_read"] += n


def repeated(values: array) -> int:
    """Rows whose value was already seen (rows minus distinct values)."""
    return len(values) - len(np.unique(np.frombuffer(values, dtype=np.int64))) if len(values) else 0


def write_outputs(out: Path, stats: dict, cand: Candidates) -> None:
    """Second pass: exact duplicates within a split, and training pairs that are also validation
    pairs, are dropped; the rest is written under a temporary name and renamed: train.jsonl in reading
    order, validation.jsonl in the order of the pairs' hashes, so that the sources are interleaved
    (a seeded shuffle that stays the same for a pair when data is added: any first N lines are a
    sample of every source). The repeated sides of the written pairs are counted per split
    (``stats["repeats"]``) and per source and split."""
    def as_array(split):
        return np.frombuffer(cand.hashes[split], dtype=np.uint64) if len(cand.hashes[split]) else np.zeros(0, np.uint64)

    val, tr = as_array("validation"), as_array("train")
    in_val = np.isin(tr, val)
    keep = {"validation": first_occurrences(val), "train": first_occurrences(tr) & ~in_val}
    for split in ("train", "validation"):
        final = out / f"{split}.jsonl"
        tmp = final.with_name(final.name + ".tmp")
        sides = defaultdict(lambda: (array("q"), array("q")))  # source -> (ko side hashes, en side hashes)
        removed_as_duplicate = 0
        with open(cand.paths[split], "rb") as src, open(tmp, "wb") as dst:
            for i, line in enumerate(src):
                row = json.loads(line)
                st = stats["sources"][row["source"]]
                if keep[split][i]:
                    if split == "train":
                        dst.write(line)
                    st[split] += 1
                    st["splits"][split]["kept"] += 1
                    ko_sides, en_sides = sides[row["source"]]
                    ko_sides.append(hash(row["ko"]))  # equality within this run is all that is needed
                    en_sides.append(hash(row["en"]))
                else:
                    reason = "in_validation" if split == "train" and in_val[i] else "duplicate"
                    removed_as_duplicate += reason == "duplicate"
                    st["removed"][reason] += 1
                    st["splits"][split]["removed"][reason] += 1
            if split == "validation":
                kept = np.flatnonzero(keep[split])
                for i in kept[np.argsort(val[kept], kind="stable")]:
                    src.seek(cand.offsets[i])
                    dst.write(src.readline())
        os.replace(tmp, final)
        all_ko, all_en = array("q"), array("q")
        for source, (ko_sides, en_sides) in sides.items():
            stats["sources"][source]["splits"][split]["repeats"] = {"ko": repeated(ko_sides), "en": repeated(en_sides)}
            all_ko.extend(ko_sides)
            all_en.extend(en_sides)
        written = int(keep[split].sum())
        stats["repeats"][split] = {"pairs": written, "ko": repeated(all_ko), "en": repeated(all_en),
                                   "pair": 0, "pair_removed": removed_as_duplicate}


def filter_counts(removed: dict) -> dict:
    return {k: removed[k] for k in FILTERS if removed.get(k)}


def finish(args: Arguments, stats: dict, out: Path, seconds: float) -> dict:
    totals = {"rows_read": 0, "train": 0, "validation": 0, "removed": defaultdict(int)}
    for st in stats["sources"].values():
        for k in ("rows_read", "train", "validation"):
            totals[k] += st[k]
        for k, v in st["removed"].items():
            totals["removed"][k] += v
    report = {
        "totals": {**totals, "removed": filter_counts(totals["removed"])},
        "sources": {name: {**st, "layouts": dict(st["layouts"]), "removed": filter_counts(st["removed"]),
                           "examples": dict(st["examples"]),
                           "splits": {s: {**v, "removed": filter_counts(v["removed"])}
                                      for s, v in st["splits"].items()}}
                    for name, st in stats["sources"].items()},
        "repeats": stats["repeats"],
        "splits": stats["splits"],
        "skipped": dict(stats["skipped"]),
        "skipped_files": stats["skipped_files"],
        "duplicate_files": stats["duplicate_files"],
        "seconds": round(seconds, 2),
        "pairs_per_second": round(totals["rows_read"] / seconds, 1) if seconds > 0 else None,
        "arguments": asdict(args),
    }
    tmp = out / "stats.json.tmp"
    tmp.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, out / "stats.json")
    print_summary(report, out)
    return report


def print_summary(report: dict, out: Path) -> None:
    print(f"{'source':<32} {'read':>9} {'train':>9} {'valid':>8}  removed")
    for name, st in report["sources"].items():
        removed = ", ".join(f"{k}={v}" for k, v in st["removed"].items()) or "-"
        print(f"{name:<32} {st['rows_read']:>9} {st['train']:>9} {st['validation']:>8}  {removed}")
    t = report["totals"]
    print(f"{'total':<32} {t['rows_read']:>9} {t['train']:>9} {t['validation']:>8}  "
          f"({report['pairs_per_second']} pairs/s)")
    by = defaultdict(lambda: defaultdict(int))
    for r in report["splits"].values():
        by[r["split"]][r["by"]] += r["files"]
    print("files read, by split: " + "; ".join(
        f"{split}: " + ", ".join(f"{n} by {how}" for how, n in hows.items()) for split, hows in by.items())
        + " (stats.json 'splits' names them)")
    if report["skipped"]:
        counts = ", ".join(f"{n} {reason}" for reason, n in report["skipped"].items())
        example = next(iter(report["skipped_files"]))
        print(f"skipped {sum(report['skipped'].values())} file(s) ({counts}), e.g. {example}")
    if report["duplicate_files"]:
        print(f"read once: {len(report['duplicate_files'])} byte-identical file(s)")
    for split, r in report["repeats"].items():
        if r["pairs"]:
            print(f"{split}: of {r['pairs']} pairs, {r['ko']} repeat a Korean side, {r['en']} an English side "
                  f"already seen ({r['pair_removed']} exact duplicate pairs removed); such pairs are false "
                  "negatives when they share an in-batch contrastive batch")
    print(f"wrote {out / 'train.jsonl'}, {out / 'validation.jsonl'}, {out / 'stats.json'}")


if __name__ == "__main__":
    run_main(main)
