"""Expand a Llama SentencePiece tokenizer with Korean pieces, and resize a model to match.

Usage (from the repository root):
    python -m data_prep.expand_vocab --base_tokenizer ../shared/data/llama2_tokenizer/tokenizer.model \\
        --ko_corpus ../shared/data/mono_ko --ko_vocab_size 8000 --output_dir runs/llama2-ko-tokenizer
    python -m data_prep.expand_vocab --base_tokenizer princeton-nlp/Sheared-LLaMA-1.3B-ShareGPT \\
        --model_name_or_path princeton-nlp/Sheared-LLaMA-1.3B-ShareGPT \\
        --ko_corpus runs/data/mono_ko/train.jsonl --ko_vocab_size 16000 --en_corpus runs/data/mono_en/train.jsonl \\
        --output_dir runs/sheared-llama-1.3b-ko
    python -m data_prep.expand_vocab expand.yaml --output_dir runs/ko-tokenizer2   # a config file, then overrides

Steps:
1. Korean documents are read from ``--ko_corpus`` (anything prepare_mono.py reads, with the same reader,
   ``sources.iter_clean_documents``: wiki-extractor, JSONL ``{"text"}``, plain text; files, folders,
   archives) and cleaned the same way. A share of the
   documents (``--heldout_ratio``, by a hash of the text) is held out for the figures below.
2. A Korean SentencePiece model (BPE like Llama's, identity normalisation, digits split) of
   ``--ko_vocab_size`` pieces is trained on the rest (``ko_sp.model`` in the output). A corpus that is
   not mostly Korean is refused before anything is written: when fewer than ``--min_hangul_piece_share``
   (default 0.5) of the Korean model's pieces contain Hangul, or no piece would be added, the run stops
   with the numbers. (Kowiki and konlpy's texts give 68-94% at 3,000-16,000 pieces; English Wikipedia
   with a few Korean words in it gives 3 of 2,997. Only pieces with Hangul are added, so the share of
   the added pieces is always 100%: the share of the model's pieces is what tells the corpora apart.)
3. Merge at the ModelProto level: the Korean pieces that contain Hangul and that the base lacks are
   appended as NORMAL pieces after the base pieces, so every base id keeps its piece, and the base's
   normaliser, byte fallback and special tokens stay. Only Hangul pieces: text without Hangul (English,
   code, digits) can then never meet a new piece, so it tokenizes to exactly the ids it had before.
   Scores (BPE merge priority): the new pieces keep the Korean model's order, placed below every base
   piece (``--new_piece_scores below``, default: the base's own Korean merges happen first, then the
   new ones) or above (``above``: the Korean model's merges win over the base's Korean pieces).
4. ``tokenizer.model`` plus a Hugging Face tokenizer folder (``LlamaTokenizer``, BOS added as in the
   Llama checkpoints) are saved. Checked on held-out Korean lines and on English lines
   (``--en_corpus``, plus a few built-in sentences): the Hugging Face tokenizer gives the same ids as
   SentencePiece; English lines without Hangul get the base tokenizer's ids (lines with Hangul are
   counted and left out of that check); decode(encode(x)) == x; tokens per Korean
   line before and after. All of it is printed and saved in ``expand_vocab.json``.
5. With ``--model_name_or_path``, the model is loaded, its input embeddings and lm_head resized to the
   new vocabulary, and each new row set to the mean of the rows of the pieces the base tokenizer splits
   the new piece into (input rows from the input embeddings, output rows from lm_head; for a tied
   model, the one shared matrix), computed in float32. The choice and the piece splits are recorded in
   ``expand_vocab.json`` (``new_rows``). Model and tokenizer are saved together (safetensors), a valid
   ``--model_name_or_path`` for the trainers.
Everything is written to ``OUTPUT_DIR.tmp`` and renamed when complete.
"""

import hashlib
import io
import json
import os
import re
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tqdm.auto import tqdm

from common.args import parse_arguments
from common.cli import run_main
from common.data import DataError
from common.models import check_model_path, match_file_modes
from data_prep.sources import DEFAULT_EXCLUDE, has_hangul, iter_clean_documents

