from itertools import islice

import pytest
import torch

from common.data import (
    DataError,
    LengthGroupedBatchSampler,
    ParallelCollator,
    ShardedBatches,
    dataset_from_rows,
    endless_batches,
    iter_mono_texts,
    iter_packed_blocks,
    iter_parallel_jsonl,
    load_text_blocks,
    trim_padding,
)
from common.demo import train_demo_tokenizer


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_parallel_reader_reads_pairs_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"ko": "안녕", "en": "hi", "source": "x"}\n\n{"ko": "네", "en": "yes"}\n')
    assert list(iter_parallel_jsonl(path)) == [{"ko": "안녕", "en": "hi", "source": "x"},
                                               {"ko": "네", "en": "yes", "source": ""}]


@pytest.mark.parametrize("bad_line, message", [
    ('{"ko": "안녕"', "not valid JSON"),
    ('["안녕", "hi"]', "expected a JSON object"),
    ('{"ko": "안녕"}', "missing field 'en'"),
    ('{"ko": "  ", "en": "hi"}', "field 'ko' is empty"),
    ('{"ko": "안녕", "en": 3}', "field 'en' must be a string"),
])
def test_parallel_reader_names_file_and_line(tmp_path, bad_line, message):
    path = write(tmp_path, "p.jsonl", '{"ko": "네", "en": "yes"}\n{"ko": "네", "en": "yes"}\n' + bad_line + "\n")
    with pytest.raises(DataError, match=f"p.jsonl:3: {message}"):
        list(iter_parallel_jsonl(path))


@pytest.mark.parametrize("bad_line, where", [
    ('{"ko": "안녕", "en": "hi"', "at the end of the line"),  # cut short: was "at column 1" (of the next line)
    ('{"ko": "안녕", "en": "hi', "at column 20"),  # "Unterminated string starting at": its opening quote
    ('{"ko": "안녕" "en": "hi"}', "at column 13"),  # the second key, where the comma is missing
    ('{"ko": "안녕", "en": "hi"} x', "at column 26"),
    ("x", "at column 1"),
])
def test_malformed_json_names_the_column_of_the_mistake(tmp_path, bad_line, where):
    for end in ("\n", "\r\n", ""):
        path = write(tmp_path, "p.jsonl", '{"ko": "네", "en": "yes"}\n' + bad_line + end)
        with pytest.raises(DataError, match=r"p.jsonl:2: not valid JSON \([^)]* " + where + r"\)$"):
            list(iter_parallel_jsonl(path))
    if where.startswith("at column"):  # the column points at the character the parser stopped at
        assert bad_line[int(where.split()[-1]) - 1] in 'x"'


def test_mono_reader_jsonl_and_plain(tmp_path):
    assert list(iter_mono_texts(write(tmp_path, "m.jsonl", '{"text": "가나", "lang": "ko"}\n'))) == ["가나"]
    assert list(iter_mono_texts(write(tmp_path, "m.txt", "one\n\ntwo\n"))) == ["one", "two"]
    with pytest.raises(DataError, match="m2.jsonl:2: expected a JSON object with a 'text' field"):
        list(iter_mono_texts(write(tmp_path, "m2.jsonl", '{"text": "a"}\n{"txt": "b"}\n')))


def test_packing_loses_and_repeats_nothing_but_the_tail():
    docs = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    blocks = list(iter_packed_blocks(docs, block_size=4, eos_token_id=2))
    assert blocks == [[5, 6, 7, 2], [8, 2, 9, 10], [11, 12, 13, 2]]
    blocks = list(iter_packed_blocks(docs + [[14]], block_size=4, eos_token_id=2))
    assert sum(blocks, []) == [5, 6, 7, 2, 8, 2, 9, 10, 11, 12, 13, 2]  # tail [14, 2] dropped


@pytest.mark.parametrize("group", [True, False])
def test_sampler_covers_each_index_once_per_epoch_and_is_deterministic(group):
    lengths = [int(x) for x in torch.randint(1, 50, (103,), generator=torch.Generator().manual_seed(0))]
    s = LengthGroupedBatchSampler(lengths, batch_size=8, seed=3, group_by_length=group, mega_batch_mult=4)
    epoch0 = list(s)
    assert len(epoch0) == len(s) == 12 and all(len(b) == 8 for b in epoch0)
    flat = sum(epoch0, [])
    assert len(set(flat)) == len(flat) == 96  # 7 left over: the tail that cannot fill a batch
    assert list(s) == epoch0  # same (seed, epoch), same plan: what resume relies on
    s.set_epoch(1)
    assert list(s) != epoch0
    if group:  # the longest item is in the first batch
        assert max(lengths[i] for i in epoch0[0]) == max(lengths[i] for i in flat)


def test_length_grouping_reduces_padding():
    lengths = [int(x) for x in torch.randint(5, 120, (2000,), generator=torch.Generator().manual_seed(0))]
    def padded_tokens(sampler):
        return sum(len(b) * max(lengths[i] for i in b) for b in sampler)
    grouped = padded_tokens(LengthGroupedBatchSampler(lengths, 16, group_by_length=True))
    random = padded_tokens(LengthGroupedBatchSampler(lengths, 16, group_by_length=False))
    assert grouped < 0.75 * random


