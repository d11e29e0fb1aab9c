"""Monolingual Korean / English text -> JSONL documents ``{"text", "lang"}``, optionally tokenized and
packed into fixed-length blocks for the trainers' LM loss.

Usage (from the repository root):
    python -m data_prep.prepare_mono --inputs ../shared/data/mono_ko --lang ko --output_dir runs/data/mono_ko
    python -m data_prep.prepare_mono --inputs kowiki/ enwiki/ --lang auto --output_dir runs/data/mono \\
        --tokenizer runs/expanded --block_size 512     # + runs/data/mono/train_blocks (save_to_disk)
    python -m data_prep.prepare_mono --inputs bills/ --plain_text_unit file --lang ko --output_dir runs/data/bills
    python -m data_prep.prepare_mono mono.yaml --output_dir runs/data/mono2   # a config file, then overrides

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
import shutil
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from common.args import parse_arguments
from common.cli import run_main
from common.data import load_text_blocks
from data_prep.sources import DEFAULT_EXCLUDE, hangul_share, iter_clean_documents

FILTERS = ("empty", "too_short", "no_letters", "lang_mismatch", "duplicate")
KO_SHARE = 0.3


@dataclass
class Arguments:
    inputs: list[str] = field(default_factory=list, metadata={
        "help": "Files, folders, zip or tar archives: wiki-extractor <doc> files, JSONL/JSON with a 'text' field, "
                "or plain text."})
    output_dir: str = field(default="runs/data/mono", metadata={
        "help": "Where train.jsonl (+ validation.jsonl), stats.json and the packed blocks go."})
    lang: str = field(default="auto", metadata={
        "help": "'ko' or 'en': label every document so and remove (count) those in the other script; 'auto': label "
                "each by its Hangul share (>= 0.3 of the letters: ko)."})
    plain_text_unit: str = field(default="line", metadata={
        "help": "What one document is in plain text files: 'line', 'paragraph' (separated by blank lines) or "
                "'file'."})
    min_chars: int = field(default=1, metadata={
        "help": "Remove documents shorter than this many characters (after cleaning)."})
    validation_ratio: float = field(default=0.0, metadata={
        "help": "Share of documents (decided by a hash of the text, stable across reruns) written to "
                "validation.jsonl; 0: none."})
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE), metadata={
        "help": "Glob patterns (fnmatch on the full file name) of files to leave out."})
    encoding: str = field(default="utf-8", metadata={"help": "Text encoding of the inputs."})
    tokenizer: str | None = field(default=None, metadata={
        "help": "Tokenizer folder: when given, the documents are also tokenized and packed into blocks of "
                "--block_size (train_blocks/, validation_blocks/)."})
    block_size: int = field(default=512, metadata={"help": "Length of the packed blocks, in tokens."})


def detect_lang(text: str) -> str | None:
    if not any(ch.isalpha() for ch in text):
        return None
    return "ko" if hangul_share(text) >= KO_SHARE else "en"


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
            documents = iter_clean_documents(args.inputs, stack, args.encoding, args.plain_text_unit, args.exclude)
            for spec, text, where, given in documents:
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
        "inputs": {k: {**v, "kept": dict(v["kept"]),
                       "removed": {f: v["removed"][f] for f in FILTERS if v["removed"].get(f)},
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
            # exactly what the trainers build from the text
            blocks = load_text_blocks(str(out / f"{s}.jsonl"), tokenizer, args.block_size)
            final = out / f"{s}_blocks"
            staging = out / f"{s}_blocks.tmp"
            blocks.save_to_disk(str(staging))
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            report["blocks"][s] = len(blocks)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    tmp_stats = out / "stats.json.tmp"
    tmp_stats.write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp_stats, out / "stats.json")
    for spec, st in report["inputs"].items():
        removed = ", ".join(f"{k}={v}" for k, v in st["removed"].items()) or "-"
        print(f"{spec}: read {st['documents_read']}, kept {sum(st['kept'].values())} ({st['chars_kept']} chars); "
              f"removed {removed}")
    if "blocks" in report:
        print("blocks of", args.block_size, "tokens:", {s: report["blocks"][s] for s in splits})
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    run_main(main)
