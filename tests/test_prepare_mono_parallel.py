"""prepare_mono.py with --num_proc: the same JSONL and packed blocks for every number of processes,
blocks in shards that the trainers' reader loads, bounded work in flight."""

import json
import os
import pickle
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from pathlib import Path

import pytest
from datasets import load_from_disk

from common.data import DataError, load_text_blocks
from common.demo import train_demo_tokenizer
from data_prep import prepare_mono
from data_prep.sources import iter_clean_documents


def make_corpus(folder: Path) -> list[str]:
    """Wiki-extractor and plain-text files: documents of very different lengths, Korean and English,
    duplicates, an empty one and invisible characters, so batches, blocks and shards all cut mid-stream."""
    folder.mkdir()
    texts = [f"문서 {i}번: " + "한국어 문장이 여기 있습니다. " * (i % 13 + 1) + ("긴 글 " * 200 if i % 37 == 0 else "")
             for i in range(260)]
    texts[7] = "An English document among the Korean ones, long enough to matter."
    texts[200] = texts[160]  # a duplicate (plain text: the wiki documents carry their own title)
    with open(folder / "wiki_00", "w", encoding="utf-8") as f:
        for i, text in enumerate(texts[:150]):
            f.write(f'<doc id="{i}" url="u" title="t{i}">\n제목 {i}\n\n{text}\u200b\n</doc>\n')
    (folder / "plain.txt").write_text("\n".join(texts[150:]) + "\n\n \u200b\n", encoding="utf-8")
    return texts


@pytest.fixture
def corpus(tmp_path):
    texts = make_corpus(tmp_path / "in")
    tok = train_demo_tokenizer(texts, vocab_size=300)
    tok.save_pretrained(tmp_path / "tok")
    return tmp_path / "in", tmp_path / "tok", tok


def prepare(out, inputs, tok_dir, *extra):
    return prepare_mono.main(["--inputs", str(inputs), "--lang", "auto", "--tokenizer", str(tok_dir),
                              "--block_size", "64", "--validation_ratio", "0.2", "--output_dir", str(out), *extra])


def blocks_of(folder: Path) -> list[list[int]]:
    return load_from_disk(str(folder))["input_ids"]