BUILTIN_ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! This is a test of the tokenizer, with numbers 12345 and symbols #@$%.",
    "def main(argv=None):\n    return 0  # code stays the same",
    "Naïve café résumé — “quotes” and ‘apostrophes’ … 1.5e-3",
]
INIT_RULE = ("mean of the base model's rows of the pieces the base tokenizer splits the new piece into "
             "(input embeddings and lm_head separately), float32")
_SENTENCE_END = re.compile(r"(?<=[.!?。])\s+")


@dataclass
class Arguments:
    base_tokenizer: str = field(default=None, metadata={
        "help": "Base Llama tokenizer: a tokenizer.model file, or a folder (or hub id) holding one."})
    ko_corpus: list[str] = field(default_factory=list, metadata={
        "help": "Korean text to learn pieces from: files, folders, archives (wiki-extractor, JSONL with 'text', "
                "plain text)."})
    ko_vocab_size: int = field(default=16000, metadata={
        "help": "Pieces of the Korean SentencePiece model (those the base already has, or without Hangul, are not "
                "added)."})
    output_dir: str = field(default="runs/expanded_tokenizer", metadata={
        "help": "Output folder: tokenizer (+ model), ko_sp.model, expand_vocab.json."})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Base causal LM to resize; new rows initialised as the mean of their base pieces' rows."})
    new_piece_scores: str = field(default="below", metadata={
        "help": "Merge priority of the new pieces: 'below' every base piece (base Korean merges first) or 'above' "
                "(the Korean model's merges first); Korean order kept either way."})
    ko_model_type: str = field(default="bpe", metadata={
        "help": "SentencePiece model type of the Korean model: 'bpe' (as Llama) or 'unigram'."})
    character_coverage: float = field(default=0.9995, metadata={
        "help": "SentencePiece character_coverage of the Korean model (rare characters stay byte fallback)."})
    max_sentences: int = field(default=2_000_000, metadata={
        "help": "At most this many Korean lines are sampled for SentencePiece training (input_sentence_size)."})
    heldout_ratio: float = field(default=0.05, metadata={
        "help": "Share of Korean documents (by hash) held out from training for the tokens-per-line and "
                "round-trip checks."})
    en_corpus: list[str] = field(default_factory=list, metadata={
        "help": "English text on which to check that ids are unchanged (all its lines)."})
    max_check_lines: int = field(default=0, metadata={
        "help": "Check at most this many lines of each language; 0: all."})
    min_hangul_piece_share: float = field(default=0.5, metadata={
        "help": "Refuse the corpus when fewer than this share of the Korean model's pieces contain Hangul (an "
                "English or mixed corpus adds few or no useful pieces); 0 turns the check off."})
    num_threads: int = field(default=2, metadata={"help": "SentencePiece trainer threads."})
    seed: int = field(default=42, metadata={"help": "SentencePiece sampling seed."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing --output_dir."})


def resolve_model_file(base: str) -> str:
    if os.path.isfile(base):
        return base
    if os.path.isdir(base):
        path = os.path.join(base, "tokenizer.model")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{base}: no tokenizer.model in this folder "
                                    "(a SentencePiece Llama tokenizer is needed)")
        return path
    from huggingface_hub import hf_hub_download

    return hf_hub_download(base, "tokenizer.model")


def load_proto(path: str) -> sp_pb2.ModelProto:
    proto = sp_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as e:
        raise DataError(f"{path}: not a SentencePiece model ({e})") from None
    if not proto.pieces:
        raise DataError(f"{path}: not a SentencePiece model (no pieces)")
    return proto


def processor(proto: sp_pb2.ModelProto) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def splitter(base: sp_pb2.ModelProto) -> spm.SentencePieceProcessor:
    """The base tokenizer without its dummy prefix: encodes a piece's text ('▁' as a space) exactly."""
    p = sp_pb2.ModelProto()
    p.CopyFrom(base)
    p.normalizer_spec.add_dummy_prefix = False
    return processor(p)


def lines_of(text: str) -> list[str]:
    return [s for line in text.split("\n") for s in _SENTENCE_END.split(line) if s.strip()]


def train_korean(lines: list[str], args: Arguments) -> sp_pb2.ModelProto:
    model = io.BytesIO()
    spm.set_random_generator_seed(args.seed)
    try:
        _train_sp(lines, args, model)
    except RuntimeError as e:  # e.g. a vocabulary smaller than the characters to cover
        raise ValueError(f"SentencePiece training failed: {str(e).split('] ')[-1]}") from None
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto


def _train_sp(lines: list[str], args: Arguments, model: io.BytesIO) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=args.ko_vocab_size,
        model_type=args.ko_model_type, character_coverage=args.character_coverage,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        split_digits=True, byte_fallback=False, input_sentence_size=args.max_sentences, shuffle_input_sentence=True,
        num_threads=args.num_threads, hard_vocab_limit=False, seed_sentencepiece_size=1_000_000,
        minloglevel=2, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    )


