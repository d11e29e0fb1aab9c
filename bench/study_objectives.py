"""A small study of the contrastive and generation objectives (the research's "find the balance" question).

Four stage-1 runs of a tiny random Llama (Llama-2 tokenizer) on KorSTS (+ STS-B originals) and Tatoeba
pairs, with the shipped-data Korean and English Wikipedia text for the LM loss, same seed and steps:
CL only; CL + LM summed; CL + LM with PCGrad; LM only (the no-CL control, ``--cl_weight 0``). Each run
logs grad_cos/all every 20 steps where both losses are on. Reported: held-out NTREX-128 retrieval
(the run's last eval), Korean and English perplexity of the exported model on held-out Wikipedia
lines, and the mean grad_cos/all over training. A table of what was measured, not a claim.

    python -m bench.study_objectives [--steps 200]      # needs ../shared/data; ~15 min on 2 CPU cores
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, PartialState
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

import train_contrastive as tc
from bench.bench_duplicates import korsts, tatoeba, tiny_model, write_jsonl
from common.data import load_text_blocks
from common.metrics import language_model_loss

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RUNS = {
    "CL only": [],
    "CL+LM sum": ["--lm_weight", "1", "--grad_conflict_steps", "20"],
    "CL+LM pcgrad": ["--lm_weight", "1", "--grad_conflict_steps", "20", "--objective_balance", "pcgrad"],
    "LM only (no CL)": ["--lm_weight", "1", "--cl_weight", "0"],
}


def wiki_lines(folder: Path, n: int) -> list[str]:
    lines = []
    for path in sorted(folder.iterdir()):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith(("<doc", "</doc")):
                lines.append(line)
        if len(lines) >= n:
            break
    return lines[:n]


def main(steps: int = 200) -> dict:
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: this study reads the shared real data")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_model(tmp / "model")
        train = write_jsonl(tmp / "pairs.jsonl", korsts() + tatoeba())
        ntrex = SHARED / "ntrex128_en_ko"
        ko = (ntrex / "newstest2019-ref.kor.txt").read_text(encoding="utf-8").splitlines()
        en = (ntrex / "newstest2019-src.eng.txt").read_text(encoding="utf-8").splitlines()
        val = write_jsonl(tmp / "ntrex.jsonl", list(zip(ko, en))[:500])
        text = {}
        for lang, folder in (("ko", SHARED / "mono_ko" / "kowiki"), ("en", SHARED / "mono_en" / "enwiki")):
            lines = wiki_lines(folder, 3300)
            (tmp / f"{lang}_train.txt").write_text("\n".join(lines[:3000]) + "\n", encoding="utf-8")
            (tmp / f"{lang}_val.txt").write_text("\n".join(lines[3000:]) + "\n", encoding="utf-8")
            text[lang] = str(tmp / f"{lang}_val.txt")
        for name, extra in RUNS.items():
            out = tmp / name.replace(" ", "_").replace("(", "").replace(")", "")
            AcceleratorState._reset_state(True)
            PartialState._reset_state()
            tc.main(["--model_name_or_path", str(model), "--train_file", train, "--validation_file", val,
                     "--output_dir", str(out), "--pool_layer", "2", "--per_device_train_batch_size", "32",
                     "--learning_rate", "1e-3", "--max_steps", str(steps), "--eval_steps", str(steps),
                     "--save_steps", str(steps), "--report_to", "none", "--logging_steps", "10",
                     "--lm_train_file", str(tmp / "ko_train.txt"), "--lm_en_train_file", str(tmp / "en_train.txt"),
                     "--block_size", "128", "--per_device_lm_batch_size", "4", *extra])
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            final = [r for r in log if "eval/gap" in r][-1]
            cos = [r["grad_cos/all"] for r in log if "grad_cos/all" in r]
            lm = AutoModelForCausalLM.from_pretrained(out / f"checkpoint-{steps}").eval()
            tok = AutoTokenizer.from_pretrained(out / f"checkpoint-{steps}")
            ppl = {}
            for lang, path in text.items():
                blocks = load_text_blocks(path, tok, 128).with_format("torch")
                ppl[lang] = language_model_loss(lm, DataLoader(blocks, batch_size=8), torch.device("cpu"))["perplexity"]
            rows[name] = {"retrieval_ko_en": final["eval/retrieval_ko_en"],
                          "retrieval_en_ko": final["eval/retrieval_en_ko"], "gap": final["eval/gap"],
                          "ko_perplexity": ppl["ko"], "en_perplexity": ppl["en"],
                          "grad_cos_all_mean": sum(cos) / len(cos) if cos else None,
                          "grad_cos_all_first_last": [cos[0], cos[-1]] if cos else None}
            shutil.rmtree(out)
    table = ["| run | NTREX retrieval ko->en | en->ko | gap | ko ppl | en ppl | mean grad_cos/all (first, last) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        cos = "-" if r["grad_cos_all_mean"] is None else (
            f"{r['grad_cos_all_mean']:.3f} ({r['grad_cos_all_first_last'][0]:.3f}, "
            f"{r['grad_cos_all_first_last'][1]:.3f})")
        table.append(f"| {name} | {r['retrieval_ko_en']:.3f} | {r['retrieval_en_ko']:.3f} | {r['gap']:.3f} | "
                     f"{r['ko_perplexity']:.0f} | {r['en_perplexity']:.0f} | {cos} |")
    print("\n".join(table))
    out = Path(__file__).resolve().parent / "results_objectives.json"
    out.write_text(json.dumps({"steps": steps, "runs": rows, "table": table}, indent=2))
    return rows


if __name__ == "__main__":
    main(int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 200)
