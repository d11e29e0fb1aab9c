"""Monolingual Korean / English text -> JSONL documents ``{"text", "lang"}``, optionally tokenized and
packed into fixed-length blocks for the trainers' LM loss.

Usage:
    python data_prep/prepare_mono.py --inputs ../shared/data/mono_ko --lang ko --output_dir data/mono_ko
    python data_prep/prepare_mono.py --inputs kowiki/ enwiki/ --lang auto --output_dir data/mono \\
        --tokenizer runs/expanded --block_size 512            # + data/mono/train_blocks (save_to_disk)
    python data_prep/prepare_mono.py --inputs bills/ --plain_text_unit file --lang ko --output_dir data/bills

Writes ``OUTPUT_DIR/train.jsonl`` (and ``validation.jsonl`` with ``--validation_ratio``), one document a
line, and ``stats.json`` (documents read and kept per input, removed per filter). With ``--tokenizer``,
also ``OUTPUT_DIR/train_blocks`` (and ``validation_blocks``): a ``datasets`` folder (``save_to_disk``)
with one column ``input_ids`` of ``--block_size`` tokens, built by ``common.data.load_text_blocks`` (the
trainers' own packing of ``--lm_train_file`` text: each document tokenized with the tokenizer's special
tokens and followed by EOS, one stream, only the final tail dropped; cached by ``datasets``). The
trainers accept the folder as ``--lm_train_file`` (its block length must equal their ``--block_size``).

Inputs (files, folders, zip/tar archives) are recognised by content: wiki-extractor output (``<doc id
url title>`` ... ``</doc>``: one document each, title line included), JSONL/JSON records with a
``text`` field (and optionally ``lang``), else plain text with one document per line
(``--plain_text_unit paragraph``: blank-line separated; ``file``: the whole file). README, LICENSE and
PROVENANCE files are left out (``--exclude``). Cleaning: NFC, control and invisible characters removed,
whitespace collapsed within lines, line breaks inside a document kept. Filters (counted): empty,
shorter than ``--min_chars``, no letters, a language other than ``--lang`` (Hangul share of the
letters >= 0.3 means Korean), exact duplicates. A document that is not UTF-8, JSON that does not parse,
or an unterminated ``<doc>`` stops the run with the file and line.
"""

import hashlib
import json
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.args import parse_arguments  # noqa: E402
from common.data import DataError, load_text_blocks, parse_json_line  # noqa: E402
from data_prep.sources import Entry, clean_text, hangul_share, iter_entries, iter_json_records, iter_lines, lower_ext  # noqa: E402

DEFAULT_EXCLUDE = ["*/README*", "*/LICENSE*", "*/LICENCE*", "*/PROVENANCE*"]
FILTERS = ("empty", "too_short", "no_letters", "lang_mismatch", "duplicate")
KO_SHARE = 0.3
_DOC_OPEN = re.compile(r"<doc\b[^>]*>\s*$")


