"""Speed of prepare_parallel on a large AI-Hub-style JSON, against a bare ``json.load`` + JSONL write.

A script, not a test. It writes a ``{"data": [...]}`` JSON of the 기술과학/사회과학 shape (``sn``, ``ko``,
``mt``, ``en`` and a dozen metadata fields a record, pretty-printed as AI-Hub ships it) of at least
``--megabytes`` MB into a temporary folder, then times in the same process:

- ``bare``: ``json.load`` of the whole file and one ``{"ko", "en", "source"}`` JSONL line a record
  written (the floor: what any reader has to do);
- ``reader``: ``sources.iter_json_records`` alone (the streaming reader, no cleaning);
- ``prepare_parallel``: ``prepare_parallel.main`` on the file (streaming read, cleaning, filters, split,
  duplicate removal, stats.json), as a user runs it.

Each is run ``--repeats`` times; the best time counts. The ratios to ``bare`` are printed and written as
JSON (``--output``); the target of issue 12 is ``prepare_parallel`` at most 4x ``bare``.

    python -m bench.bench_prepare_parallel
    python -m bench.bench_prepare_parallel --megabytes 100 --repeats 1 --output runs/bench/prepare_parallel.json
"""

import contextlib
import io
import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.args import parse_arguments
from data_prep import prepare_parallel
from data_prep.sources import iter_json_records


@dataclass
class Arguments:
    megabytes: float = field(default=40.0, metadata={"help": "Size of the generated JSON file (at least), in MB."})
    repeats: int = field(default=2, metadata={"help": "Timed runs of each variant; the best counts."})
    seed: int = field(default=0, metadata={"help": "Seed of the generated sentences."})
    output: str | None = field(default=None, metadata={"help": "Write the numbers as JSON here."})


SYLLABLES = [chr(c) for c in range(0xAC00, 0xD7A4, 37)]
WORDS = ("the of and to in is was for on that with as by at from measured voltage circuit system data model "
         "results method analysis current value research study level process water energy surface").split()


def korean_sentence(rng: random.Random) -> str:
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(6, 16))]
    return " ".join(words) + rng.choice([".", "다.", "요.", "?"])


def english_sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 22))]
    return " ".join(words).capitalize() + "."


def make_file(path: Path, megabytes: float, seed: int) -> int:
    """Writes the JSON, returns its record count."""
    rng = random.Random(seed)
    target = megabytes * 1_000_000
    records, size = [], 0
    while size < target:
        ko, en = korean_sentence(rng), english_sentence(rng)
        rec = {"sn": f"INTSALDDNG{len(records):06d}", "data_set": "기술과학", "domain": "ICT",
               "subdomain": "전기전자", "file_name": f"INTSALDDNG{len(records) // 100:04d}.txt", "ko": ko,
               "mt": en[::-1], "en": en, "source_language": "ko", "target_language": "en",
               "word_count_ko": ko.count(" ") + 1, "word_count_en": en.count(" ") + 1, "license": "open",
               "style": "문어체", "included_unknown_words": False, "ner": None}
        records.append(rec)
        size += len(json.dumps(rec, ensure_ascii=False, indent=4).encode()) + 8
    text = json.dumps({"info": {"name": "bench", "version": "1.0"}, "data": records}, ensure_ascii=False, indent=4)
    path.write_text(text, encoding="utf-8")
    return len(records)


def bare(path: Path, out: Path) -> int:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    with open(out, "w", encoding="utf-8") as f:
        for rec in data["data"]:
            f.write(json.dumps({"ko": rec["ko"], "en": rec["en"], "source": "bench"}, ensure_ascii=False) + "\n")
    return len(data["data"])


def reader(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in iter_json_records(f, str(path)))


def prepare(path: Path, out: Path) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        report = prepare_parallel.main(["--inputs", str(path), "--output_dir", str(out)])
    return report["totals"]["rows_read"]


def best_of(repeats: int, fn, *args) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times), n


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(Arguments, argv)
    with tempfile.TemporaryDirectory(prefix="bench_prepare_parallel_") as tmp:
        path = Path(tmp) / "1113_tech_set_1195228.json"
        records = make_file(path, args.megabytes, args.seed)
        mb = path.stat().st_size / 1e6
        print(f"{path.name}: {mb:.1f} MB, {records} records")
        t_bare, n_bare = best_of(args.repeats, bare, path, Path(tmp) / "bare.jsonl")
        t_reader, n_reader = best_of(args.repeats, reader, path)
        t_prep, n_prep = best_of(args.repeats, prepare, path, Path(tmp) / "out")
    assert n_bare == n_reader == n_prep == records, (n_bare, n_reader, n_prep, records)
    result = {"megabytes": round(mb, 1), "records": records,
              "seconds": {"bare": round(t_bare, 3), "reader": round(t_reader, 3), "prepare_parallel": round(t_prep, 3)},
              "ratio_to_bare": {"reader": round(t_reader / t_bare, 2), "prepare_parallel": round(t_prep / t_bare, 2)},
              "arguments": asdict(args)}
    print(f"{'bare json.load + JSONL write':<32} {t_bare:7.2f} s")
    print(f"{'sources.iter_json_records':<32} {t_reader:7.2f} s  {t_reader / t_bare:5.2f}x")
    print(f"{'prepare_parallel.main':<32} {t_prep:7.2f} s  {t_prep / t_bare:5.2f}x  (target: <= 4x)")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