def test_one_to_one_cycling():
    big = LengthGroupedBatchSampler([1] * 40, batch_size=4, seed=0, group_by_length=False)  # 10 batches
    small = LengthGroupedBatchSampler([1] * 12, batch_size=4, seed=1, group_by_length=False)  # 3 batches
    steps = max(len(big), len(small))
    pairs = list(islice(zip(endless_batches(big), endless_batches(small)), 2 * steps))
    epoch = pairs[:steps]
    # the larger stream: every item exactly once in an epoch
    assert sorted(sum((a for a, _ in epoch), [])) == list(range(40))
    # the smaller: one batch per step, restarted whenever exhausted, each pass a full reshuffled pass
    small_seq = [b for _, b in pairs]
    passes = [small_seq[i : i + 3] for i in range(0, 18, 3)]
    for p in passes:
        assert sorted(sum(p, [])) == list(range(12))
    assert len({tuple(map(tuple, p)) for p in passes}) > 1
    # the second epoch of the larger stream is reshuffled too
    assert [a for a, _ in pairs[steps:]] != [a for a, _ in epoch]


def test_endless_batches_resume_mid_epoch():
    s = LengthGroupedBatchSampler(list(range(30)), batch_size=4, seed=0)
    stream = endless_batches(s)
    first = [next(stream) for _ in range(17)]
    resumed = endless_batches(LengthGroupedBatchSampler(list(range(30)), batch_size=4, seed=0), start=9)
    assert [next(resumed) for _ in range(8)] == first[9:]


def test_sharded_batches_split_global_batches_in_rank_order():
    s = LengthGroupedBatchSampler(list(range(64)), batch_size=8, seed=0)
    global_batches = [b for b, _ in zip(endless_batches(s), range(5))]
    shards = [[b for b, _ in zip(ShardedBatches(s, 0, rank, 2), range(5))] for rank in range(2)]
    for step in range(5):
        assert shards[0][step] + shards[1][step] == global_batches[step]
    with pytest.raises(ValueError, match="does not split"):
        ShardedBatches(s, 0, 0, 3)


def test_parallel_collator_pads_each_side_dynamically():
    tok = train_demo_tokenizer(["a b c d e", "가 나 다"])
    rows = [{"ko_ids": [1, 5], "en_ids": [1, 6, 7, 8]}, {"ko_ids": [1, 5, 6], "en_ids": [1, 9]}]
    out = ParallelCollator(tok)(rows)
    assert out["ko_input_ids"].tolist() == [[1, 5, tok.pad_token_id], [1, 5, 6]]
    assert out["ko_attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert out["en_input_ids"].shape == (2, 4)
    assert ParallelCollator(tok, pad_to_multiple_of=8)(rows)["en_input_ids"].shape == (2, 8)
    tok.padding_side = "left"  # as the Llama-2 tokenizer's: the pairs are still padded on the right
    assert ParallelCollator(tok)(rows)["ko_input_ids"].tolist() == [[1, 5, tok.pad_token_id], [1, 5, 6]]


@pytest.mark.parametrize("multiple", [None, 4])
def test_a_chunk_trimmed_of_padding_is_the_chunk_collated_alone(multiple):
    tok = train_demo_tokenizer(["a b c d e", "가 나 다"])
    rows = [{"ko_ids": [1] + [5] * n, "en_ids": [1] + [6] * (9 - n)} for n in (1, 7, 2, 3, 8, 1)]
    collate = ParallelCollator(tok, pad_to_multiple_of=multiple)
    whole = collate(rows)
    for chunk in (slice(0, 1), slice(2, 4), slice(4, 6)):
        trimmed = trim_padding({k: v[chunk] for k, v in whole.items()}, multiple)
        alone = collate(rows[chunk])
        assert trimmed.keys() == alone.keys()
        for key in alone:
            assert torch.equal(trimmed[key], alone[key]), (chunk, key)


def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
    path = tmp_path / "cp949.txt"
    path.write_bytes("첫 줄\n".encode() + "둘째 줄\n".encode("cp949"))
    with pytest.raises(DataError, match=r"cp949.txt:2: not UTF-8 text"):
        list(iter_mono_texts(str(path)))


def test_empty_or_too_short_inputs_are_data_errors(tmp_path):
    tokenizer = train_demo_tokenizer(["가 나 다", "a b c"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.jsonl: no pairs"):
        dataset_from_rows(iter_parallel_jsonl, str(empty), empty="no pairs")
    short = tmp_path / "short.txt"
    short.write_text("가 나\n", encoding="utf-8")
    with pytest.raises(DataError, match="short.txt: fewer tokens than one block of 64"):
        load_text_blocks(str(short), tokenizer, 64)
    assert len(load_text_blocks(str(short), tokenizer, 2)) == 2  # BOS 가 나 EOS