@dataclass
class Arguments:
    inputs: list[str] = field(default_factory=list, metadata={"help": "Files, folders, zip or tar archives: wiki-extractor <doc> files, JSONL/JSON with a 'text' field, or plain text."})
    output_dir: str = field(default="data/mono", metadata={"help": "Where train.jsonl (+ validation.jsonl), stats.json and the packed blocks go."})
    lang: str = field(default="auto", metadata={"help": "'ko' or 'en': label every document so and remove (count) those in the other script; 'auto': label each by its Hangul share (>= 0.3 of the letters: ko)."})
    plain_text_unit: str = field(default="line", metadata={"help": "What one document is in plain text files: 'line', 'paragraph' (separated by blank lines) or 'file'."})
    min_chars: int = field(default=1, metadata={"help": "Remove documents shorter than this many characters (after cleaning)."})
    validation_ratio: float = field(default=0.0, metadata={"help": "Share of documents (decided by a hash of the text, stable across reruns) written to validation.jsonl; 0: none."})
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE), metadata={"help": "Glob patterns (fnmatch on the full file name) of files to leave out."})
    encoding: str = field(default="utf-8", metadata={"help": "Text encoding of the inputs."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer folder: when given, the documents are also tokenized and packed into blocks of --block_size (train_blocks/, validation_blocks/)."})
    block_size: int = field(default=512, metadata={"help": "Length of the packed blocks, in tokens."})


# ---------------------------------------------------------------------------------------------- readers


def iter_documents(entry: Entry, encoding: str = "utf-8", plain_text_unit: str = "line") -> Iterator[tuple[str, str, str | None]]:
    """(raw text, 'file:line', lang or None) for each document of one file, format found by content."""
    ext = lower_ext(entry.basename)
    if ext == ".jsonl":
        with entry.open() as f:
            for n, line in iter_lines(f, entry.name, encoding):
                if line.strip():
                    yield _record_text(parse_json_line(line, f"{entry.name}:{n}"), f"{entry.name}:{n}")
        return
    if ext == ".json":
        with entry.open() as f:
            for record, where in iter_json_records(f, entry.name, encoding):
                yield _record_text(record, where)
        return
    with entry.open() as f:
        lines = iter_lines(f, entry.name, encoding)
        first = next(((n, line) for n, line in lines if line.strip()), None)
        if first is None:
            return
        if first[1].lstrip().startswith("<doc"):
            yield from _wiki_docs(first, lines, entry.name)
        elif plain_text_unit == "line":
            yield first[1], f"{entry.name}:{first[0]}", None
            for n, line in lines:
                if line.strip():
                    yield line, f"{entry.name}:{n}", None
        elif plain_text_unit == "paragraph":
            para, start = [first[1]], first[0]
            for n, line in lines:
                if line.strip():
                    if not para:
                        start = n
                    para.append(line)
                elif para:
                    yield "".join(para), f"{entry.name}:{start}", None
                    para = []
            if para:
                yield "".join(para), f"{entry.name}:{start}", None
        elif plain_text_unit == "file":
            yield first[1] + "".join(line for _, line in lines), f"{entry.name}:{first[0]}", None
        else:
            raise ValueError(f"--plain_text_unit must be line, paragraph or file, got {plain_text_unit!r}")


def _record_text(record, where: str) -> tuple[str, str, str | None]:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: expected a JSON object with a string 'text' field (found: {found})")
    lang = record.get("lang")
    return record["text"], where, lang if lang in ("ko", "en") else None


def _wiki_docs(first: tuple[int, str], lines: Iterator[tuple[int, str]], name: str) -> Iterator[tuple[str, str, None]]:
    """wiki-extractor output: ``<doc ...>`` line, the article (title first), ``</doc>`` line."""
    body, start = None, None
    for n, line in _chain(first, lines):
        s = line.strip()
        if _DOC_OPEN.match(s):
            if body is not None:
                raise DataError(f"{name}:{n}: <doc> inside the document opened at line {start} (missing </doc>)")
            body, start = [], n
        elif s == "</doc>":
            if body is None:
                raise DataError(f"{name}:{n}: </doc> without an opening <doc>")
            yield "".join(body), f"{name}:{start}", None
            body = None
        elif body is not None:
            body.append(line)
        elif s:
            raise DataError(f"{name}:{n}: text outside <doc> ... </doc> in a wiki-extractor file")
    if body is not None:
        raise DataError(f"{name}:{start}: <doc> is never closed (missing </doc>)")


def _chain(first, rest):
    yield first
    yield from rest


def detect_lang(text: str) -> str | None:
    if not any(ch.isalpha() for ch in text):
        return None
    return "ko" if hangul_share(text) >= KO_SHARE else "en"


def iter_clean_documents(inputs: list[str], stack: ExitStack, encoding: str = "utf-8", plain_text_unit: str = "line",
                         exclude: list[str] = ()) -> Iterator[tuple[str, str, str, str | None]]:
    """(input, cleaned text, where, lang given by the record) for every document of every input."""
    for spec in inputs:
        for entry in iter_entries(spec, stack):
            if any(fnmatch(entry.name, p) for p in exclude):
                continue
            for text, where, lang in iter_documents(entry, encoding, plain_text_unit):
                yield spec, clean_text(text, keep_newlines=True), where, lang


# ------------------------------------------------------------------------------------------------- main


def check_args(args: Arguments) -> None:
    if not args.inputs:
        raise ValueError("give --inputs")
    if args.lang not in ("ko", "en", "auto"):
        raise ValueError(f"--lang must be ko, en or auto, got {args.lang!r}")
    if args.plain_text_unit not in ("line", "paragraph", "file"):
        raise ValueError(f"--plain_text_unit must be line, paragraph or file, got {args.plain_text_unit!r}")
    if not 0 <= args.validation_ratio < 1:
        raise ValueError(f"--validation_ratio must be in [0, 1), got {args.validation_ratio}")
    if args.block_size < 2:
        raise ValueError("--block_size must be >= 2")


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(Arguments, argv)
    check_args(args)
    t0 = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = ("train", "validation") if args.validation_ratio > 0 else ("train",)
    threshold = round(args.validation_ratio * 1_000_000)
    per_input = defaultdict(lambda: {"documents_read": 0, "kept": defaultdict(int), "chars_kept": 0,
                                     "removed": defaultdict(int), "examples": defaultdict(list)})
    seen = set()  # 8-byte hashes of the kept documents (about 70 bytes of memory a document)
    tmp = {s: out / f"{s}.jsonl.tmp" for s in splits}
    try:
        with ExitStack() as stack:
            files = {s: stack.enter_context(open(p, "w", encoding="utf-8")) for s, p in tmp.items()}
            progress = stack.enter_context(tqdm(desc="documents", unit=" docs", mininterval=1.0))
            for spec, text, where, given in iter_clean_documents(args.inputs, stack, args.encoding, args.plain_text_unit, args.exclude):
                st = per_input[spec]
                st["documents_read"] += 1
                progress.update(1)
                detected = detect_lang(text)
                if not text:
                    reason = "empty"
                elif len(text) < args.min_chars:
                    reason = "too_short"
                elif detected is None:
                    reason = "no_letters"
                elif args.lang != "auto" and detected != args.lang:
                    reason = "lang_mismatch"
                else:
                    digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
                    ident = int.from_bytes(digest[:8], "little")
                    reason = "duplicate" if ident in seen else None
                if reason:
                    st["removed"][reason] += 1
                    if len(st["examples"][reason]) < 3:
                        st["examples"][reason].append(where)
                    continue
                seen.add(ident)
                split = "validation" if int.from_bytes(digest[8:], "little") % 1_000_000 < threshold else "train"
                lang = args.lang if args.lang != "auto" else (given or detected)
                files[split].write(json.dumps({"text": text, "lang": lang}, ensure_ascii=False) + "\n")
                st["kept"][split] += 1
                st["chars_kept"] += len(text)
        for s in splits:
            os.replace(tmp[s], out / f"{s}.jsonl")
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)

    report = {
        "inputs": {k: {**v, "kept": dict(v["kept"]), "removed": {f: v["removed"][f] for f in FILTERS if v["removed"].get(f)},
                       "examples": dict(v["examples"])} for k, v in per_input.items()},
        "documents": {s: sum(v["kept"][s] for v in per_input.values()) for s in splits},
        "arguments": asdict(args),
    }
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        if tokenizer.eos_token_id is None:
            raise ValueError(f"--tokenizer {args.tokenizer} has no EOS token to separate documents")
        report["blocks"] = {"block_size": args.block_size, "tokenizer": args.tokenizer}
        for s in splits:
            blocks = load_text_blocks(str(out / f"{s}.jsonl"), tokenizer, args.block_size)  # exactly what the trainers build from the text
            final = out / f"{s}_blocks"
            staging = out / f"{s}_blocks.tmp"
            blocks.save_to_disk(str(staging))
            if final.exists():
                import shutil
                shutil.rmtree(final)
            os.replace(staging, final)
            report["blocks"][s] = len(blocks)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    tmp_stats = out / "stats.json.tmp"
    tmp_stats.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp_stats, out / "stats.json")
    for spec, st in report["inputs"].items():
        removed = ", ".join(f"{k}={v}" for k, v in st["removed"].items()) or "-"
        print(f"{spec}: read {st['documents_read']}, kept {sum(st['kept'].values())} ({st['chars_kept']} chars); removed {removed}")
    if "blocks" in report:
        print("blocks of", args.block_size, "tokens:", {s: report["blocks"][s] for s in splits})
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