def merge(base: sp_pb2.ModelProto, ko: sp_pb2.ModelProto, scores: str = "below") -> tuple[sp_pb2.ModelProto, list[str]]:
    """Base pieces first (ids unchanged), then the Korean NORMAL pieces that contain Hangul and are new,
    in the Korean model's order, with scores below (or above) every base piece."""
    merged = sp_pb2.ModelProto()
    merged.CopyFrom(base)
    have = {p.piece for p in base.pieces}
    normal = sp_pb2.ModelProto.SentencePiece.NORMAL
    new = [p for p in ko.pieces if p.type == normal and p.piece not in have and has_hangul(p.piece)]
    base_scores = [p.score for p in base.pieces if p.type == normal and p.score > -1e8]  # Llama's '▁▁' has -1e9
    start = (min(base_scores) - 1) if scores == "below" else (max(base_scores) + len(new) + 1)
    for rank, p in enumerate(new):
        piece = merged.pieces.add()
        piece.piece, piece.type, piece.score = p.piece, normal, float(start - rank)
    return merged, [p.piece for p in new]


def hf_tokenizer(folder: str):
    from transformers import LlamaTokenizer

    # transformers 5.x builds Llama's tokenizer without BOS unless asked; Llama checkpoints add it.
    return LlamaTokenizer.from_pretrained(folder, add_bos_token=True, add_eos_token=False)


def check_tokenizers(sp_base, sp_new, tok_base, tok_new, ko_lines: list[str], en_lines: list[str]) -> dict:
    """The figures of the expansion (see the module docstring), counted over the given lines."""
    report = {"ko_lines": len(ko_lines), "en_lines": len(en_lines)}
    mismatch = {"hf_vs_sentencepiece": [], "english_ids_changed": [], "roundtrip_failed": []}

    def note(kind, line):
        if len(mismatch[kind]) < 5:
            mismatch[kind].append(line[:200])
        report[kind] = report.get(kind, 0) + 1

    before = after = 0
    for line in tqdm(ko_lines, desc="checking Korean", mininterval=1.0):
        ids_new = sp_new.encode(line)
        before += len(sp_base.encode(line))
        after += len(ids_new)
        if tok_new(line, add_special_tokens=False)["input_ids"] != ids_new:
            note("hf_vs_sentencepiece", line)
        if tok_new.decode(tok_new(line)["input_ids"], skip_special_tokens=True) != line:
            note("roundtrip_failed", line)
    report["en_lines_with_hangul"] = 0
    for line in tqdm(en_lines, desc="checking English", mininterval=1.0):
        if has_hangul(line):  # may legitimately change (new Korean pieces); not part of the guarantee
            report["en_lines_with_hangul"] += 1
            continue
        ids_base = tok_base(line)["input_ids"]
        if tok_new(line)["input_ids"] != ids_base or sp_new.encode(line) != sp_base.encode(line):
            note("english_ids_changed", line)
        if tok_new.decode(tok_new(line)["input_ids"], skip_special_tokens=True) != line:
            note("roundtrip_failed", line)
    for kind in mismatch:
        report.setdefault(kind, 0)
    n = max(len(ko_lines), 1)
    report.update(ko_tokens_per_line_before=before / n, ko_tokens_per_line_after=after / n,
                  ko_token_reduction=before / max(after, 1), examples=mismatch)
    return report


