"""Korean-English parallel corpora (AI-Hub downloads, line-aligned files, TSV/CSV/JSON) -> parallel JSONL.

Writes ``OUTPUT_DIR/train.jsonl`` and ``OUTPUT_DIR/validation.jsonl`` (one ``{"ko", "en", "source"}`` a
line, NFC) and ``OUTPUT_DIR/stats.json`` (pairs read and kept per source, pairs removed per filter with
the first locations, files skipped and why), and prints a summary.

Usage (from the repository root):
    python -m data_prep.prepare_parallel --inputs ~/aihub/한국어-영어_번역_말뭉치 ~/aihub/기술과학.zip \\
        --output_dir runs/data/parallel
    python -m data_prep.prepare_parallel --inputs ntrex=../shared/data/ntrex128_en_ko \\
        tatoeba=../shared/data/tatoeba_kor_eng/kor.txt --output_dir runs/data/parallel
    python -m data_prep.prepare_parallel --ko_files a.ko --en_files a.en --output_dir runs/data/parallel
    python -m data_prep.prepare_parallel --inputs corpus.jsonl --ko_field korean_text --en_field english_text ...
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
  ``--ko_field``/``--en_field`` override (column numbers for header-less TSV);
- two line-aligned text files named alike but for a language token (``x.ko``/``x.en``,
  ``x-src.eng.txt``/``x-ref.kor.txt``); their line counts must match;
- header-less TSV with a Korean and an English column (Tatoeba ``kor.txt``: English, Korean, attribution);
- KorSTS (``ko/sts-*.tsv``) with the STS-B originals (``en/sts-*.csv``): row-aligned, 2 pairs a row.
Zip members with cp949 names (no UTF-8 flag) are decoded right; nested zips are read in place; tar
archives are unpacked to a temporary folder. Byte-identical files (AI-Hub's label and source copies)
are read once. Files that are none of the above (README, licences, .labels, ...) are skipped and
listed in stats.json; an unreadable file or unrecognised fields in a .xlsx/.csv/.json/.jsonl stop the
run with the file, the line or row, and the fields found (``--exclude`` leaves files out). An input
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
training (``in_validation``). Split: a file whose path names its split (train/training/TL_/TS_/훈련/학습;
valid/validation/val/dev/test/VL_/VS_/검증) keeps it; otherwise a hash of the cleaned pair decides
(``--validation_ratio``), so reruns, reordered inputs and added data keep every pair on the same side.
With ``--validation_ratio`` above 0, a run whose validation split comes out empty (too few pairs for
the ratio, or only files named as training) is an error that gives the numbers; ``--validation_ratio
0`` writes training pairs only (and an empty validation.jsonl) on purpose.

Repeated sides: stats.json's ``repeats`` gives, per split, over the pairs written, how many repeat a
Korean side (``ko``), an English side (``en``) or the whole pair (``pair``) already seen in that split:
the count of rows whose side was seen before, so ``pairs - ko`` distinct Korean sides. Two pairs that
share a side are false negatives of each other when they meet in one in-batch contrastive batch.
``pair`` is 0 (exact duplicates are removed; ``pair_removed`` says how many).

Memory: one record at a time plus 8 bytes a kept pair (the duplicate check runs on 64-bit hashes in a
second pass over temporary files; the repeated-side counts add 16 bytes a pair of the split being
written); xlsx files are read in read-only mode.
"""

import csv
import hashlib
import json
import os
import time
from array import array
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from itertools import chain, groupby
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
    split_from_names,
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
    ko_field: str | None = field(default=None, metadata={
        "help": "Name of the Korean field/column (for header-less TSV: its 0-based number); overrides detection."})
    en_field: str | None = field(default=None, metadata={
        "help": "Name of the English field/column (for header-less TSV: its 0-based number); overrides detection."})
    exclude: list[str] = field(default_factory=list, metadata={
        "help": "Glob patterns (fnmatch on the file's full name, archive path included) of files to leave out."})
    encoding: str = field(default="utf-8", metadata={
        "help": "Text encoding of text, CSV and JSON files (e.g. cp949 for some AI-Hub CSVs)."})
    validation_ratio: float = field(default=0.01, metadata={
        "help": "Share of the pairs of corpora without their own split that go to validation (decided by a hash "
                "of the pair)."})
    split_from_names: bool = field(default=True, metadata={
        "help": "Keep a corpus's own split when a path component names it "
                "(train/TL_/훈련, valid/dev/test/VL_/검증); false: the hash decides for everything."})
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