def test_num_proc_gives_the_same_jsonl_and_blocks(tmp_path, corpus, monkeypatch):
    """N = 1, 2, 3 processes: byte-identical JSONL, the same blocks in the same order (equal to the
    trainers' own packing of the JSONL: nothing lost or reordered but the final tail), the same counts
    and the same shards, with small batches, pieces and shards so that every boundary falls mid-stream."""
    inputs, tok_dir, tok = corpus
    monkeypatch.setattr(prepare_mono, "BATCH_CHARS", 700)  # ~60 batches, spread over the workers
    monkeypatch.setattr(prepare_mono, "WRITE_TOKENS", 150)  # blocks written in pieces as they fill
    outs = {}
    for n in (1, 2, 3):
        report = prepare(tmp_path / f"n{n}", inputs, tok_dir, "--num_proc", str(n), "--shard_size_mb", "0.002")
        outs[n] = report
    reference = tmp_path / "n1"
    assert report["blocks"]["shards"]["train"] > 3  # 0.002 MB: 7 blocks of 64 int32 a shard
    for n in (2, 3):
        assert {k: v for k, v in outs[n].items() if k not in ("seconds", "cpu_seconds", "arguments")} == \
            {k: v for k, v in outs[1].items() if k not in ("seconds", "cpu_seconds", "arguments")}
        assert outs[n]["cpu_seconds"]["workers"] > 0 and outs[1]["cpu_seconds"]["workers"] == 0
        for split in ("train", "validation"):
            assert (tmp_path / f"n{n}" / f"{split}.jsonl").read_bytes() == (reference / f"{split}.jsonl").read_bytes()
            assert blocks_of(tmp_path / f"n{n}" / f"{split}_blocks") == blocks_of(reference / f"{split}_blocks")
            names = sorted(p.name for p in (tmp_path / f"n{n}" / f"{split}_blocks").iterdir())
            assert names == sorted(p.name for p in (reference / f"{split}_blocks").iterdir())
    for split in ("train", "validation"):
        jsonl = reference / f"{split}.jsonl"
        blocks = blocks_of(reference / f"{split}_blocks")
        assert blocks == load_text_blocks(str(jsonl), tok, 64)["input_ids"]  # what the trainers pack from text
        docs = [json.loads(line)["text"] for line in jsonl.read_text(encoding="utf-8").splitlines()]
        stream = [t for d in docs for t in (*tok(d)["input_ids"], tok.eos_token_id)]
        assert sum(blocks, []) == stream[: len(stream) // 64 * 64] and len(blocks) == outs[1]["blocks"][split]
    assert outs[1]["inputs"][str(inputs)]["removed"] == {"empty": 1, "duplicate": 1}


def test_shards_load_through_the_trainers_reader(tmp_path, corpus):
    """The blocks folder is several ``data-0000i-of-0000K.arrow`` files in the ``save_to_disk`` layout:
    ``load_from_disk`` and ``load_text_blocks`` (the trainers' --lm_train_file) read them as one
    dataset with the column type the trainers' own packing gives; the block length is still checked."""
    inputs, tok_dir, tok = corpus
    report = prepare(tmp_path / "out", inputs, tok_dir, "--shard_size_mb", "0.005", "--num_proc", "2")
    folder = tmp_path / "out" / "train_blocks"
    shards = sorted(p.name for p in folder.glob("*.arrow"))
    k = report["blocks"]["shards"]["train"]
    assert k > 2 and shards == [f"data-{i:05d}-of-{k:05d}.arrow" for i in range(k)]
    assert not (tmp_path / "out" / "train_blocks.tmp").exists()
    blocks = load_text_blocks(str(folder), tok, 64)
    reference = load_text_blocks(str(tmp_path / "out" / "train.jsonl"), tok, 64)
    assert blocks.features == reference.features and blocks["input_ids"] == reference["input_ids"]
    assert len(blocks) == report["blocks"]["train"]
    with pytest.raises(DataError, match="blocks of 64 tokens, but --block_size is 32"):
        load_text_blocks(str(folder), tok, 32)
    # a rerun replaces the folder, shards of an earlier run included
    report = prepare(tmp_path / "out", inputs, tok_dir, "--num_proc", "2")
    assert report["blocks"]["shards"]["train"] == 1 and len(list(folder.glob("*.arrow"))) == 1


class Lowercasing:
    """A tokenizer with Python-side processing that its Rust backend does not do."""

    def __init__(self, tok):
        self.tok, self.backend_tokenizer, self.eos_token_id = tok, tok.backend_tokenizer, tok.eos_token_id

    def __call__(self, texts):
        return self.tok([t.lower() for t in texts])


def test_the_fast_token_path_gives_the_tokenizers_own_ids(tmp_path, corpus, monkeypatch):
    """Tokens come from the Rust tokenizer's encode_batch_fast only where it gives what ``tokenizer()``
    gives (checked on probe texts): not for a tokenizer that processes text in Python. A backend set to
    truncate (as a tokenizer.json may say) is reset by the probe's ``tokenizer()`` call, as every call
    resets it. Both paths pack the same blocks."""
    inputs, tok_dir, tok = corpus
    assert prepare_mono._fast_ids_equal(tok) and not prepare_mono._fast_ids_equal(Lowercasing(tok))
    truncating = train_demo_tokenizer(["한국어 문장", "English text"], vocab_size=300)
    truncating.backend_tokenizer.enable_truncation(4)
    assert prepare_mono._fast_ids_equal(truncating) and truncating.backend_tokenizer.truncation is None
    prepare(tmp_path / "fast", inputs, tok_dir)
    monkeypatch.setattr(prepare_mono, "_fast_ids_equal", lambda tokenizer: False)
    prepare(tmp_path / "slow", inputs, tok_dir, "--num_proc", "2")
    assert blocks_of(tmp_path / "fast" / "train_blocks") == blocks_of(tmp_path / "slow" / "train_blocks")


def test_real_korean_text_with_the_llama2_tokenizer(tmp_path, shared_data):
    """kowiki through the Llama-2 tokenizer (byte fallback for much of Korean) with 2 processes: the
    blocks equal the trainers' own packing of the written JSONL."""
    from transformers import AutoTokenizer

    tok_dir = shared_data / "llama2_tokenizer"
    tok = AutoTokenizer.from_pretrained(tok_dir)
    report = prepare_mono.main(["--inputs", str(shared_data / "mono_ko" / "kowiki"), "--lang", "ko", "--num_proc",
                                "2", "--tokenizer", str(tok_dir), "--output_dir", str(tmp_path / "out")])
    blocks = blocks_of(tmp_path / "out" / "train_blocks")
    assert len(blocks) == report["blocks"]["train"] > 1000
    assert blocks == load_text_blocks(str(tmp_path / "out" / "train.jsonl"), tok, 512)["input_ids"]


def test_raw_documents_cleaned_are_iter_clean_documents(tmp_path, corpus, shared_data):
    """The workers clean what ``iter_raw_documents`` reads; together that is ``iter_clean_documents``
    (guards the two against drifting apart)."""
    inputs = [str(corpus[0]), str(shared_data / "mono_ko"), str(shared_data / "mono_en")]
    exclude = prepare_mono.Arguments().exclude
    with ExitStack() as stack:
        raw = [(spec, prepare_mono.clean_text(text, keep_newlines=True), where, lang)
               for spec, text, where, lang in prepare_mono.iter_raw_documents(inputs, stack, exclude=exclude)]
    with ExitStack() as stack:
        assert raw == list(iter_clean_documents(inputs, stack, exclude=exclude))


def test_work_in_flight_is_bounded_and_ordered(monkeypatch):
    """At most 2 x num_proc batches are read ahead of the consumer (memory flat whatever the input),
    results come back in input order, and the work pickles (the spawn start method)."""
    work = prepare_mono.DocumentWork("auto", 1, 0.0)
    assert pickle.loads(pickle.dumps(work)).threshold == work.threshold
    read = []

    def batches():
        for i in range(40):
            read.append(i)
            yield [("in", f"문서 {i} " * (i % 5 + 1), f"f:{i}", None)]

    with prepare_mono.Workers(work, 3) as workers:
        for k, (batch, (verdicts, chars, _, _)) in enumerate(workers.map_ordered(batches())):
            assert batch[0][2] == f"f:{k}" and chars == [len(f"문서 {k} " * (k % 5 + 1)) - 1]
            assert len(read) - k <= 2 * 3
    assert len(read) == 40


def test_bad_input_with_workers_names_file_and_line(tmp_path):
    (tmp_path / "wiki_02").write_text('<doc id="1" url="u" title="t">\n본문\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"wiki_02:1: <doc> is never closed"):
        prepare_mono.main(["--inputs", str(tmp_path / "wiki_02"), "--num_proc", "2", "--output_dir", str(tmp_path)])
    assert not list(tmp_path.glob("*.tmp"))


def test_a_split_too_small_for_one_block_is_an_error(tmp_path, corpus):
    inputs, tok_dir, _ = corpus
    with pytest.raises(DataError, match=r"validation.jsonl: fewer tokens than one block of 4096"):
        prepare_mono.main(["--inputs", str(inputs), "--tokenizer", str(tok_dir), "--block_size", "4096",
                           "--validation_ratio", "0.01", "--num_proc", "2", "--output_dir", str(tmp_path / "out")])
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_a_worker_that_dies_fails_the_run_instead_of_hanging(tmp_path, corpus, monkeypatch):
    """A worker killed mid-run (the out-of-memory killer, say) ends the run with an error; the JSONL and
    blocks are not left behind half-written under their final names."""
    inputs, tok_dir, _ = corpus
    work = prepare_mono.DocumentWork.__call__

    def dies_on_document_90(self, docs):
        if any("문서 90번" in text for text, _ in docs):
            os._exit(9)
        return work(self, docs)

    monkeypatch.setattr(prepare_mono.DocumentWork, "__call__", dies_on_document_90)
    monkeypatch.setattr(prepare_mono, "BATCH_CHARS", 700)
    with pytest.raises(BrokenProcessPool):
        prepare(tmp_path / "out", inputs, tok_dir, "--num_proc", "2")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []
