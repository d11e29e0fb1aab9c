"""Monolingual Korean / English text -> JSONL documents ``{"text", "lang"}``, optionally tokenized and
packed into fixed-length blocks for the trainers' LM loss.

Usage (from the repository root):
    python -m data_prep.prepare_mono --inputs ../shared/data/mono_ko --lang ko --output_dir runs/data/mono_ko
    python -m data_prep.prepare_mono --inputs kowiki/ enwiki/ --lang auto --output_dir runs/data/mono \\
        --tokenizer runs/expanded --block_size 512 --num_proc 16   # + runs/data/mono/train_blocks (shards)
    python -m data_prep.prepare_mono --inputs bills/ --plain_text_unit file --lang ko --output_dir runs/data/bills
    python -m data_prep.prepare_mono mono.yaml --output_dir runs/data/mono2   # a config file, then overrides

Writes ``OUTPUT_DIR/train.jsonl`` (and ``validation.jsonl`` with ``--validation_ratio``), one document a
line, and ``stats.json`` (documents read and kept per input, removed per filter, time). With ``--tokenizer``,
also ``OUTPUT_DIR/train_blocks`` (and ``validation_blocks``): a ``datasets`` folder in the ``save_to_disk``
layout (``data-00000-of-0000K.arrow`` shards of at most ``--shard_size_mb``, read by ``load_from_disk``)
with one column ``input_ids`` of ``--block_size`` tokens. The blocks are exactly what the trainers'
``common.data.load_text_blocks`` builds from the written JSONL: each document tokenized with the
tokenizer's special tokens and followed by EOS, one stream per split in file order, cut into blocks,
only the final tail dropped. The trainers accept the folder as ``--lm_train_file`` (its block length
must equal their ``--block_size``).

``--num_proc N`` (N > 1) moves the work done on each document by itself (cleaning, language check,
hash, JSON line, tokenization) to N worker processes; this process reads the inputs, sends the
documents out in batches, takes the results back in input order, removes duplicates, packs and
writes. So the JSONL and the blocks (shards included) are the same whatever N. Each worker tokenizes
on one thread; with N = 1 the tokenizer keeps its own thread pool (``TOKENIZERS_PARALLELISM``) as
before, which tokenizes a batch on several cores but leaves the rest serial (on 16 cores: 1.7x one
core's speed, where 15 workers give about 6x). Memory stays flat:
at most 2N batches of about 1 MB of text are in flight, and blocks are written as they fill (the
duplicate check keeps 8 bytes a kept document, about 70 with the set's overhead).

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
import multiprocessing as mp
import os
import shutil
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import DatasetInfo, Features, List, Value
from datasets import config as datasets_config
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import Hasher
from tqdm.auto import tqdm

from common.args import parse_arguments
from common.cli import run_main
from common.data import DataError, file_fingerprint
from data_prep.sources import DEFAULT_EXCLUDE, clean_text, hangul_share, iter_documents, iter_entries

FILTERS = ("empty", "too_short", "no_letters", "lang_mismatch", "duplicate")
KO_SHARE = 0.3
# The blocks' column, as ``datasets`` types it when the trainers pack text themselves (int32 ids).
BLOCK_FEATURES = Features({"input_ids": List(Value("int32"))})
BATCH_CHARS = 1_000_000  # documents travel to the workers in batches of about this many characters
BATCH_DOCS = 4096  # ... or of at most this many documents
WRITE_TOKENS = 1 << 20  # packed blocks are written in pieces of about this many tokens


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
    num_proc: int = field(default=1, metadata={
        "help": "Worker processes for the per-document work (cleaning, language check, hash, JSON, tokenization); "
                "1: all in this process. The output is the same for every value; up to the number of cores helps."})
    shard_size_mb: float = field(default=500.0, metadata={
        "help": "Largest shard of the packed blocks, in MB (datasets' own default for save_to_disk): a folder of "
                "several files that a multi-node run reads without one giant file."})


def detect_lang(text: str) -> str | None:
    if not any(ch.isalpha() for ch in text):
        return None
    return "ko" if hangul_share(text) >= KO_SHARE else "en"


# Texts on which a tokenizer's fast path must give the ids of its ``__call__`` before it is used.
PROBE_TEXTS = ["안녕하세요, 세계!  Hello\tworld.\n둘째 줄 ½ Ünïcödé 𝔘 🙂", " leading and trailing space ", "a",
               "<s> </s> <unk> <pad> [CLS] <|endoftext|>",
               "제임스 얼 카터 주니어(, 1924년 10월 1일 ~ )는 민주당 출신 미국 39대 대통령이다."]


def _fast_ids_equal(tokenizer) -> bool:
    """Whether ``tokenizer.backend_tokenizer.encode_batch_fast`` gives the same ids as ``tokenizer()``:
    a fast tokenizer with no truncation or padding set and no Python-side processing (checked on
    PROBE_TEXTS; the call first resets the backend's truncation and padding as every call does)."""
    expected = tokenizer(PROBE_TEXTS)["input_ids"]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast") or backend.truncation or backend.padding:
        return False
    return [e.ids for e in backend.encode_batch_fast(PROBE_TEXTS)] == expected


def iter_raw_documents(inputs: list[str], stack: ExitStack, encoding: str = "utf-8", plain_text_unit: str = "line",
                       exclude: Iterable[str] = ()) -> Iterator[tuple[str, str, str, str | None]]:
    """``data_prep.sources.iter_clean_documents`` without its last step, ``clean_text``, which
    ``DocumentWork`` does in the workers (it was half of the reading process's time)."""
    for spec in inputs:
        for entry in iter_entries(spec, stack):
            if any(fnmatch(entry.name, p) for p in exclude):
                continue
            for text, where, lang in iter_documents(entry, encoding, plain_text_unit):
                yield spec, text, where, lang


class DocumentWork:
    """What is done to each document by itself, without looking at the others: cleaning, the language
    check, the filters other than duplicates, the hash (duplicate key and split), the JSONL line and,
    with a tokenizer, the token ids followed by EOS. Runs in the worker processes (or here with
    --num_proc 1)."""

    def __init__(self, lang: str, min_chars: int, validation_ratio: float, tokenizer=None):
        self.lang, self.min_chars, self.tokenizer = lang, min_chars, tokenizer
        self.threshold = round(validation_ratio * 1_000_000)
        self.fast_ids = tokenizer is not None and _fast_ids_equal(tokenizer)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """The ids ``tokenizer(texts)["input_ids"]`` gives (what the trainers pack), through the Rust
        tokenizer's ``encode_batch_fast`` where that is the same (about 1.8x faster: no character offsets)."""
        if self.fast_ids:
            return [e.ids for e in self.tokenizer.backend_tokenizer.encode_batch_fast(texts)]
        return self.tokenizer(texts)["input_ids"]

    def verdict(self, text: str, given: str | None) -> tuple:
        """For a cleaned document, (reason, None, None, None) if a filter removes it, else (None,
        duplicate key, split, JSONL line as UTF-8)."""
        detected = detect_lang(text)
        if not text:
            return "empty", None, None, None
        if len(text) < self.min_chars:
            return "too_short", None, None, None
        if detected is None:
            return "no_letters", None, None, None
        if self.lang != "auto" and detected != self.lang:
            return "lang_mismatch", None, None, None
        digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
        split = "validation" if int.from_bytes(digest[8:], "little") % 1_000_000 < self.threshold else "train"
        lang = self.lang if self.lang != "auto" else (given or detected)
        line = json.dumps({"text": text, "lang": lang}, ensure_ascii=False) + "\n"
        return None, int.from_bytes(digest[:8], "little"), split, line.encode()

    def __call__(self, docs: list[tuple[str, str | None]]) -> tuple[list, list[int], np.ndarray | None, list[int]]:
        """(raw text, language given by the record) -> a verdict per document, each cleaned text's
        length, and for the documents that passed (in order) their token ids + EOS, concatenated
        (int32), with each one's length."""
        texts = [clean_text(raw, keep_newlines=True) for raw, _ in docs]
        verdicts = [self.verdict(text, given) for text, (_, given) in zip(texts, docs)]
        chars = [len(text) for text in texts]
        passed = [text for text, v in zip(texts, verdicts) if v[0] is None]
        if self.tokenizer is None or not passed:
            return verdicts, chars, None, []
        eos = self.tokenizer.eos_token_id
        ids = self.token_ids(passed)
        lengths = [len(x) + 1 for x in ids]
        tokens = np.fromiter(chain.from_iterable(chain(x, (eos,)) for x in ids), dtype=np.int32, count=sum(lengths))
        return verdicts, chars, tokens, lengths


_WORK: DocumentWork | None = None  # a worker process's copy


def _init_worker(work: DocumentWork) -> None:
    global _WORK
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread a worker: the processes are the parallelism
    _WORK = work


def _work_in_worker(docs):
    return _WORK(docs)


class Workers:
    """``map_ordered(batches)``: (batch, work(batch's documents)) for each batch, in input order. With
    ``num_proc`` > 1 the work runs in that many processes, at most 2 x ``num_proc`` batches ahead of
    the consumer, so memory does not grow with the input; with 1 it runs here, one batch at a time.
    A context manager: the processes end (and are waited for, so ``os.times`` counts them) on exit;
    a worker that dies (killed for memory, say) fails the run with ``BrokenProcessPool``, no hang."""

    def __init__(self, work: DocumentWork, num_proc: int):
        self.work, self.num_proc, self.pool = work, num_proc, None
        if num_proc > 1:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            self.pool = ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_init_worker, initargs=(work,))
            self.pool.submit(int).result()  # start (fork) the workers now, before this process starts threads

    @staticmethod
    def _items(batch):
        return [(text, given) for _, text, _, given in batch]

    def map_ordered(self, batches: Iterable[list]) -> Iterator[tuple[list, tuple]]:
        if self.pool is None:
            for batch in batches:
                yield batch, self.work(self._items(batch))
            return
        pending = deque()
        for batch in batches:
            pending.append((batch, self.pool.submit(_work_in_worker, self._items(batch))))
            if len(pending) >= 2 * self.num_proc:
                batch, future = pending.popleft()
                yield batch, future.result()
        while pending:
            batch, future = pending.popleft()
            yield batch, future.result()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=exc_type is not None)