# ------------------------------------------------------------------------------------------- detection


def path_direction(parts: tuple[str, ...]) -> str | None:
    """'enko' / 'koen' when a path component says which way a 원문/최종번역문 set was translated."""
    tokens = {t for p in parts for t in name_tokens(p)}
    if tokens & {"enko", "영한"}:
        return "enko"
    if tokens & {"koen", "한영"}:
        return "koen"
    return None


def detect_fields(fields: list[str], where: str, args: Arguments,
                  parts: tuple[str, ...]) -> tuple[str, str, str, str]:
    """(ko key, en key, direction, layout name) for records with these fields. direction: 'koen'
    (as named), 'enko' (swap), or 'auto' (swap a record when only the en field holds Hangul)."""
    if args.ko_field or args.en_field:
        missing = [f for f in (args.ko_field, args.en_field) if f not in fields]
        if not args.ko_field or not args.en_field or missing:
            raise DataError(f"{where}: --ko_field {args.ko_field!r} / --en_field {args.en_field!r} not found; "
                            f"fields: {fields}")
        return args.ko_field, args.en_field, "koen", f"{args.ko_field}/{args.en_field}"
    by_lower = {f.strip().lower(): f for f in fields if isinstance(f, str)}
    for ko, en in KNOWN_FIELDS:
        if ko in by_lower and en in by_lower:
            direction = "koen"
            if (ko, en) == ("원문", "최종번역문"):
                direction = path_direction(parts) or "auto"
            return by_lower[ko], by_lower[en], direction, f"{ko}/{en}"
    raise DataError(f"{where}: cannot tell the Korean and English fields among {fields}; "
                    "pass --ko_field and --en_field")


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
    ko_key, en_key, direction, layout = detect_fields(list(record), where, args, entry.parts)

    def gen():
        for rec, at in chain((first,), records):
            if not isinstance(rec, dict):
                yield None, None, at
                continue
            yield *oriented(as_text(rec.get(ko_key)), as_text(rec.get(en_key)), direction), at

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
    except DataError:
        if not tab:
            raise
        cols = headerless_columns(entry, args)
        if cols is None:
            if ext in DATA_EXTS:
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
    if args.ko_field is not None and args.en_field is not None and args.ko_field.isdigit() and args.en_field.isdigit():
        return int(args.ko_field), int(args.en_field)
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


def new_source_stats() -> dict:
    return {"files": 0, "layouts": defaultdict(int), "rows_read": 0, "blank_rows": 0, "train": 0, "validation": 0,
            "removed": defaultdict(int), "examples": defaultdict(list)}


def first_occurrences(hashes: np.ndarray) -> np.ndarray:
    keep = np.zeros(len(hashes), dtype=bool)
    keep[np.unique(hashes, return_index=True)[1]] = True
    return keep


def check_args(args: Arguments) -> None:
    if not args.inputs and not args.ko_files:
        raise ValueError("nothing to read: give --inputs and/or --ko_files/--en_files")
    if not 0 <= args.validation_ratio < 1:
        raise ValueError(f"--validation_ratio must be in [0, 1), got {args.validation_ratio}")
    if args.min_chars < 1 or args.max_chars < args.min_chars:
        raise ValueError("need 1 <= --min_chars <= --max_chars")


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(Arguments, argv)
    check_args(args)
    t0 = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = {"sources": defaultdict(new_source_stats), "skipped_files": {}, "duplicate_files": {}, "repeats": {},
             "duplicates_by_input": defaultdict(int)}
    cand = {s: out / f".{s}.candidates.jsonl" for s in ("train", "validation")}
    hashes = {s: array("Q") for s in cand}
    try:
        split_by = read_all(args, stats, cand, hashes)
        check_validation_split(args, split_by, hashes)
        write_outputs(out, stats, cand, hashes)
    finally:  # a failed run leaves no half-written candidates behind
        for p in cand.values():
            p.unlink(missing_ok=True)
    return finish(args, stats, out, time.perf_counter() - t0)


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
    skipped = tally["skipped"]
    raise DataError(f"{spec}: no parallel pairs: none of its {len(skipped)} file(s) is recognised as parallel data "
                    f"(e.g. {', '.join(skipped[:3])}){aligned_hint(None)}")


