"""Speed and memory of ``data_prep/prepare_mono.py`` (clean, filter, tokenize, pack) against input size
and against ``--num_proc``, in one run, on the shipped Korean Wikipedia text made larger.

The inputs are word-shuffled copies of ../shared/data/mono_ko/kowiki (wiki-extractor files, 3.1 MB;
without it, data/demo/mono_ko_train.txt): copy k shuffles the words of every line with seed k, so
the copies are new documents (not removed as duplicates) with the same characters, words and
document lengths. The sizes are prefixes of one stream, so a larger input holds the smaller ones.
Each (size, N) runs ``python -m data_prep.prepare_mono --tokenizer ... --num_proc N`` once to sample its
memory and ``--repeats`` times (the Ns interleaved) to time it, unsampled: sampling a 60 MB run's three
processes costs about 25 ms of CPU a sample, which at 20 samples a second took a third of a core from a
2-core machine and slowed N = 2 the most. ``seconds`` is the script's own time (stats.json: after
interpreter start-up and imports, tokenizer loading included; the median over the repeats), MB/s is input
MB over it, peak memory is the largest memory of the script and its workers together (PSS, so pages the
forked workers share count once; sampled every 50 ms). Every N's
blocks are checked equal to N = 1's. The tokenizer is the Llama-2 one (../shared/data/llama2_tokenizer) when it
loads, else the demo model's. TOKENIZERS_PARALLELISM=false, unless --tokenizer_threads: each worker
tokenizes on one thread anyway, and so N = 1 uses one core too (with the Rust tokenizer's thread pool
on, one process tokenizes a batch on several cores, and N = 1 is no longer "one core").

From the two largest inputs it projects the research's 35 GB on a node of ``--cores`` cores: the
reading process (main) is serial and the per-document work (workers) divides over ``cores - 1``
processes, so time = 35,000 MB x max(main CPU s/MB, worker CPU s/MB / (cores - 1)), the CPU seconds
per MB being the difference between the two inputs' (start-up is not per MB) with the largest N. It
assumes this machine's per-core speed and linear scaling of the workers.

    python -m bench.bench_prepare_mono                          # 15, 30, 60 MB x N = 1, 2 (a couple of minutes)
    python -m bench.bench_prepare_mono --sizes_mb 60 --num_procs 1,2,4,8,16 --cores 16
    python -m bench.bench_prepare_mono --compare_ref HEAD      # + that commit's prepare_mono.py, largest size, N = 1
    python -m bench.bench_prepare_mono --sizes_mb 60 --repeats 5   # N = 1 and 2 interleaved, five times: medians

Run from the repository root, with the project installed (``pip install -e .``).
"""

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
from datasets import load_from_disk

from common.args import parse_arguments

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESEARCH_MB = 35_000  # Korean Wikipedia 807 MB + Korean web 15 GB + English Wikipedia 20.28 GB
FILE_MB = 16  # the generated input is split into wiki-extractor files of about this size


@dataclass
class Arguments:
    sizes_mb: str = field(default="15,30,60", metadata={"help": "Comma-separated input sizes in MB (1e6 bytes)."})
    num_procs: str = field(default="1,2", metadata={"help": "Comma-separated --num_proc values to run at each size."})
    source: str | None = field(default=None, metadata={
        "help": "Wiki-extractor files (a folder) or plain text (one document a line) to copy; unset: "
                "../shared/data/mono_ko/kowiki, else data/demo/mono_ko_train.txt."})
    tokenizer: str | None = field(default=None, metadata={
        "help": "Tokenizer folder; unset: ../shared/data/llama2_tokenizer if it loads, else data/demo/model."})
    block_size: int = field(default=512, metadata={"help": "--block_size of the packed blocks."})
    cores: int = field(default=16, metadata={"help": "Cores of the node the 35 GB projection is for."})
    tokenizer_threads: bool = field(default=False, metadata={
        "help": "Leave TOKENIZERS_PARALLELISM as it is, so that N = 1 may tokenize each batch on several threads "
                "(the Rust tokenizer's own pool); default: set it to false, so that N processes use N cores."})
    compare_ref: str | None = field(default=None, metadata={
        "help": "A git ref whose data_prep/prepare_mono.py also runs (N = 1, the largest size) as the baseline."})
    repeats: int = field(default=1, metadata={"help": (
        "Runs of every (size, N), the Ns interleaved; rows report the median (this machine's speed drifts)."
    )})
    work_dir: str | None = field(default=None, metadata={"help": "Where inputs and outputs go; unset: a temp dir."})
    output: str = field(default="bench/results_prepare_mono.json", metadata={"help": "Where the JSON results go."})


