"""Duplicate sentences as false negatives: the contrastive loss with and without masking them.

Two experiments, each run twice through train_contrastive.py (same seed, same steps), once with
``--mask_duplicates`` (the default) and once with ``--no_mask_duplicates``:

1. The floor: 128 Tatoeba pairs, each repeated 4 times, batch 64, a 4-layer random Llama with the
   Llama-2 tokenizer. Length grouping puts a pair's copies in the same batch, so unmasked InfoNCE
   cannot fall below about log 4; masked, it can approach 0.
2. Held-out retrieval: trained on KorSTS (+ STS-B originals) and Tatoeba, which repeat short sentences,
   evaluated on NTREX-128 news pairs never seen in training.

    python -m bench.bench_duplicates                     # needs ../shared/data; a few minutes on 2 CPU cores
"""

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

from transformers import LlamaTokenizer

import train_contrastive as tc
from common.demo import tiny_llama

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path: Path, pairs) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for ko, en in pairs:
            f.write(json.dumps({"ko": ko, "en": en, "source": "bench"}, ensure_ascii=False) + "\n")
    return str(path)


def tatoeba() -> list[tuple[str, str]]:
    pairs = []
    for line in open(SHARED / "tatoeba_kor_eng" / "kor.txt", encoding="utf-8"):
        en, ko = line.split("\t")[:2]
        pairs.append((ko, en))
    return pairs


def korsts() -> list[tuple[str, str]]:
    sts = SHARED / "korsts_stsb_en_ko"
    ko_rows = [line.rstrip("\n").split("\t") for line in open(sts / "ko" / "sts-train.tsv", encoding="utf-8")][1:]
    en_rows = [line.rstrip("\n").split("\t") for line in open(sts / "en" / "sts-train.csv", encoding="utf-8")]
    return [pair for k, e in zip(ko_rows, en_rows) for pair in ((k[5], e[5]), (k[6], e[6]))]


def tiny_model(folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(SHARED / "llama2_tokenizer" / "tokenizer.model", folder)
    tokenizer = LlamaTokenizer.from_pretrained(str(folder), add_bos_token=True)
    model = tiny_llama(len(tokenizer), hidden_size=128, num_layers=4, seed=0)
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = 1, 2, None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train(model: Path, train_file: str, val_file: str, out: Path, mask: bool, steps: int, batch: int) -> list[dict]:
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    tc.main(["--model_name_or_path", str(model), "--train_file", train_file, "--validation_file", val_file,
             "--output_dir", str(out), "--pool_layer", "2", "--per_device_train_batch_size", str(batch),
             "--learning_rate", "1e-3", "--max_steps", str(steps), "--eval_steps", str(steps),
             "--save_steps", str(steps), "--report_to", "none", "--logging_steps", "1",
             "--mask_duplicates" if mask else "--no_mask_duplicates"])
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def main() -> dict:
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: this benchmark reads the shared real data")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_model(tmp / "model")
        base = tatoeba()[:128]
        floor_train = write_jsonl(tmp / "floor.jsonl", base * 4)
        floor_val = write_jsonl(tmp / "floor_val.jsonl", base[:64])
        ntrex = SHARED / "ntrex128_en_ko"
        ko = (ntrex / "newstest2019-ref.kor.txt").read_text(encoding="utf-8").splitlines()
        en = (ntrex / "newstest2019-src.eng.txt").read_text(encoding="utf-8").splitlines()
        real_train = write_jsonl(tmp / "real.jsonl", korsts() + tatoeba())
        real_val = write_jsonl(tmp / "ntrex.jsonl", list(zip(ko, en))[:500])
        for mask in (True, False):
            name = "masked" if mask else "unmasked"
            log = train(model, floor_train, floor_val, tmp / f"floor_{name}", mask, steps=150, batch=64)
            losses = [r["cl_loss"] for r in log if "cl_loss" in r]
            dup = [r["dup_masked"] for r in log if "dup_masked" in r]
            results[f"floor_{name}"] = {"final_cl_loss_mean_last10": sum(losses[-10:]) / 10,
                                        "dup_cells_per_step": sum(dup) / len(dup)}
            log = train(model, real_train, real_val, tmp / f"real_{name}", mask, steps=200, batch=64)
            final = [r for r in log if "eval/gap" in r][-1]
            dup = [r["dup_masked"] for r in log if "dup_masked" in r]
            results[f"ntrex_{name}"] = {k.removeprefix("eval/"): v for k, v in final.items() if k.startswith("eval/")}
            results[f"ntrex_{name}"]["dup_cells_per_step"] = sum(dup) / len(dup)
    results["log2"], results["log4"] = math.log(2), math.log(4)
    out = Path(__file__).resolve().parent / "results_duplicates.json"
    out.write_text(json.dumps(results, indent=2))
    for name in ("floor_masked", "floor_unmasked"):
        r = results[name]
        print(f"{name:<16} final cl_loss {r['final_cl_loss_mean_last10']:.3f} "
              f"(log 2 = {math.log(2):.3f}, log 4 = {math.log(4):.3f}); duplicate cells per step "
              f"{r['dup_cells_per_step']:.1f}")
    for name in ("ntrex_masked", "ntrex_unmasked"):
        r = results[name]
        print(f"{name:<16} NTREX retrieval ko->en {r['retrieval_ko_en']:.3f} en->ko {r['retrieval_en_ko']:.3f} "
              f"gap {r['gap']:.3f}; duplicate cells per step {r['dup_cells_per_step']:.1f}")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
