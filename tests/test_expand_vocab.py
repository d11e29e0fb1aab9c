
import re

import pytest
import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from common.data import DataError
from common.demo import tiny_llama
from data_prep import expand_vocab
from data_prep.sources import has_hangul


def docs_prefix(path, max_chars):
    """The first wiki-extractor documents of ``path`` up to about ``max_chars`` characters."""
    text = path.read_text(encoding="utf-8")
    cut = text.find("</doc>", max_chars)
    return text if cut < 0 else text[: cut + len("</doc>")] + "\n"


def lines_of(path, max_chars, limit):
    body = re.sub(r"<doc [^>]*>|</doc>", "", docs_prefix(path, max_chars))
    return [line.strip() for line in body.splitlines() if line.strip()][:limit]


@pytest.fixture(scope="module")
def expanded(tmp_path_factory):
    """Llama-2's tokenizer + a 3,000-piece Korean model learned from a slice of kowiki; a tiny random
    Llama with Llama-2's 32,000 rows resized."""
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    tmp = tmp_path_factory.mktemp("expand")
    (tmp / "ko").mkdir()
    (tmp / "ko" / "wiki_00").write_text(docs_prefix(SHARED_DATA / "mono_ko/kowiki/wiki_00", 400_000), encoding="utf-8")
    en_lines = lines_of(SHARED_DATA / "mono_en/enwiki/wiki_00", 200_000, 400)
    (tmp / "en.txt").write_text("\n".join(en_lines), encoding="utf-8")
    model = tiny_llama(32000, hidden_size=32, num_layers=2)
    model.save_pretrained(tmp / "model")
    report = expand_vocab.main([
        "--base_tokenizer", str(SHARED_DATA / "llama2_tokenizer/tokenizer.model"), "--ko_corpus", str(tmp / "ko"),
        "--ko_vocab_size", "3000", "--en_corpus", str(tmp / "en.txt"), "--model_name_or_path", str(tmp / "model"),
        "--max_check_lines", "300", "--output_dir", str(tmp / "out"),
    ])
    return {"tmp": tmp, "report": report, "out": tmp / "out",
            "base": SHARED_DATA / "llama2_tokenizer" / "tokenizer.model", "original": model,
            "kowiki": SHARED_DATA / "mono_ko/kowiki", "enwiki": SHARED_DATA / "mono_en/enwiki"}


@pytest.fixture(scope="module")
def tokenizers(expanded):
    from transformers import AutoTokenizer, LlamaTokenizer

    base_dir = expanded["tmp"] / "base"
    base_dir.mkdir(exist_ok=True)
    (base_dir / "tokenizer.model").write_bytes(expanded["base"].read_bytes())
    return (LlamaTokenizer.from_pretrained(str(base_dir), add_bos_token=True),
            AutoTokenizer.from_pretrained(str(expanded["out"])))


def load_proto(path):
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def test_base_pieces_keep_their_ids_and_new_pieces_are_korean(expanded):
    base, merged = load_proto(expanded["base"]), load_proto(expanded["out"] / "tokenizer.model")
    assert len(base.pieces) == 32000 and len(merged.pieces) == 32000 + expanded["report"]["added_pieces"]
    assert list(merged.pieces)[:32000] == list(base.pieces)
    assert merged.normalizer_spec == base.normalizer_spec and merged.trainer_spec.byte_fallback
    new = [p.piece for p in merged.pieces[32000:]]
    assert len(new) > 300 and all(has_hangul(p) for p in new) and len(set(new)) == len(new)


def test_english_ids_unchanged_korean_roundtrips_and_needs_fewer_tokens(expanded, tokenizers):
    base_tok, new_tok = tokenizers
    assert len(new_tok) == expanded["report"]["vocab_size"]
    en = [line for line in lines_of(expanded["enwiki"] / "wiki_01", 150_000, 300) if not has_hangul(line)]
    assert len(en) > 100
    for line in en:
        assert new_tok(line)["input_ids"] == base_tok(line)["input_ids"]
    assert new_tok("Hello")["input_ids"][0] == new_tok.bos_token_id == 1  # BOS as in Llama checkpoints

    ko = lines_of(expanded["kowiki"] / "wiki_01", 150_000, 300)  # not in the training slice
    before = after = 0
    for line in ko:
        ids = new_tok(line)["input_ids"]
        assert new_tok.decode(ids, skip_special_tokens=True) == line
        before += len(base_tok(line)["input_ids"])
        after += len(ids)
    checks = expanded["report"]["checks"]
    print(f"\ntokens per Korean line (kowiki wiki_01, {len(ko)} lines): {before / len(ko):.1f} -> "
          f"{after / len(ko):.1f}; script's held-out figure {checks['ko_tokens_per_line_before']:.1f} -> "
          f"{checks['ko_tokens_per_line_after']:.1f}")
    assert after < before / 1.5
    assert checks["english_ids_changed"] == checks["roundtrip_failed"] == checks["hf_vs_sentencepiece"] == 0
    assert checks["ko_token_reduction"] > 1.5 and checks["ko_lines"] > 10


def piece_bytes(sp, ids):
    out = b""
    for i in ids:
        p = sp.id_to_piece(i)
        out += bytes([int(p[3:5], 16)]) if sp.is_byte(i) else p.replace("▁", " ").encode()
    return out


