"""Data for the trainers: validated readers, length-grouped batches, 1:1 cycling of two streams, collators.

Batches are planned as GLOBAL batches (all processes together) by a sampler that depends only on
(seed, epoch); each process then takes its slice. So the in-batch negatives of a step are the same
whatever the number of processes, and resuming at step k only needs k, not a saved sampler state.
"""

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

import numpy as np
import torch
from datasets import Dataset, load_from_disk
from datasets.exceptions import DatasetGenerationError
from datasets.fingerprint import Hasher


class DataError(ValueError):
    """Bad input data; the message names the file and the line."""


def parse_json_line(line: str, where: str):
    """``json.loads`` with an error that names ``where`` (``path:line``) and the column, instead of a library
    traceback. The line end is not part of the JSON: left on, a line cut short would be reported at "line 2,
    column 1", past its end."""
    text = line.rstrip("\r\n")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = "at the end of the line" if e.pos >= len(text) else f"at column {e.pos + 1}"
        raise DataError(f"{where}: not valid JSON ({e.msg} {at})") from None


def numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, a BOM and Windows line ends removed; bytes that are
    not UTF-8 raise ``DataError`` naming their line (lines are decoded one by one for that)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            yield lineno, line.replace("\r\n", "\n")


def iter_parallel_jsonl(path: str) -> Iterator[dict]:
    """Yield ``{"ko", "en", "source"}`` from a parallel JSONL file, checking every line.

    A line that is not a JSON object, lacks ``ko`` or ``en``, has a non-string or empty side
    raises ``DataError`` naming ``path:line``. Blank lines are allowed (they carry no pair).
    """
    for lineno, line in numbered_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        row = parse_json_line(line, where)
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object with 'ko' and 'en', got {type(row).__name__}")
        for side in ("ko", "en"):
            if side not in row:
                raise DataError(f"{where}: missing field {side!r} (fields: {sorted(row)})")
            if not isinstance(row[side], str):
                raise DataError(f"{where}: field {side!r} must be a string, got {type(row[side]).__name__}")
            if not row[side].strip():
                raise DataError(f"{where}: field {side!r} is empty")
        yield {"ko": row["ko"], "en": row["en"], "source": str(row.get("source", ""))}


def iter_mono_texts(path: str) -> Iterator[str]:
    """Yield documents from monolingual text: JSONL ``{"text", "lang"}`` (``.jsonl``/``.json``), else plain
    text with one document per non-blank line. A JSONL line without a non-empty string ``text``
    raises ``DataError`` naming ``path:line``."""
    is_jsonl = path.endswith((".jsonl", ".json"))
    for lineno, line in numbered_lines(path):
        if not line.strip():
            continue
        if not is_jsonl:
            yield line.rstrip("\n")
            continue
        where = f"{path}:{lineno}"
        row = parse_json_line(line, where)
        if not isinstance(row, dict) or "text" not in row:
            raise DataError(f"{where}: expected a JSON object with a 'text' field")
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise DataError(f"{where}: field 'text' must be a non-empty string")
        yield row["text"]


def file_fingerprint(path: str) -> str:
    """Size and modification time, so a cache built from ``path`` is rebuilt when the file changes."""
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def iter_packed_blocks(token_lists: Iterable[Sequence[int]], block_size: int, eos_token_id: int) -> Iterator[list[int]]:
    """Concatenate documents, each followed by EOS (the boundary the model sees), and cut the stream
    into blocks of ``block_size`` tokens as it goes. Only the final tail shorter than a block is
    dropped; no token is lost or repeated at block or document boundaries."""
    buffer: list[int] = []
    for ids in token_lists:
        buffer.extend(ids)
        buffer.append(eos_token_id)
        while len(buffer) >= block_size:
            yield buffer[:block_size]
            del buffer[:block_size]


class LengthGroupedBatchSampler:
    """Global batches of dataset indices, shuffled per epoch, optionally grouped by length.

    Each epoch, the indices are shuffled with a generator seeded by (seed, epoch); the tail that
    does not fill a batch is dropped (InfoNCE gathers equal shards from every process). With
    ``group_by_length``, the shuffled order is cut into mega-batches of ``mega_batch_mult`` batches,
    each sorted by length and split into batches, and the batch order is shuffled again; the batch
    holding the longest item goes first, so an out-of-memory shows at step 1 and not hours later.
    Similar lengths in a batch mean little padding; the contents stay random at the scale of a
    mega-batch. Deterministic given (seed, epoch), which is what exact resume relies on.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_by_length: bool = True,
                 shuffle: bool = True, mega_batch_mult: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(lengths) < batch_size:
            raise ValueError(f"{len(lengths)} examples cannot fill one batch of {batch_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.shuffle = shuffle
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.lengths)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        order = order[: len(self) * self.batch_size]
        if self.group_by_length:
            mega = self.batch_size * self.mega_batch_mult
            chunks = [order[i : i + mega] for i in range(0, len(order), mega)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = order.reshape(len(self), self.batch_size)
        if self.group_by_length:
            batches = batches[rng.permutation(len(batches))]
            longest = int(np.argmax(self.lengths[batches].max(axis=1)))
            batches[[0, longest]] = batches[[longest, 0]]
        yield from (b.tolist() for b in batches)


def endless_batches(sampler: LengthGroupedBatchSampler, start: int = 0) -> Iterator[list[int]]:
    """The sampler's batches as an endless stream, from batch ``start`` counted from the first epoch.

    Each pass over the data calls ``set_epoch(pass)`` first, so a stream that restarts is
    reshuffled. Zipping two such streams gives the 1:1 cycling of the trainers: one step takes one
    batch of each, one epoch is ``max(len(a), len(b))`` steps, so the larger stream is seen once per
    epoch and the smaller one restarts, reshuffled, whenever it is exhausted.
    """
    epoch, offset = divmod(start, len(sampler))
    while True:
        sampler.set_epoch(epoch)
        for i, batch in enumerate(sampler):
            if i >= offset:
                yield batch
        epoch, offset = epoch + 1, 0


class ShardedBatches:
    """Batch sampler for a ``DataLoader``: this process's slice of each global batch of ``endless_batches``.

    Rank r of W takes items [r * b, (r + 1) * b) of each global batch, b = batch size / W, so the
    concatenation over ranks is the global batch in order (the layout ``info_nce`` assumes).
    """

    def __init__(self, sampler: LengthGroupedBatchSampler, start: int = 0, rank: int = 0, world_size: int = 1):
        if sampler.batch_size % world_size:
            raise ValueError(f"global batch {sampler.batch_size} does not split over {world_size} processes")
        self.sampler, self.start, self.rank, self.world_size = sampler, start, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        b = self.sampler.batch_size // self.world_size
        for batch in endless_batches(self.sampler, self.start):
            yield batch[self.rank * b : (self.rank + 1) * b]


def text_key(ids: Sequence[int]) -> int:
    """A 63-bit identity of a token sequence: equal sequences have equal keys, different ones collide
    with probability about 1e-19 per pair. Used to find duplicate sentences in a batch."""
    digest = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ParallelCollator:
    """Collate tokenized pairs ``{"ko_ids", "en_ids"}`` into padded tensors, each side padded to its own
    longest sequence (dynamic padding), optionally to a multiple of N for tensor cores.

    Always on the right, whatever the tokenizer's ``padding_side`` (Llama-2's is left). On one H200 (bf16,
    sdpa, the 1.3B architecture), three stage-1 runs padded on the left reached a NaN loss within 20 steps
    and the same runs padded on the right did not. Under a causal mask a left pad position attends to
    nothing (a fully masked row), the likely cause, though a 4-layer check (bench/check_padding.py) did not
    reproduce it; on the right every position sees at least the sentence's first token.

    Returns ``ko_input_ids``, ``ko_attention_mask``, ``en_input_ids``, ``en_attention_mask`` (B, T_side),
    and, when the rows carry ``ko_key`` and ``en_key`` (``text_key`` of each side), ``pair_keys`` (B, 2).
    """

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        out = {}
        for side in ("ko", "en"):
            padded = self.tokenizer.pad(  # on the right, whatever the tokenizer's side (see the docstring)
                {"input_ids": [r[f"{side}_ids"] for r in rows]}, padding="longest", padding_side="right",
                pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt",
            )
            out[f"{side}_input_ids"] = padded["input_ids"]
            out[f"{side}_attention_mask"] = padded["attention_mask"]
        if rows and "ko_key" in rows[0]:
            out["pair_keys"] = torch.tensor([[r["ko_key"], r["en_key"]] for r in rows], dtype=torch.long)
        return out


def trim_padding(batch: dict[str, torch.Tensor], multiple: int | None = None) -> dict[str, torch.Tensor]:
    """``batch`` (ParallelCollator's output, or rows of it) with each side cut to its own longest sentence,
    rounded up to a ``multiple``: the same as collating those rows alone. Gradient caching's chunks would
    otherwise carry the padding of the whole batch's longest sentence."""
    out = dict(batch)
    for side in ("ko", "en"):
        mask = batch[f"{side}_attention_mask"]
        n = int(mask.sum(dim=1).max())  # right padding: the real tokens are a prefix
        if multiple:
            n = -(-n // multiple) * multiple
        out[f"{side}_input_ids"], out[f"{side}_attention_mask"] = batch[f"{side}_input_ids"][:, :n], mask[:, :n]
    return out


def dataset_from_rows(iter_rows, path: str, empty: str = "no data", **kwargs) -> Dataset:
    """A cached ``Dataset`` of the rows ``iter_rows(path, **kwargs)`` yields, rebuilt when the file,
    the reader or its arguments change. A ``DataError`` raised while reading surfaces as itself
    (file:line), not wrapped by the library; a reader that yields nothing is ``DataError(path: empty)``."""
    fingerprint = Hasher.hash([file_fingerprint(path), iter_rows.__module__, iter_rows.__qualname__, kwargs])
    try:
        return Dataset.from_generator(iter_rows, gen_kwargs={"path": path, **kwargs}, fingerprint=fingerprint)
    except DatasetGenerationError as e:
        if isinstance(e.__cause__, DataError):
            raise e.__cause__ from None
        if next(iter_rows(path, **kwargs), None) is None:  # the library refuses an empty generator
            raise DataError(f"{path}: {empty}") from None
        raise


def _packed_rows(path: str, tokenizer, block_size: int) -> Iterator[dict]:
    def tokenized():
        docs = iter_mono_texts(path)
        while chunk := list(islice(docs, 1000)):  # the fast tokenizer works on batches
            yield from tokenizer(chunk)["input_ids"]
    for block in iter_packed_blocks(tokenized(), block_size, tokenizer.eos_token_id):
        yield {"input_ids": block}


def load_text_blocks(path: str, tokenizer, block_size: int, max_context: int | None = None) -> Dataset:
    """Monolingual text as a ``Dataset`` of ``input_ids`` blocks of ``block_size`` tokens.

    ``path`` is JSONL ``{"text", "lang"}`` or plain text, tokenized and packed here in one stream
    (EOS after each document, only the final tail dropped) and cached by ``datasets`` until the
    file, the tokenizer or the block size changes; or a folder written by
    ``data_prep/prepare_mono.py`` with ``save_to_disk`` (already packed; its block length must
    equal ``block_size``).
    """
    if max_context is not None and block_size > max_context:
        raise ValueError(f"--block_size {block_size} exceeds the model's context of {max_context} tokens")
    if os.path.isdir(path):
        blocks = load_from_disk(path)
        if "input_ids" not in blocks.column_names or len(blocks) == 0:
            raise DataError(f"{path}: expected a non-empty dataset folder with an 'input_ids' column")
        if len(blocks[0]["input_ids"]) != block_size:
            raise DataError(f"{path}: blocks of {len(blocks[0]['input_ids'])} tokens, but --block_size is {block_size}")
        return blocks
    if not any(True for _ in iter_mono_texts(path)):
        raise DataError(f"{path}: no text")
    return dataset_from_rows(_packed_rows, path, empty=f"fewer tokens than one block of {block_size}",
                             tokenizer=tokenizer, block_size=block_size)


def iter_instructions(path: str) -> Iterator[dict]:
    """Yield ``{"prompt", "response"}`` from instruction JSONL, checking every line (``DataError`` names
    ``path:line``); the prompt may be empty, the response may not."""
    for lineno, line in numbered_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        row = parse_json_line(line, where)
        if not isinstance(row, dict) or "prompt" not in row or "response" not in row:
            raise DataError(f"{where}: expected a JSON object with 'prompt' and 'response'")
        if not isinstance(row["prompt"], str) or not isinstance(row["response"], str) or not row["response"].strip():
            raise DataError(f"{where}: 'prompt' must be a string and 'response' a non-empty string")
        yield {"prompt": row["prompt"], "response": row["response"]}


def tokenize_instruction(tokenizer, prompt: str, response: str, max_length: int) -> dict[str, list[int]]:
    """Prompt (with the tokenizer's BOS) followed by response + EOS, truncated to ``max_length``.
    ``labels`` are -100 on the prompt, so only the response (and its EOS) carries loss."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def sample_indices(sources: Sequence[str], n: int, seed: int) -> list[int]:
    """A seeded random sample of ``min(n, len(sources))`` row indices over the whole file, stratified by source;
    sorted. ``sources[i]`` is row i's source.

    Allocation is proportional: source s of size N_s gets floor(n N_s / N), and the rows still missing go
    one each to the largest remainders (n N_s mod N; ties to the larger source, then the smaller name).
    When n is at least the number of sources, a source left at 0 then takes one row from the source whose
    count most exceeds its exact share n N_s / N (among those with 2 or more; ties to the larger source),
    so every source is seen.
    Within a source, the rows are the first of that source in one permutation of all N rows seeded by
    ``seed``, so the sample depends only on (sources, n, seed).
    """
    total = len(sources)
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    if n >= total:
        return list(range(total))
    sizes: dict[str, int] = {}
    for s in sources:
        sizes[s] = sizes.get(s, 0) + 1
    names = sorted(sizes)
    count = {s: n * sizes[s] // total for s in names}
    by_remainder = sorted(names, key=lambda s: (-(n * sizes[s] % total), -sizes[s], s))
    for s in by_remainder[: n - sum(count.values())]:
        count[s] += 1
    if n >= len(names):
        for s in names:
            if count[s] == 0:  # the excess over the exact share, compared as n N_s - count N
                donor = max((d for d in names if count[d] >= 2),
                            key=lambda d: (count[d] * total - n * sizes[d], sizes[d], d))
                count[donor] -= 1
                count[s] = 1
    taken = dict.fromkeys(names, 0)
    chosen = []
    for i in np.random.default_rng(seed).permutation(total).tolist():
        s = sources[i]
        if taken[s] < count[s]:
            taken[s] += 1
            chosen.append(i)
    return sorted(chosen)