def document_batches(documents: Iterable[tuple]) -> Iterator[list]:
    """Consecutive documents ``(input, text, where, lang)`` in batches of about ``BATCH_CHARS``
    characters (at most ``BATCH_DOCS`` documents)."""
    batch, size = [], 0
    for doc in documents:
        batch.append(doc)
        size += len(doc[1])
        if size >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class BlockWriter:
    """Packs token streams (documents + EOS, in order) into blocks of ``block_size`` tokens and writes
    them as they fill to Arrow files in ``folder`` (``datasets``' own writer and column type), a new
    file every ``rows_per_shard`` blocks. ``close()`` drops the final tail shorter than a block and
    returns the number of blocks; ``shards`` lists the files in order."""

    def __init__(self, folder: Path, block_size: int, rows_per_shard: int):
        self.folder, self.block_size, self.rows_per_shard = folder, block_size, rows_per_shard
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.shards: list[Path] = []
        self.writer = None
        self.rows_in_shard = 0
        self.blocks = 0
        folder.mkdir(parents=True)

    def add(self, tokens: np.ndarray) -> None:
        self.pending.append(tokens)
        self.pending_tokens += len(tokens)
        if self.pending_tokens >= max(WRITE_TOKENS, self.block_size):
            self._write_full_blocks()

    def _write_full_blocks(self) -> None:
        stream = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        n = len(stream) // self.block_size
        tail = stream[n * self.block_size:].copy()
        self.pending, self.pending_tokens = [tail], len(tail)
        blocks = stream[: n * self.block_size].reshape(n, self.block_size)
        while len(blocks):
            if self.writer is None or self.rows_in_shard == self.rows_per_shard:
                self._next_shard()
            part, blocks = np.split(blocks, [self.rows_per_shard - self.rows_in_shard])
            offsets = np.arange(0, part.size + 1, self.block_size, dtype=np.int32)
            column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(part.reshape(-1)))
            self.writer.write_table(pa.table({"input_ids": column}))
            self.rows_in_shard += len(part)
            self.blocks += len(part)

    def _next_shard(self) -> None:
        self._close_shard()
        self.shards.append(self.folder / f"shard-{len(self.shards):05d}.arrow")
        self.writer = ArrowWriter(features=BLOCK_FEATURES, path=str(self.shards[-1]))
        self.rows_in_shard = 0

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer = None

    def close(self) -> int:
        if self.pending_tokens >= self.block_size:
            self._write_full_blocks()
        self._close_shard()
        return self.blocks


def finish_blocks_folder(writer: BlockWriter, fingerprint: str) -> None:
    """Name ``writer``'s shards and write the two JSON files as ``Dataset.save_to_disk`` does, so
    that ``load_from_disk`` (and the trainers' ``load_text_blocks``) read the folder as one dataset."""
    n = len(writer.shards)
    names = [f"data-{i:05d}-of-{n:05d}.arrow" for i in range(n)]
    for path, name in zip(writer.shards, names):
        os.replace(path, writer.folder / name)
    state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": fingerprint,
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    info = asdict(DatasetInfo(features=BLOCK_FEATURES))
    info["dataset_size"] = sum((writer.folder / name).stat().st_size for name in names)
    (writer.folder / datasets_config.DATASET_STATE_JSON_FILENAME).write_text(
        json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    (writer.folder / datasets_config.DATASET_INFO_FILENAME).write_text(
        json.dumps({k: info[k] for k in sorted(info)}, indent=2), encoding="utf-8")


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
    if args.num_proc < 1:
        raise ValueError(f"--num_proc must be >= 1, got {args.num_proc}")
    if args.shard_size_mb <= 0:
        raise ValueError(f"--shard_size_mb must be > 0, got {args.shard_size_mb}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(Arguments, argv)
    check_args(args)
    t0, cpu0 = time.perf_counter(), os.times()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = ("train", "validation") if args.validation_ratio > 0 else ("train",)
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        if tokenizer.eos_token_id is None:
            raise ValueError(f"--tokenizer {args.tokenizer} has no EOS token to separate documents")
    per_input = defaultdict(lambda: {"documents_read": 0, "kept": defaultdict(int), "chars_kept": 0,
                                     "removed": defaultdict(int), "examples": defaultdict(list)})
    seen = set()  # 8-byte hashes of the kept documents (about 70 bytes of memory a document)
    tmp = {s: out / f"{s}.jsonl.tmp" for s in splits}
    staging = {s: out / f"{s}_blocks.tmp" for s in splits} if tokenizer else {}
    try:
        with ExitStack() as stack:
            work = DocumentWork(args.lang, args.min_chars, args.validation_ratio, tokenizer)
            workers = stack.enter_context(Workers(work, args.num_proc))
            files = {s: stack.enter_context(open(p, "wb")) for s, p in tmp.items()}
            rows_per_shard = max(1, int(args.shard_size_mb * 1e6) // (4 * args.block_size))
            for p in staging.values():
                shutil.rmtree(p, ignore_errors=True)
            packers = {s: BlockWriter(p, args.block_size, rows_per_shard) for s, p in staging.items()}
            progress = stack.enter_context(tqdm(desc="documents", unit=" docs", mininterval=1.0))
            documents = iter_raw_documents(args.inputs, stack, args.encoding, args.plain_text_unit, args.exclude)
            for batch, (verdicts, chars, tokens, lengths) in workers.map_ordered(document_batches(documents)):
                bounds = np.cumsum([0, *lengths]).tolist()  # the i-th document that passed: tokens[bounds[i]:...]
                passed = 0
                kept = defaultdict(list)  # split -> token arrays of the documents kept, in order
                for (spec, _, where, _), (reason, ident, split, line), n_chars in zip(batch, verdicts, chars):
                    st = per_input[spec]
                    st["documents_read"] += 1
                    if reason is None:
                        i, passed = passed, passed + 1
                        if ident in seen:
                            reason = "duplicate"
                    if reason:
                        st["removed"][reason] += 1
                        if len(st["examples"][reason]) < 3:
                            st["examples"][reason].append(where)
                        continue
                    seen.add(ident)
                    files[split].write(line)
                    st["kept"][split] += 1
                    st["chars_kept"] += n_chars
                    if tokens is not None:
                        kept[split].append(tokens[bounds[i]: bounds[i + 1]])
                for split, parts in kept.items():
                    packers[split].add(np.concatenate(parts))
                progress.update(len(batch))
            for packer in packers.values():
                packer.close()
        for s in splits:
            os.replace(tmp[s], out / f"{s}.jsonl")
        report = {
            "inputs": {k: {**v, "kept": dict(v["kept"]),
                           "removed": {f: v["removed"][f] for f in FILTERS if v["removed"].get(f)},
                           "examples": dict(v["examples"])} for k, v in per_input.items()},
            "documents": {s: sum(v["kept"][s] for v in per_input.values()) for s in splits},
            "arguments": asdict(args),
        }
        if tokenizer is not None:
            report["blocks"] = {"block_size": args.block_size, "tokenizer": args.tokenizer, "shards": {}}
            for s in splits:
                jsonl, packer = out / f"{s}.jsonl", packers[s]
                if packer.blocks == 0:  # the trainers' own packing of this file would refuse it the same way
                    empty = "no text" if report["documents"][s] == 0 else \
                        f"fewer tokens than one block of {args.block_size}"
                    raise DataError(f"{jsonl}: {empty}")
                fingerprint = Hasher.hash([file_fingerprint(str(jsonl)), args.tokenizer, args.block_size])
                finish_blocks_folder(packer, fingerprint)
                final = out / f"{s}_blocks"
                if final.exists():
                    shutil.rmtree(final)
                os.replace(staging[s], final)
                report["blocks"][s] = packer.blocks
                report["blocks"]["shards"][s] = len(packer.shards)
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        for p in staging.values():
            shutil.rmtree(p, ignore_errors=True)

    cpu = os.times()
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["cpu_seconds"] = {"main": round(cpu.user + cpu.system - cpu0.user - cpu0.system, 2),
                             "workers": round(cpu.children_user + cpu.children_system
                                              - cpu0.children_user - cpu0.children_system, 2)}
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