def resize_model(model, sp_split: spm.SentencePieceProcessor, new_pieces: list[str], first_new_id: int,
                 vocab_size: int) -> dict:
    """Resize input embeddings and lm_head to ``vocab_size``; new row i = mean of the base rows of the
    pieces the base tokenizer splits new piece i into. Returns {piece: [base ids]}."""
    import torch

    old_in = model.get_input_embeddings().weight.detach().float().clone()
    out_layer = model.get_output_embeddings()
    tied = out_layer is not None and out_layer.weight is model.get_input_embeddings().weight
    old_out = None if out_layer is None or tied else out_layer.weight.detach().float().clone()
    if old_in.shape[0] != first_new_id:
        raise ValueError(f"the model has {old_in.shape[0]} embedding rows but the base tokenizer {first_new_id} pieces")
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    splits = {}
    new_in = torch.empty(len(new_pieces), old_in.shape[1])
    new_out = None if old_out is None else torch.empty(len(new_pieces), old_out.shape[1])
    for i, piece in enumerate(new_pieces):
        ids = sp_split.encode(piece.replace("▁", " "))
        if not ids or max(ids) >= first_new_id:
            raise RuntimeError(f"piece {piece!r} split into {ids} by the base tokenizer")
        splits[piece] = ids
        new_in[i] = old_in[ids].mean(0)
        if new_out is not None:
            new_out[i] = old_out[ids].mean(0)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[first_new_id:] = new_in.to(emb.dtype)
        if new_out is not None:
            head = model.get_output_embeddings().weight
            head[first_new_id:] = new_out.to(head.dtype)
    model.config.vocab_size = vocab_size
    return splits


def check_korean_model(ko: sp_pb2.ModelProto, new_pieces: list[str], args: Arguments, documents: dict,
                       lines: int) -> None:
    """Refuse a corpus that is not mostly Korean (see the module docstring, step 2), with the numbers."""
    normal = [p.piece for p in ko.pieces if p.type == sp_pb2.ModelProto.SentencePiece.NORMAL]
    hangul = sum(has_hangul(p) for p in normal)
    share = hangul / max(len(normal), 1)
    if share >= args.min_hangul_piece_share and new_pieces:
        return
    why = (f"only {hangul} of the Korean SentencePiece model's {len(normal)} pieces ({share:.1%}) contain Hangul, "
           f"below --min_hangul_piece_share {args.min_hangul_piece_share}" if new_pieces
           else f"the base tokenizer already has every one of the Korean model's {hangul} pieces with Hangul")
    raise DataError(f"--ko_corpus {' '.join(args.ko_corpus)}: not a Korean corpus for expanding the vocabulary: "
                    f"{why}, so {len(new_pieces)} piece(s) would be added ({documents['with_hangul']} of "
                    f"{documents['read']} documents hold Hangul; {lines} training lines). Give Korean text as "
                    "--ko_corpus (e.g. prepare_mono.py --lang ko output)"
                    + (", or lower --min_hangul_piece_share for a corpus mixed on purpose" if new_pieces else
                       ", or a larger --ko_vocab_size"))