def test_model_resized_and_new_rows_are_the_mean_of_their_base_pieces(expanded, tokenizers):
    from transformers import AutoModelForCausalLM

    base_tok, new_tok = tokenizers
    original = expanded["original"]
    model = AutoModelForCausalLM.from_pretrained(str(expanded["out"]))
    vocab = expanded["report"]["vocab_size"]
    emb, head = model.get_input_embeddings().weight.detach(), model.get_output_embeddings().weight.detach()
    old_emb = original.get_input_embeddings().weight.detach()
    old_head = original.get_output_embeddings().weight.detach()
    assert emb.shape == (vocab, 32) and head.shape == (vocab, 32) and model.config.vocab_size == vocab
    assert torch.equal(emb[:32000], old_emb) and torch.equal(head[:32000], old_head)

    sp = spm.SentencePieceProcessor(model_file=str(expanded["base"]))
    splits = expanded["report"]["new_rows"]["splits"]
    assert len(splits) == vocab - 32000
    checked_independently = 0
    for offset, piece in enumerate(new_tok.convert_ids_to_tokens(list(range(32000, vocab)))):
        ids = splits[piece]
        assert piece_bytes(sp, ids) == piece.replace("▁", " ").encode()  # the split spells the piece
        if piece.startswith("▁") and "▁" not in piece[1:]:  # the base tokenizer's own split of the word
            assert base_tok(piece[1:], add_special_tokens=False)["input_ids"] == ids
            checked_independently += 1
        torch.testing.assert_close(emb[32000 + offset], old_emb[ids].mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(head[32000 + offset], old_head[ids].mean(0), rtol=0, atol=1e-6)
    assert checked_independently > 50
    assert "mean" in expanded["report"]["new_rows"]["rule"]

    # English text gives the same logits over the old vocabulary as before
    ids = base_tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits[..., :32000], original(ids).logits, rtol=1e-5, atol=1e-5)


def test_refuses_to_overwrite_and_rejects_a_non_sentencepiece_base(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "bad.model").write_bytes(b"not a model")  # a file that exists: the path check passes it
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        expand_vocab.main(["--base_tokenizer", str(tmp_path / "bad.model"), "--ko_corpus", "y",
                           "--output_dir", str(tmp_path / "out")])
    with pytest.raises(DataError, match="bad.model: not a SentencePiece model"):
        expand_vocab.load_proto(str(tmp_path / "bad.model"))


def test_merge_keeps_korean_order_below_or_above_the_base():
    base, ko = sp_pb2.ModelProto(), sp_pb2.ModelProto()
    normal = sp_pb2.ModelProto.SentencePiece.NORMAL
    for piece, score in [("<unk>", 0), ("▁a", -1), ("가", -2)]:
        kind = normal if piece != "<unk>" else sp_pb2.ModelProto.SentencePiece.UNKNOWN
        base.pieces.add(piece=piece, score=score, type=kind)
    for piece, score in [("가", 0), ("▁가나", -1), ("▁the", -2), ("나다", -3)]:
        ko.pieces.add(piece=piece, score=score, type=normal)
    below, new = expand_vocab.merge(base, ko, "below")
    assert new == ["▁가나", "나다"]
    assert [p.piece for p in below.pieces] == ["<unk>", "▁a", "가", "▁가나", "나다"]
    assert [p.score for p in below.pieces[3:]] == [-3, -4]
    above, _ = expand_vocab.merge(base, ko, "above")
    assert above.pieces[3].score > above.pieces[4].score > 0


def korean_model(pieces):
    ko = sp_pb2.ModelProto()
    ko.pieces.add(piece="<unk>", score=0, type=sp_pb2.ModelProto.SentencePiece.UNKNOWN)
    for i, piece in enumerate(pieces):
        ko.pieces.add(piece=piece, score=-i, type=sp_pb2.ModelProto.SentencePiece.NORMAL)
    return ko


def test_a_korean_model_with_few_hangul_pieces_is_refused_with_the_numbers():
    args = expand_vocab.Arguments(ko_corpus=["en.txt"])
    docs = {"read": 100, "with_hangul": 3}
    english = korean_model(["▁the", "▁of", "▁and", "▁가", "▁나"])  # 2 of 5 with Hangul
    with pytest.raises(DataError, match=r"--ko_corpus en.txt: not a Korean corpus .*only 2 of the Korean "
                                        r"SentencePiece model's 5 pieces \(40.0%\) contain Hangul, below "
                                        r"--min_hangul_piece_share 0.5, so 2 piece\(s\) would be added \(3 of 100 "
                                        r"documents hold Hangul; 7 training lines\)"):
        expand_vocab.check_korean_model(english, ["▁가", "▁나"], args, docs, 7)
    args.min_hangul_piece_share = 0.4  # a corpus mixed on purpose
    expand_vocab.check_korean_model(english, ["▁가", "▁나"], args, docs, 7)
    with pytest.raises(DataError, match=r"already has every one of the Korean model's 2 pieces with Hangul, so 0"):
        expand_vocab.check_korean_model(english, [], args, docs, 7)
    expand_vocab.check_korean_model(korean_model(["▁가나", "다라", "▁the"]), ["▁가나", "다라"],
                                    expand_vocab.Arguments(ko_corpus=["ko.txt"]), docs, 7)


def test_english_corpus_is_refused_before_anything_is_written(shared_data, tmp_path):
    """English Wikipedia with a few Korean words: the Korean model has 3 Hangul pieces in 2,997."""
    with pytest.raises(DataError, match=r"not a Korean corpus for expanding the vocabulary: only \d of the Korean "
                                        r"SentencePiece model's \d+ pieces \(0.\d%\) contain Hangul"):
        expand_vocab.main(["--base_tokenizer", str(shared_data / "llama2_tokenizer/tokenizer.model"),
                           "--ko_corpus", str(shared_data / "mono_en"), "--ko_vocab_size", "3000",
                           "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
