"""Data for the trainers: validated readers, length-grouped batches, 1:1 cycling of two streams, collators.

Batches are planned as GLOBAL batches (all processes together) by a sampler that depends only on
(seed, epoch); each process then takes its slice. So the in-batch negatives of a step are the same
whatever the number of processes, and resuming at step k only needs k, not a saved sampler state.
"""

import json
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch


class DataError(ValueError):
    """Bad input data; the message names the file and the line."""


def parse_json_line(line: str, where: str):
    """``json.loads`` with an error that names ``where`` (``path:line``) instead of a library traceback."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None


def iter_parallel_jsonl(path: str) -> Iterator[dict]:
    """Yield ``{"ko", "en", "source"}`` from a parallel JSONL file, checking every line.

    A line that is not a JSON object, lacks ``ko`` or ``en``, has a non-string or empty side
    raises ``DataError`` naming ``path:line``. Blank lines are allowed (they carry no pair).
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
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
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
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


def pack_blocks(token_lists: Sequence[Sequence[int]], block_size: int, eos_token_id: int) -> list[list[int]]:
    """Concatenate documents, each followed by EOS (the boundary the model sees), and cut the stream
    into blocks of ``block_size`` tokens. The tail shorter than a block is dropped; nothing else is
    lost or repeated."""
    stream = [t for ids in token_lists for t in (*ids, eos_token_id)]
    usable = len(stream) - len(stream) % block_size
    return [stream[i : i + block_size] for i in range(0, usable, block_size)]


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


class ParallelCollator:
    """Collate tokenized pairs ``{"ko_ids", "en_ids"}`` into padded tensors, each side padded to its own
    longest sequence (dynamic padding), optionally to a multiple of 8 for tensor cores.

    Returns ``ko_input_ids``, ``ko_attention_mask``, ``en_input_ids``, ``en_attention_mask`` (B, T_side).
    """

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        out = {}
        for side in ("ko", "en"):
            padded = self.tokenizer.pad(
                {"input_ids": [r[f"{side}_ids"] for r in rows]},
                padding="longest", pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt",
            )
            out[f"{side}_input_ids"] = padded["input_ids"]
            out[f"{side}_attention_mask"] = padded["attention_mask"]
        return out