def check_args(args: Arguments) -> None:
    if not args.base_tokenizer or not args.ko_corpus:
        raise ValueError("give --base_tokenizer and --ko_corpus")
    # before the Korean model trains: a missing model is one line now, not a hub traceback minutes later
    if not os.path.exists(args.base_tokenizer):
        check_model_path(args.base_tokenizer, "--base_tokenizer", file="tokenizer.model", what="file or folder")
    if args.model_name_or_path:
        check_model_path(args.model_name_or_path)
    if args.new_piece_scores not in ("below", "above"):
        raise ValueError(f"--new_piece_scores must be below or above, got {args.new_piece_scores!r}")
    if not 0 <= args.heldout_ratio < 1:
        raise ValueError("--heldout_ratio must be in [0, 1)")
    if not 0 <= args.min_hangul_piece_share <= 1:
        raise ValueError(f"--min_hangul_piece_share must be in [0, 1], got {args.min_hangul_piece_share}")
    if os.path.exists(args.output_dir) and not args.overwrite_output_dir:
        raise FileExistsError(f"{args.output_dir} exists; pass --overwrite_output_dir to replace it")


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(Arguments, argv)
    check_args(args)
    t0 = time.perf_counter()
    base_file = resolve_model_file(args.base_tokenizer)
    base = load_proto(base_file)

    # 1. Korean text: training lines and held-out lines
    train_lines, heldout = [], []
    threshold = round(args.heldout_ratio * 1_000_000)
    documents = {"read": 0, "with_hangul": 0}
    with ExitStack() as stack:
        for _, text, _, _ in iter_clean_documents(args.ko_corpus, stack, exclude=DEFAULT_EXCLUDE):
            documents["read"] += 1
            if not has_hangul(text):
                continue
            documents["with_hangul"] += 1
            bucket = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % 1_000_000
            (heldout if bucket < threshold else train_lines).extend(lines_of(text))
    if not train_lines:
        raise DataError(f"no Korean text found in {args.ko_corpus}")
    en_lines = list(BUILTIN_ENGLISH)
    with ExitStack() as stack:
        for _, text, _, _ in iter_clean_documents(args.en_corpus, stack, exclude=DEFAULT_EXCLUDE):
            en_lines.extend(line for line in text.split("\n") if line.strip())
    if args.max_check_lines:
        heldout, en_lines = heldout[: args.max_check_lines], en_lines[: args.max_check_lines]

    # 2-3. Korean SentencePiece model, merged into the base
    ko = train_korean(train_lines, args)
    merged, new_pieces = merge(base, ko, args.new_piece_scores)
    print(f"Korean model: {len(ko.pieces)} pieces; {len(new_pieces)} new pieces with Hangul added to the base's "
          f"{len(base.pieces)}")
    check_korean_model(ko, new_pieces, args, documents, len(train_lines))

    final = Path(args.output_dir)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / "tokenizer.model").write_bytes(merged.SerializeToString())
    (tmp / "ko_sp.model").write_bytes(ko.SerializeToString())

    # 4. Hugging Face tokenizer, and the checks
    base_dir = tmp / "base_tokenizer"
    base_dir.mkdir()
    shutil.copy(base_file, base_dir / "tokenizer.model")
    tok_base, tok_new = hf_tokenizer(str(base_dir)), hf_tokenizer(str(tmp))
    shutil.rmtree(base_dir)
    if len(tok_new) != len(merged.pieces):
        raise RuntimeError(f"Hugging Face tokenizer has {len(tok_new)} tokens, the merged model {len(merged.pieces)}")
    checks = check_tokenizers(processor(base), processor(merged), tok_base, tok_new, heldout, en_lines)
    report = {
        "base_tokenizer": base_file, "base_vocab_size": len(base.pieces), "ko_vocab_size": len(ko.pieces),
        "added_pieces": len(new_pieces), "vocab_size": len(merged.pieces), "new_piece_scores": args.new_piece_scores,
        "korean_training_lines": len(train_lines), "checks": checks,
    }

    # 5. the model
    if args.model_name_or_path:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype="auto")
        splits = resize_model(model, splitter(base), new_pieces, len(base.pieces), len(merged.pieces))
        model.save_pretrained(tmp, safe_serialization=True)
        match_file_modes(tmp)
        report["new_rows"] = {"rule": INIT_RULE, "model": args.model_name_or_path,
                              "splits": {p: ids for p, ids in splits.items()}}
    tok_new.save_pretrained(tmp)
    report["arguments"] = asdict(args)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (tmp / "expand_vocab.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)

    print(f"tokens per Korean line (held out, {checks['ko_lines']} lines): "
          f"{checks['ko_tokens_per_line_before']:.2f} -> "
          f"{checks['ko_tokens_per_line_after']:.2f} ({checks['ko_token_reduction']:.2f}x fewer)")
    compared = checks["en_lines"] - checks["en_lines_with_hangul"]
    print(f"English lines with changed ids: {checks['english_ids_changed']} of {compared} "
          f"without Hangul ({checks['en_lines_with_hangul']} with Hangul not compared); round-trip failures: "
          f"{checks['roundtrip_failed']}; Hugging Face vs SentencePiece differences: {checks['hf_vs_sentencepiece']}")
    if args.model_name_or_path:
        print(f"model resized to {len(merged.pieces)} rows; new rows = {INIT_RULE}")
    print(f"wrote {final}")
    return report


if __name__ == "__main__":
    run_main(main)