def check_validation_split(args: Arguments, split_by: dict, hashes: dict) -> None:
    """An empty validation split, when one was asked for (``--validation_ratio`` > 0), is an error, not
    a warning: the trainers refuse an empty --validation_file ("no pairs") only when a training run
    starts, possibly long after this run's summary scrolled away, and a model picked without validation
    numbers is worse than a rerun of this script with one flag changed. The cases are small or
    training-only inputs, where the message gives the flag; ``--validation_ratio 0`` says that no
    validation split is wanted (validation.jsonl is then written empty on purpose)."""
    if args.validation_ratio == 0 or len(hashes["validation"]) or not len(hashes["train"]):
        return
    kept = len(hashes["train"])
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
        fixes.append("add a validation file (a path naming valid/dev/test/VL_/검증), or pass "
                     "--split_from_names false so that the hash splits them too")
    raise DataError("; ".join(parts) + ". To get a validation split, " + "; or ".join(fixes)
                    + ". To go without one, pass --validation_ratio 0 (training pairs only).")


def new_input_tally() -> dict:
    return {"read": 0, "layouts": set(), "rows_read": 0, "kept": 0, "removed": defaultdict(int), "skipped": []}


def read_all(args: Arguments, stats: dict, cand: dict, hashes: dict) -> dict:
    """First pass: every row read, cleaned and filtered; kept pairs appended to the candidate file of
    their split, their identity hash to ``hashes``. An input that yields no pair stops the run as soon
    as it is read. Returns how the kept pairs were split: ``hash`` (by ``--validation_ratio``),
    ``named_train`` (by a training file name) and ``named_example`` (one such file)."""
    threshold = round(args.validation_ratio * 1_000_000)
    split_by = {"hash": 0, "named_train": 0, "named_example": None}
    # a context manager: a run stopped by bad input closes the bar before the error line is printed
    with ExitStack() as stack:
        progress = stack.enter_context(tqdm(desc="pairs", unit=" pairs", mininterval=1.0))
        jobs = plan(args, stack, stats)
        files = {s: stack.enter_context(open(p, "w", encoding="utf-8")) for s, p in cand.items()}
        for spec, input_jobs in groupby(jobs, key=lambda job: job.input):
            tally = new_input_tally()
            for job in input_jobs:
                read_job(job, args, stats, tally, files, hashes, split_by, threshold, progress)
            if not stats["duplicates_by_input"][spec]:  # copies of files read before: no error
                check_no_pairs(spec, tally)
    return split_by