def pick_tokenizer(requested: str | None) -> str:
    if requested:
        return requested
    from transformers import AutoTokenizer

    for candidate in (SHARED / "llama2_tokenizer", ROOT / "data" / "demo" / "model"):
        try:
            AutoTokenizer.from_pretrained(candidate)
            return str(candidate)
        except Exception as e:  # noqa: BLE001 - any failure to load means: try the next one
            print(f"tokenizer {candidate} does not load ({type(e).__name__}: {e}); trying the next")
    raise SystemExit("no tokenizer loads; give --tokenizer")


def source_documents(source: str | None) -> tuple[list[list[str]], str]:
    """The shipped Korean text as documents (lists of lines) and a name for it."""
    kowiki = Path(source) if source else SHARED / "mono_ko" / "kowiki"
    if kowiki.is_dir():
        docs, body = [], None
        for path in sorted(kowiki.glob("wiki_*")):
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.startswith("<doc "):
                    body = []
                elif line == "</doc>":
                    docs.append(body)
                    body = None
                elif body is not None:
                    body.append(line)
        return docs, str(kowiki)
    demo = Path(source) if source else ROOT / "data" / "demo" / "mono_ko_train.txt"
    return [[line] for line in demo.read_text(encoding="utf-8").splitlines() if line.strip()], str(demo)


def shuffled_copies(docs: list[list[str]]):
    """Wiki-extractor documents (UTF-8) without end: copy k of ``docs`` with the words of every line
    shuffled by seed k."""
    doc_id, copy = 0, 0
    while True:
        rng = random.Random(copy)
        for doc in docs:
            lines = []
            for line in doc:
                words = line.split(" ")
                rng.shuffle(words)
                lines.append(" ".join(words))
            head = f'<doc id="{doc_id}" url="https://ko.wikipedia.org/wiki?curid={doc_id}" title="{doc_id}">\n'
            yield (head + "\n".join(lines) + "\n</doc>\n").encode("utf-8")
            doc_id += 1
        copy += 1


def write_inputs(folder: Path, docs: list[list[str]], sizes_mb: list[float]) -> dict[float, Path]:
    """Input ``s`` (folder ``sMB``): the first whole documents of ``shuffled_copies`` up to ``s`` MB, in
    wiki-extractor files of about FILE_MB each; so a smaller input is a prefix of a larger one."""
    state = {}  # size -> [bytes written, open file, files opened]
    for s in sizes_mb:
        (folder / f"{s:g}MB").mkdir(parents=True, exist_ok=True)
        state[s] = [0, None, 0]
    for doc in shuffled_copies(docs):
        open_sizes = [s for s in sizes_mb if state[s][0] < s * 1e6]
        if not open_sizes:
            break
        for s in open_sizes:
            st = state[s]
            if st[1] is None or st[1].tell() >= FILE_MB * 1e6:
                if st[1]:
                    st[1].close()
                st[1] = open(folder / f"{s:g}MB" / f"wiki_{st[2]:02d}", "wb")
                st[2] += 1
            st[1].write(doc)
            st[0] += len(doc)
    for st in state.values():
        st[1].close()
    return {s: folder / f"{s:g}MB" for s in sizes_mb}


def input_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def blocks_digest(folder: Path) -> str:
    """A digest of all the token ids of a blocks folder, in order."""
    h = hashlib.blake2b(digest_size=16)
    table = load_from_disk(str(folder)).data.table
    for chunk in table.column("input_ids").chunks:
        h.update(np.asarray(chunk.flatten()).astype(np.int32).tobytes())
    return h.hexdigest()


def memory(process: psutil.Process) -> int:
    """PSS where the system gives it (pages shared by forked workers counted once in all), else RSS."""
    try:
        return process.memory_full_info().pss
    except (AttributeError, psutil.AccessDenied):
        return process.memory_info().rss


