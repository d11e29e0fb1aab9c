"""Stage 1 learns on real data: a tiny random Llama with the Llama-2 tokenizer, trained on KorSTS (+ STS-B
originals) and Tatoeba pairs, retrieves held-out NTREX-128 news translations well above chance."""

import json
import shutil

from transformers import LlamaTokenizer

import train_contrastive as tc
from common.demo import tiny_llama

NUM_VAL = 300


def write_jsonl(path, pairs):
    with open(path, "w", encoding="utf-8") as f:
        for ko, en in pairs:
            f.write(json.dumps({"ko": ko, "en": en}, ensure_ascii=False) + "\n")


def test_retrieval_on_held_out_ntrex_rises_well_above_chance(shared_data, tmp_path, reset_accelerate):
    sts = shared_data / "korsts_stsb_en_ko"
    ko_rows = [line.rstrip("\n").split("\t") for line in open(sts / "ko" / "sts-train.tsv", encoding="utf-8")][1:]
    en_rows = [line.rstrip("\n").split("\t") for line in open(sts / "en" / "sts-train.csv", encoding="utf-8")]
    assert len(ko_rows) == len(en_rows)
    pairs = []
    for k, e in zip(ko_rows, en_rows):
        assert k[:4] == e[:4]  # genre, file, year, id: the rows are aligned
        pairs += [(k[5], e[5]), (k[6], e[6])]
    for line in open(shared_data / "tatoeba_kor_eng" / "kor.txt", encoding="utf-8"):
        en, ko = line.split("\t")[:2]
        pairs.append((ko, en))
    write_jsonl(tmp_path / "train.jsonl", pairs)
    ntrex = shared_data / "ntrex128_en_ko"
    ko = (ntrex / "newstest2019-ref.kor.txt").read_text(encoding="utf-8").splitlines()
    en = (ntrex / "newstest2019-src.eng.txt").read_text(encoding="utf-8").splitlines()
    write_jsonl(tmp_path / "val.jsonl", list(zip(ko, en))[:NUM_VAL])

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(shared_data / "llama2_tokenizer" / "tokenizer.model", model_dir)
    tokenizer = LlamaTokenizer.from_pretrained(str(model_dir), add_bos_token=True)  # as in Llama checkpoints
    model = tiny_llama(len(tokenizer), hidden_size=128, num_layers=4, seed=0)
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.config.pad_token_id = None
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    tc.main(["--model_name_or_path", str(model_dir), "--train_file", str(tmp_path / "train.jsonl"),
             "--validation_file", str(tmp_path / "val.jsonl"), "--output_dir", str(tmp_path / "run"),
             "--pool_layer", "2", "--per_device_train_batch_size", "64", "--learning_rate", "1e-3",
             "--max_steps", "200", "--eval_steps", "200", "--save_steps", "200", "--report_to", "none"])
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    evals = [json.loads(line) for line in log if "eval/gap" in line]
    before, after = evals[0], evals[-1]
    print("before:", before, "\nafter:", after)
    chance = 1 / NUM_VAL
    for direction in ("eval/retrieval_ko_en", "eval/retrieval_en_ko"):
        # before training, shared tokens (numbers, names) already give a little above chance
        assert after[direction] > 20 * chance and after[direction] > 2.5 * before[direction], direction
    assert after["eval/gap"] > before["eval/gap"] + 0.1