def read_job(job: Job, args: Arguments, stats: dict, tally: dict, files: dict, hashes: dict, split_by: dict,
             threshold: int, progress) -> None:
    opened = open_job(job, args)
    if opened is None:
        if job.direct:
            raise DataError(f"{job.entries[0].name}: not recognised as parallel data "
                            f"(xlsx, csv, tsv, json, jsonl, line-aligned pair){aligned_hint(job.entries[0])}")
        stats["skipped_files"][job.entries[0].name] = "not parallel data"
        tally["skipped"].append(job.entries[0].name)
        return
    layout, rows = opened
    st = stats["sources"][job.source]
    st["files"] += len(job.entries)
    st["layouts"][layout] += 1
    tally["read"] += 1
    tally["layouts"].add(layout)
    own_split = split_from_names(job.entries[0].parts) if args.split_from_names else None
    for ko, en, where in rows:
        if where is None:
            st["blank_rows"] += 1
            continue
        st["rows_read"] += 1
        tally["rows_read"] += 1
        progress.update(1)
        if ko is None or en is None:
            reason = "malformed_row"
        else:
            ko, en = clean_text(ko), clean_text(en)
            reason = pair_filter(ko, en, args)
        if reason:
            st["removed"][reason] += 1
            tally["removed"][reason] += 1
            if len(st["examples"][reason]) < MAX_EXAMPLES:
                st["examples"][reason].append(where)
            continue
        ident, bucket = pair_hash(ko, en)
        if own_split:
            split = own_split
            if split == "train":
                split_by["named_train"] += 1
                split_by["named_example"] = split_by["named_example"] or job.entries[0].name
        else:
            split = "validation" if bucket < threshold else "train"
            split_by["hash"] += 1
        files[split].write(json.dumps({"ko": ko, "en": en, "source": job.source}, ensure_ascii=False) + "\n")
        hashes[split].append(ident)
        tally["kept"] += 1


def side_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def repeated(values: array) -> int:
    """Rows whose value was already seen (rows minus distinct values)."""
    return len(values) - len(np.unique(np.frombuffer(values, dtype=np.uint64))) if len(values) else 0


def write_outputs(out: Path, stats: dict, cand: dict, hashes: dict) -> None:
    """Second pass: exact duplicates within a split, and training pairs that are also validation
    pairs, are dropped; the rest is written under a temporary name and renamed. The repeated sides of
    the written pairs are counted per split (``stats["repeats"]``)."""
    val = np.frombuffer(hashes["validation"], dtype=np.uint64) if len(hashes["validation"]) else np.zeros(0, np.uint64)
    tr = np.frombuffer(hashes["train"], dtype=np.uint64) if len(hashes["train"]) else np.zeros(0, np.uint64)
    keep = {"validation": first_occurrences(val), "train": first_occurrences(tr) & ~np.isin(tr, val)}
    in_val = np.isin(tr, val)
    for split in ("train", "validation"):
        final = out / f"{split}.jsonl"
        tmp = final.with_name(final.name + ".tmp")
        sides = {"ko": array("Q"), "en": array("Q"), "pair": array("Q")}
        removed_as_duplicate = 0
        with open(cand[split], encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                row = json.loads(line)
                source = row["source"]
                if keep[split][i]:
                    dst.write(line)
                    stats["sources"][source][split] += 1
                    sides["ko"].append(side_hash(row["ko"]))
                    sides["en"].append(side_hash(row["en"]))
                    sides["pair"].append(hashes[split][i])
                else:
                    reason = "in_validation" if split == "train" and in_val[i] else "duplicate"
                    removed_as_duplicate += reason == "duplicate"
                    stats["sources"][source]["removed"][reason] += 1
        os.replace(tmp, final)
        stats["repeats"][split] = {"pairs": len(sides["pair"]), **{k: repeated(v) for k, v in sides.items()},
                                   "pair_removed": removed_as_duplicate}


def finish(args: Arguments, stats: dict, out: Path, seconds: float) -> dict:
    totals = {"rows_read": 0, "train": 0, "validation": 0, "removed": defaultdict(int)}
    for st in stats["sources"].values():
        for k in ("rows_read", "train", "validation"):
            totals[k] += st[k]
        for k, v in st["removed"].items():
            totals["removed"][k] += v
    report = {
        "totals": {**totals, "removed": {k: totals["removed"][k] for k in FILTERS if totals["removed"].get(k)}},
        "sources": {name: {**st, "layouts": dict(st["layouts"]),
                           "removed": {k: st["removed"][k] for k in FILTERS if st["removed"].get(k)},
                           "examples": dict(st["examples"])}
                    for name, st in stats["sources"].items()},
        "repeats": stats["repeats"],
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
    if report["skipped_files"]:
        print(f"skipped {len(report['skipped_files'])} file(s) that are not parallel data, "
              f"e.g. {next(iter(report['skipped_files']))}")
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