def run_one(cmd: list[str], out: Path, env: dict, sample_memory: bool = True) -> dict:
    """Run ``cmd``; wall time, its stats.json and, with ``sample_memory``, the peak memory of it and its
    children together and of it alone. Sampling is not free (about 25 ms of CPU a sample of a 60 MB run's
    three processes, a third of a core at 20 samples a second), so timed runs do not sample."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    peak_tree = peak_main = 0
    while proc.poll() is None:
        if not sample_memory:
            proc.wait()
            break
        try:
            main_mem = memory(ps)
            tree = main_mem + sum(memory(c) for c in ps.children(recursive=True))
        except psutil.Error:
            continue
        peak_tree, peak_main = max(peak_tree, tree), max(peak_main, main_mem)
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    log = proc.stdout.read().decode(errors="replace")
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{log[-3000:]}")
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    return {"wall_s": round(wall, 2), "seconds": stats["seconds"], "cpu_seconds": stats.get("cpu_seconds"),
            "peak_mem_mb": round(peak_tree / 1e6), "peak_mem_main_mb": round(peak_main / 1e6),
            "blocks": stats["blocks"]["train"]}


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(Arguments, argv)
    sizes = [float(s) for s in args.sizes_mb.split(",")]
    procs = [int(n) for n in args.num_procs.split(",")]
    tokenizer = pick_tokenizer(args.tokenizer)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_prepare_mono_"))
    env = {**os.environ, "HF_DATASETS_CACHE": str(work / "hf_cache"), "HF_HUB_OFFLINE": "1"}
    if not args.tokenizer_threads:
        env["TOKENIZERS_PARALLELISM"] = "false"
    docs, source = source_documents(args.source)
    t0 = time.perf_counter()
    folders = write_inputs(work / "inputs", docs, sizes)
    print(f"inputs: word-shuffled copies of {source}, {', '.join(f'{s:g}' for s in sizes)} MB "
          f"({time.perf_counter() - t0:.1f} s to write); tokenizer {tokenizer}; block {args.block_size}; "
          f"TOKENIZERS_PARALLELISM={env.get('TOKENIZERS_PARALLELISM', '(unset)')}; "
          f"{os.cpu_count()} CPUs here, load average {os.getloadavg()[0]:.1f}")
    rows = []
    header = (f"{'input MB':>8} {'N':>3} {'seconds':>8} {'MB/s':>6} {'speed-up':>8} {'CPU main':>8} "
              f"{'CPU work':>8} {'peak MB':>8} {'main MB':>8}  blocks")
    print(header)
    for size in sizes:
        mb = input_bytes(folders[size]) / 1e6
        digests, runs, mem = {}, {n: [] for n in procs}, {}

        def prepare(n: int, sample_memory: bool) -> dict:
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "data_prep.prepare_mono", "--inputs", str(folders[size]), "--lang", "ko",
                   "--tokenizer", tokenizer, "--block_size", str(args.block_size), "--num_proc", str(n),
                   "--output_dir", str(out)]
            result = run_one(cmd, out, env, sample_memory)
            digests[n] = blocks_digest(out / "train_blocks")
            return result

        # One run of each N samples memory; then the timed runs, unsampled, each repeat running every N in turn
        # so that the Ns compared are measured moments apart. A row is the repeat of median time, its speed-up
        # the median over repeats of (the first N's time / this N's time).
        for n in procs:
            mem[n] = prepare(n, sample_memory=True)
        for _ in range(args.repeats):
            for n in procs:
                runs[n].append(prepare(n, sample_memory=False))
                if args.repeats > 1:
                    print(f"  {mb:.1f} MB, N = {n}: {runs[n][-1]['seconds']:.2f} s", flush=True)
        for n in procs:
            seconds = [r["seconds"] for r in runs[n]]
            median = sorted(runs[n], key=lambda r: r["seconds"])[len(seconds) // 2]
            row = {"label": f"num_proc={n}", "input_mb": round(mb, 2), "num_proc": n, **median,
                   "peak_mem_mb": mem[n]["peak_mem_mb"], "peak_mem_main_mb": mem[n]["peak_mem_main_mb"],
                   "seconds_each_repeat": seconds}
            row["identical_to_n1"] = digests[n] == digests[procs[0]]
            row["mb_per_s"] = round(mb / row["seconds"], 2)
            ratios = [a["seconds"] / b["seconds"] for a, b in zip(runs[procs[0]], runs[n])]
            row["speedup"] = round(sorted(ratios)[len(ratios) // 2], 2)
            row["speedup_each_repeat"] = [round(x, 2) for x in ratios]
            rows.append(row)
            cpu = row["cpu_seconds"] or {}
            print(f"{mb:8.1f} {n:3d} {row['seconds']:8.2f} {row['mb_per_s']:6.2f} {row['speedup']:7.2f}x "
                  f"{cpu.get('main', 0):8.2f} {cpu.get('workers', 0):8.2f} {row['peak_mem_mb']:8d} "
                  f"{row['peak_mem_main_mb']:8d}  {row['blocks']}{'' if row['identical_to_n1'] else '  DIFFERENT'}",
                  flush=True)
    if args.compare_ref:
        old = work / "prepare_mono_ref.py"
        old.write_bytes(subprocess.run(["git", "show", f"{args.compare_ref}:data_prep/prepare_mono.py"], cwd=ROOT,
                                       check=True, capture_output=True).stdout)
        size = sizes[-1]
        mb = input_bytes(folders[size]) / 1e6
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, str(old), "--inputs", str(folders[size]), "--lang", "ko", "--tokenizer", tokenizer,
               "--block_size", str(args.block_size), "--output_dir", str(out)]
        row = {"label": f"{args.compare_ref} (one process)", "input_mb": round(mb, 2), "num_proc": None,
               **run_one(cmd, out, env)}
        row["identical_to_n1"] = blocks_digest(out / "train_blocks") == digests[procs[0]]
        row["mb_per_s"] = round(mb / row["seconds"], 2)
        rows.append(row)
        print(f"{mb:8.1f} {args.compare_ref:>3} {row['seconds']:8.2f} {row['mb_per_s']:6.2f} {'':>8} {'':>8} "
              f"{'':>8} {row['peak_mem_mb']:8d} {row['peak_mem_main_mb']:8d}  {row['blocks']}"
              f"{'' if row['identical_to_n1'] else '  DIFFERENT'}")

    summary = summarize(rows, sizes, procs, args.cores)
    for line in summary["lines"]:
        print(line)
    result = {"arguments": asdict(args), "tokenizer": tokenizer, "source": source, "cpus": os.cpu_count(),
              "load_average_end": os.getloadavg(), "rows": rows, "summary": summary}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {args.output}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return result


def summarize(rows: list[dict], sizes: list[float], procs: list[int], cores: int) -> dict:
    new = [r for r in rows if r["num_proc"] is not None]
    small, large = min(r["input_mb"] for r in new), max(r["input_mb"] for r in new)
    at = {(r["input_mb"], r["num_proc"]): r for r in new}
    lines, out = [], {}
    n_max = max(procs)
    if len(procs) > 1:
        for n in procs[1:]:
            s = at[(large, n)]["speedup"]
            out[f"speedup_n{n}_{large:g}MB"] = s
            each = at[(large, n)]["speedup_each_repeat"]
            lines.append(f"speed-up with {n} processes on {large:g} MB: {s:.2f}x "
                         f"({at[(large, procs[0])]['seconds']:.1f} s -> {at[(large, n)]['seconds']:.1f} s)"
                         + (f"; each repeat: {', '.join(f'{x:.2f}x' for x in each)}" if len(each) > 1 else ""))
    for n in procs:
        mem = at[(large, n)]["peak_mem_mb"] / at[(small, n)]["peak_mem_mb"]
        speed = at[(large, n)]["mb_per_s"] / at[(small, n)]["mb_per_s"]
        out[f"memory_ratio_n{n}"], out[f"speed_ratio_n{n}"] = round(mem, 2), round(speed, 2)
        lines.append(f"N = {n}: {large:g} MB vs {small:g} MB input ({large / small:.1f}x): peak memory "
                     f"{at[(large, n)]['peak_mem_mb']} vs {at[(small, n)]['peak_mem_mb']} MB ({mem:.2f}x), "
                     f"MB/s {speed:.2f}x")
    lines.append("blocks identical for every N: " + str(all(r["identical_to_n1"] for r in rows)))
    ref = next((r for r in rows if r["num_proc"] is None), None)
    if ref:
        s = ref["seconds"] / at[(large, procs[0])]["seconds"]
        lines.append(f"{ref['label']}: {ref['seconds']:.1f} s on {ref['input_mb']:g} MB, {ref['peak_mem_mb']} MB "
                     f"peak; this code with N = {procs[0]} is {s:.2f}x faster")
    cpu, one = at[(large, n_max)]["cpu_seconds"], at[(large, procs[0])]
    below = [m for m in sorted({r["input_mb"] for r in new}) if m < large]
    if cpu and cpu["workers"] > 0 and below:
        # CPU per MB from the two largest inputs' difference: start-up (tokenizer, workers) is not per MB
        base, span = at[(below[-1], n_max)]["cpu_seconds"], large - below[-1]
        main_per_mb, work_per_mb = (cpu["main"] - base["main"]) / span, (cpu["workers"] - base["workers"]) / span
        workers = max(1, cores - 1)
        per_mb = max(main_per_mb, work_per_mb / workers)
        bound = "the reading process" if main_per_mb >= work_per_mb / workers else "the workers"
        minutes = RESEARCH_MB * per_mb / 60
        single = RESEARCH_MB * (one["seconds"] - at[(below[-1], procs[0])]["seconds"]) / span / 3600
        out.update({"main_cpu_s_per_mb": round(main_per_mb, 4), "worker_cpu_s_per_mb": round(work_per_mb, 4),
                    f"projected_minutes_35gb_{cores}_cores": round(minutes, 1), "projected_hours_35gb_n1":
                    round(single, 2)})
        lines.append(f"35 GB projection: CPU per MB, reading process {main_per_mb:.3f} s, per-document work "
                     f"{work_per_mb:.3f} s (N = {n_max}) -> --num_proc {workers} on {cores} cores: about "
                     f"{minutes:.0f} min (bound by {bound}, {1 / per_mb:.0f} MB/s); one process here: {single:.1f} h")
    out["lines"] = lines
    return out


if __name__ == "__main__":
    main()
