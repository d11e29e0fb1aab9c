"""Paired lm-eval tasks: find each language's task, check that the two hold the same items, run them through
lm-eval and join the per-item predictions by document id."""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.stats import agreement_stats
from evaluation import EvalError
from evaluation.presets import (
    DROP_GOLD,
    DROP_ONLY_EN,
    DROP_ONLY_KO,
    doc_key,
    group_as_task,
    lm_eval_task_dir,
    resolve_pairs,
)

if TYPE_CHECKING:  # the argument dataclass of eval_agreement.py
    from eval_agreement import Arguments

logger = logging.getLogger("eval_agreement")


TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"  # the project's task YAMLs


DEFAULT_PAIR = "koen_arc_challenge_en:koen_arc_challenge_ko"


def absolutise_data_files(cfg: dict, yaml_path: str | None) -> None:
    """lm-eval resolves relative ``data_files`` against the current directory; here a relative path is
    taken from the YAML's folder when the file is there, else from the current directory (what the
    lm_eval command line does), and made absolute so that nothing depends on where we run."""
    kwargs = cfg.get("dataset_kwargs") or {}
    files = kwargs.get("data_files")
    if not files:
        return

    def fix(p: str) -> str:
        if os.path.isabs(p) or "://" in p:
            return p
        candidates = ([os.path.join(os.path.dirname(yaml_path), p)] if yaml_path else []) + [os.path.abspath(p)]
        for c in candidates:
            if os.path.exists(c):
                return os.path.abspath(c)
        raise EvalError(f"task {cfg.get('task')}: data file {p!r} not found (looked at {', '.join(candidates)})")

    if isinstance(files, str):
        kwargs["data_files"] = fix(files)
    elif isinstance(files, list):
        kwargs["data_files"] = [fix(p) for p in files]
    elif isinstance(files, dict):
        kwargs["data_files"] = {k: ([fix(p) for p in v] if isinstance(v, list) else fix(v)) for k, v in files.items()}


def task_config(task_manager, name: str, data_file: str | None) -> dict | str:
    """The task's YAML config as a dict (includes and !function resolved), its data files made absolute,
    its dataset replaced by ``data_file`` (a JSONL file in the rows' format the task reads, split 'test') when
    given; the prompt, choices, target and ``process_docs`` stay the task's. A group of tasks that differ only
    in the documents they keep (Global-MMLU) becomes one task holding all of them (``group_as_task``)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager.task_index.get(name)
    if entry is None:
        known = ", ".join(task_manager.all_subtasks[:20]) or "none"
        folders = [str(TASKS_DIR)] + [str(p) for p in task_manager.include_path[1:]]
        raise EvalError(f"unknown task {name!r}; tasks found in {folders}: {known}")
    if entry.kind.name in ("GROUP", "TAG"):
        cfg = group_as_task(task_manager, name)
    elif entry.yaml_path is None:
        if data_file:
            raise EvalError(f"task {name} has no YAML config, so its data cannot be replaced")
        return name
    else:
        cfg = load_yaml(str(entry.yaml_path), resolve_func=True)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    if cfg.get("output_type") != "multiple_choice":
        raise EvalError(f"task {name} has output_type {cfg.get('output_type')!r}; pairs need multiple_choice tasks")
    if data_file:
        cfg.update(dataset_path="json", dataset_name=None,
                   dataset_kwargs={"data_files": {"test": os.path.abspath(data_file)}},
                   test_split="test", training_split=None, validation_split=None, fewshot_split=None)
        if cfg.get("num_fewshot"):
            raise EvalError(f"task {name} asks for {cfg['num_fewshot']}-shot prompts, which need a training split "
                            "that --en_data/--ko_data do not give")
    else:
        absolutise_data_files(cfg, str(entry.yaml_path))
    return cfg


# builders of the datasets library that read local files named in data_files, not a hub dataset
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "xml", "sql", "webdataset", "imagefolder",
                  "audiofolder", "videofolder"}


_hub_probe: dict[str, str | None] = {}


def hub_dataset(cfg) -> str | None:
    """The hub dataset a task config reads (its ``dataset_path``), or None when it reads local files."""
    if not isinstance(cfg, dict):  # a task without a YAML config: what it reads is not known here
        return None
    path = cfg.get("dataset_path")
    if not path or path in LOCAL_BUILDERS or os.path.exists(path):
        return None
    return path


def offline_setting() -> str | None:
    """'HF_HUB_OFFLINE=1' (or HF_DATASETS_OFFLINE) when the environment puts the hub libraries offline."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var}={os.environ[var]}"
    return None


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the hub (HF_ENDPOINT, default https://huggingface.co) cannot be reached, or None when it answers.
    One HEAD request with no retry (proxies from the environment apply), asked once per process: the
    libraries would otherwise retry for about half a minute before failing."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if endpoint not in _hub_probe:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            _hub_probe[endpoint] = None
        except urllib.error.HTTPError:  # the server answered, if with an error status: it is reachable
            _hub_probe[endpoint] = None
        except (urllib.error.URLError, OSError, ValueError) as e:
            _hub_probe[endpoint] = f"{endpoint}: {getattr(e, 'reason', None) or e}"
    return _hub_probe[endpoint]


def hub_hint(name: str, cfg) -> str:
    """The hint added to a failure to load task ``name``; raises ``EvalError`` at once when ``cfg`` reads a
    hub dataset and the hub cannot be reached (offline settings leave the local cache to try first)."""
    hub = hub_dataset(cfg)
    if hub is None:
        return ""
    fix = ("pass --en_data/--ko_data (local ARC-format JSONL files), or give the task YAML local data_files "
           "(--include_path)")
    offline = offline_setting()
    if offline:
        return (f" (task {name} reads the hub dataset {hub!r} and {offline} is set, so only a cached copy could "
                f"be read: {fix})")
    why = hub_unreachable()
    if why:
        raise EvalError(f"task {name} reads the hub dataset {hub!r}, but the hub cannot be reached ({why}): {fix}; "
                        "or set HF_DATASETS_OFFLINE=1 to use a cached copy")
    return f" (task {name} reads the hub dataset {hub!r}; {fix} to read local files instead)"


HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7a3\ud7b0-\ud7ff]")


def hangul_share(task, max_docs: int = 300) -> tuple[float | None, int]:
    """(share, number) of the task's evaluation documents that are mostly Hangul: more than half of the letters
    of their question text (``doc_to_text``, the prompt included) and choices are Hangul. At most ``max_docs``
    documents spread evenly over the task are read (rendering the prompts of every document of a large task
    would take seconds); documents without a letter are not counted; the share is None when none has one."""
    docs = task.eval_docs
    m = min(max_docs, len(docs))
    picked = sorted({round(k * (len(docs) - 1) / max(m - 1, 1)) for k in range(m)})
    korean = counted = 0
    for i in picked:
        doc = docs[i]
        text = task.doc_to_text(doc)
        parts = ([text] if isinstance(text, str) else []) + [str(c) for c in task.doc_to_choice(doc)]
        letters = [c for part in parts for c in part if c.isalpha()]
        if letters:
            counted += 1
            korean += 2 * sum(1 for c in letters if HANGUL.match(c)) > len(letters)
    return (korean / counted if counted else None), counted


def check_languages(en_task, ko_task, en_where: str, ko_where: str) -> None:
    """Refuse an English task whose documents are mostly Hangul and a Korean task whose documents are not
    (more than half of its documents mostly Hangul), e.g. --en_data and --ko_data swapped, which lm-eval
    would score without a word."""
    problems = []
    share, n = hangul_share(en_task)
    if share is not None and share > 0.5:
        problems.append(f"{en_where} is the English task, but {share:.1%} of its documents are mostly Hangul "
                        f"(of {n} read)")
    share, n = hangul_share(ko_task)
    if share is not None and share <= 0.5:
        problems.append(f"{ko_where} is the Korean task, but only {share:.1%} of its documents are mostly Hangul "
                        f"(of {n} read)")
    if problems:
        swapped = " (are the English and Korean files swapped?)" if len(problems) == 2 else ""
        raise EvalError("wrong language" + swapped + ":\n  " + "\n  ".join(problems)
                        + "\n  (a document is mostly Hangul when more than half of the letters of its question "
                        "text and choices are Hangul; at most 300 documents spread over the task are read)")


def load_task(task_manager, spec, where: str, hint: str = ""):
    """Build the lm-eval Task (this reads its dataset)."""
    try:
        loaded = task_manager.load([spec])["tasks"]
    except Exception as e:  # datasets / lm-eval wrap the cause in many types; say which task and file
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise EvalError(f"cannot load task {where}: {type(cause).__name__}: {first}{hint}") from None
    return next(iter(loaded.values()))


def task_items(task, join: str | tuple[str, ...], where: str, drop_gold_outside: bool = False) -> list[dict]:
    """[{id, gold, choices, text}] of the task's evaluation docs, in order (item k is document k; text: the
    prompt, ``doc_to_text``). ``join``: the field, or fields, whose values identify an item (the id is then their
    tuple); 'doc_id' joins by position. An item whose gold is not one of its choices (PAWS-X's label -1) is an
    error, or with ``drop_gold_outside`` kept with gold -1 for ``prepare_pairs`` to drop from both languages."""
    join = (join,) if isinstance(join, str) else tuple(join)
    items, missing = [], 0
    for i, doc in enumerate(task.eval_docs):
        if join == ("doc_id",):
            doc_id = i
        elif all(f in doc for f in join):
            doc_id = doc_key(doc, join)
        else:
            missing += 1
            continue
        choices = task.doc_to_choice(doc)
        gold = task.doc_to_target(doc)
        if isinstance(gold, str):
            gold = choices.index(gold) if gold in choices else -1
        if isinstance(gold, list) or not 0 <= gold < len(choices):
            if not drop_gold_outside or isinstance(gold, list):
                raise EvalError(f"{where}: item {doc_id!r} has gold {gold!r}; "
                                f"a single gold index within its {len(choices)} choices is required")
            gold = -1
        text = task.doc_to_text(doc)  # the prompt the model reads: the question whose KO/EN similarity item_link uses
        items.append({"id": doc_id, "gold": int(gold), "choices": list(choices), "text": text if isinstance(text, str)
                      else str(text)})
    if missing:
        fields = " + ".join(repr(f) for f in join)
        raise EvalError(f"{where}: {missing} of {missing + len(items)} docs have no field {fields} to join on "
                        "(--id_field doc_id joins by position)")
    return items


def pair_items(en: list[dict], ko: list[dict], en_where: str, ko_where: str, show: int = 5,
               drop_unpaired: bool = False) -> tuple[dict, dict[str, list]]:
    """Check that the two tasks hold the same items; return ({id: ko position}, {reason: [ids dropped]}).
    Items with gold -1 in either language are dropped ("gold outside the choices"; ``task_items`` lets them
    through only when the pair drops them), and with ``drop_unpaired`` the ids of one language only; any
    other difference is an error that lists counts and first mismatches."""
    problems = []
    for items, where in ((en, en_where), (ko, ko_where)):
        seen, dups = set(), []
        for it in items:
            if it["id"] in seen:
                dups.append(it["id"])
            seen.add(it["id"])
        if dups:
            problems.append(f"{len(dups)} duplicate ids in {where} (first: {dups[:show]})")
    ko_pos = {it["id"]: i for i, it in enumerate(ko)}
    en_ids = {it["id"] for it in en}
    only_en = [it["id"] for it in en if it["id"] not in ko_pos]
    only_ko = [it["id"] for it in ko if it["id"] not in en_ids]
    dropped = {DROP_GOLD: [], DROP_ONLY_EN: [], DROP_ONLY_KO: []}
    if drop_unpaired:
        dropped[DROP_ONLY_EN], dropped[DROP_ONLY_KO] = only_en, only_ko
    else:
        if only_en:
            problems.append(f"{len(only_en)} ids only in {en_where} (first: {only_en[:show]})")
        if only_ko:
            problems.append(f"{len(only_ko)} ids only in {ko_where} (first: {only_ko[:show]})")
    n_choice, gold = [], []
    for it in en:
        j = ko_pos.get(it["id"])
        if j is None:
            continue
        if it["gold"] < 0 or ko[j]["gold"] < 0:
            dropped[DROP_GOLD].append(it["id"])
            continue
        if len(it["choices"]) != len(ko[j]["choices"]):
            n_choice.append(f"{it['id']}: {len(it['choices'])} vs {len(ko[j]['choices'])}")
        elif it["gold"] != ko[j]["gold"]:
            gold.append(f"{it['id']}: {it['gold']} vs {ko[j]['gold']}")
    if n_choice:
        problems.append(f"{len(n_choice)} ids with a different number of choices (EN vs KO; first: {n_choice[:show]})")
    if gold:
        problems.append(f"{len(gold)} ids with a different gold answer index (EN vs KO; first: {gold[:show]})")
    if problems:
        raise EvalError(f"{en_where} ({len(en)} items) and {ko_where} ({len(ko)} items) do not pair up:\n  "
                        + "\n  ".join(problems))
    return ko_pos, {reason: ids for reason, ids in dropped.items() if ids}


class TaskLookup:
    """Finds tasks in the project's tasks/ and the --include_path folders, and a name not there among lm-eval's
    built-in tasks: their index (about 4 s to build) is made only when a pair names such a task."""

    def __init__(self, include_path: list[str]):
        from lm_eval.tasks import TaskManager

        self.include_path = [str(TASKS_DIR)] + [os.path.abspath(p) for p in include_path]
        self.ours = TaskManager(include_path=self.include_path, include_defaults=False)
        self._with_defaults = None
        self._folders = {}

    @property
    def with_defaults(self):
        """A TaskManager of our folders and lm-eval's built-in tasks."""
        if self._with_defaults is None:
            from lm_eval.tasks import TaskManager

            logger.info("indexing lm-eval's built-in tasks")
            self._with_defaults = TaskManager(include_path=self.include_path, include_defaults=True)
        return self._with_defaults

    def manager_for(self, *names: str):
        """Our TaskManager when it knows every name, else the one with lm-eval's built-in tasks as well."""
        if all(n in self.ours.task_index for n in names):
            return self.ours
        manager = self.with_defaults
        unknown = [n for n in names if n not in manager.task_index]
        if unknown:
            known = ", ".join(self.ours.all_subtasks[:20]) or "none"
            raise EvalError(f"unknown task {unknown[0]!r}: not among lm-eval's built-in tasks, nor in "
                            f"{self.include_path} (tasks there: {known})")
        return manager

    def manager_for_preset(self, preset):
        """A TaskManager of our folders and the one folder of lm-eval's tasks that holds the preset's tasks
        (indexed in a fraction of a second), else ``manager_for`` the preset's two task names."""
        folder = lm_eval_task_dir(preset)
        if folder is None:
            return self.manager_for(preset.en, preset.ko)
        if folder not in self._folders:
            from lm_eval.tasks import TaskManager

            self._folders[folder] = TaskManager(include_path=self.include_path + [folder], include_defaults=False)
        manager = self._folders[folder]
        for name in (preset.en, preset.ko):
            if name not in manager.task_index:
                raise EvalError(f"task {name} is not in {folder}: this lm-eval does not have the preset's tasks")
        return manager


def prepare_pairs(args: Arguments) -> list[dict]:
    """Load and cross-check every pair's tasks once, before any model is loaded. Each pair (``--pair`` presets
    or EN_TASK:KO_TASK, ``--suite``) gives a dict with its tasks, items and the positions to evaluate
    (``en_idx``, ``ko_idx``: the kept items, first ``--limit``), ``cluster`` (a list aligned with ``en_idx``
    of the preset's cluster field in the English document, or None) and ``dropped`` ({reason: count} of the
    items left out of both languages, e.g. PAWS-X's label -1)."""
    lookup = TaskLookup(args.include_path)
    pairs = []
    for preset_name, preset in resolve_pairs(args.pair, args.suite, args.id_field):
        en_name, ko_name = preset.en, preset.ko
        task_manager = lookup.manager_for_preset(preset)
        en_where = f"{en_name} ({args.en_data})" if args.en_data else en_name
        ko_where = f"{ko_name} ({args.ko_data})" if args.ko_data else ko_name
        en_cfg = task_config(task_manager, en_name, args.en_data)
        ko_cfg = task_config(task_manager, ko_name, args.ko_data)
        en_task = load_task(task_manager, en_cfg, en_where, hub_hint(en_name, en_cfg))
        ko_task = load_task(task_manager, ko_cfg, ko_where, hub_hint(ko_name, ko_cfg))
        check_languages(en_task, ko_task, en_where, ko_where)
        en_items = task_items(en_task, preset.join, en_where, preset.drop_gold_outside)
        ko_items = task_items(ko_task, preset.join, ko_where, preset.drop_gold_outside)
        ko_pos, dropped_ids = pair_items(en_items, ko_items, en_where, ko_where, drop_unpaired=preset.drop_unpaired)
        left_out = {i for ids in dropped_ids.values() for i in ids}
        for reason, ids in dropped_ids.items():  # never silently: logged here, counted in the pair's results
            logger.warning("%s / %s: %d items dropped from both languages (%s; first: %s)",
                           en_name, ko_name, len(ids), reason, ids[:5])
        en_idx = [i for i, it in enumerate(en_items) if it["id"] not in left_out][: args.limit]
        ko_idx = [ko_pos[en_items[i]["id"]] for i in en_idx]
        cluster = None
        if preset.cluster is not None:
            docs = en_task.eval_docs
            if any(preset.cluster not in docs[i] for i in en_idx):
                raise EvalError(f"{en_where}: documents without the field {preset.cluster!r} that groups items "
                                "by context")
            cluster = [docs[i][preset.cluster] for i in en_idx]
        pairs.append({
            "name": f"{en_name}__{ko_name}", "preset": preset_name, "en": en_name, "ko": ko_name,
            "en_task": en_task, "ko_task": ko_task, "en_items": en_items, "ko_items": ko_items,
            "en_idx": en_idx, "ko_idx": ko_idx, "cluster": cluster,
            "dropped": {reason: len(ids) for reason, ids in dropped_ids.items()},
            "task_manager": task_manager, "join": preset.join,
        })
    return pairs


def predictions(lls: list[float], choices: list[str]) -> tuple[int, int]:
    """(acc prediction, acc_norm prediction), exactly as lm-eval's multiple_choice: argmax of the
    log-likelihoods, and of log-likelihood / len(choice) in characters; ties go to the first choice."""
    lls_arr = np.asarray(lls, dtype=np.float64)
    lengths = np.asarray([float(len(c)) for c in choices])
    return int(np.argmax(lls_arr)), int(np.argmax(lls_arr / lengths))


def read_samples(samples: list[dict], task: str, items: list[dict], join: tuple[str, ...]) -> dict[int, dict]:
    """{doc position: {lls, pred, pred_norm}} from lm-eval's logged samples of one task, each checked
    against its item (id, number of choices) and against lm-eval's own acc/acc_norm."""
    by_doc = {}
    for s in samples:
        lls = [float(r[0]) for r in s["filtered_resps"]]
        position = s["doc_id"]  # the doc's position in the task's evaluation split
        item = items[position]
        if join != ("doc_id",) and doc_key(s["doc"], join) != item["id"]:
            raise RuntimeError(f"{task}: lm-eval's doc {s['doc_id']} is not item {item['id']!r}")
        if len(lls) != len(item["choices"]):
            raise RuntimeError(f"{task} doc {s['doc_id']}: {len(lls)} log-likelihoods "
                               f"for {len(item['choices'])} choices")
        pred, pred_norm = predictions(lls, item["choices"])
        # our reading of the samples must reproduce lm-eval's own per-item scores
        if (("acc" in s and s["acc"] != float(pred == item["gold"]))
                or ("acc_norm" in s and s["acc_norm"] != float(pred_norm == item["gold"]))):
            raise RuntimeError(f"{task} doc {s['doc_id']}: predictions disagree with lm-eval's acc/acc_norm")
        by_doc[position] = {"lls": lls, "pred": pred, "pred_norm": pred_norm}
    return by_doc


def evaluate_pair(lm, pair: dict, seed: int) -> tuple[dict, list[dict]]:
    """Run both tasks of a pair through lm-eval and join the per-item results by id."""
    from lm_eval import simple_evaluate

    en, ko = pair["en"], pair["ko"]
    whole = len(pair["en_idx"]) == len(pair["en_items"])
    out = simple_evaluate(
        model=lm, tasks=[pair["en_task"], pair["ko_task"]], task_manager=pair["task_manager"],
        # sorted: lm-eval 0.4.13 labels the k-th selected doc (in file order) with samples[k], so an
        # unsorted list would attach the wrong doc_id to a sample
        samples=None if whole else {en: sorted(pair["en_idx"]), ko: sorted(pair["ko_idx"])},
        log_samples=True, bootstrap_iters=0,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )
    per_lang = {lang: read_samples(out["samples"][task], task, pair[f"{lang}_items"], pair["join"])
                for lang, task in (("en", en), ("ko", ko))}
    rows = []
    for i, j in zip(pair["en_idx"], pair["ko_idx"]):
        e, k = per_lang["en"][i], per_lang["ko"][j]
        rows.append({
            "id": pair["en_items"][i]["id"], "gold": pair["en_items"][i]["gold"],
            "pred_en": e["pred"], "pred_ko": k["pred"], "pred_norm_en": e["pred_norm"], "pred_norm_ko": k["pred_norm"],
            "loglik_en": e["lls"], "loglik_ko": k["lls"],
        })
    if pair.get("cluster") is not None:  # items sharing a context (a passage) are resampled together
        for row, cluster in zip(rows, pair["cluster"]):
            row["cluster"] = cluster
    gold = [r["gold"] for r in rows]
    acc = agreement_stats(gold, [r["pred_en"] for r in rows], [r["pred_ko"] for r in rows])
    norm = agreement_stats(gold, [r["pred_norm_en"] for r in rows], [r["pred_norm_ko"] for r in rows])
    result = {
        "en_task": en, "ko_task": ko, "n_items": acc["n"],
        "acc_en": acc["acc_en"], "acc_ko": acc["acc_ko"], "acc_norm_en": norm["acc_en"], "acc_norm_ko": norm["acc_ko"],
        "agreement": acc["agreement"], "kappa": acc["kappa"], "table": acc["table"],
        "agreement_en_right": acc["agreement_en_right"],
        "agreement_norm": norm["agreement"], "kappa_norm": norm["kappa"], "table_norm": norm["table"],
        "agreement_norm_en_right": norm["agreement_en_right"],
        "dropped": pair.get("dropped", {}),  # items left out of both languages, by reason (PAWS-X's label -1)
        "lm_eval": {f"{m}_{lang}": out["results"][t].get(f"{m},none")
                    for lang, t in (("en", en), ("ko", ko)) for m in ("acc", "acc_norm")},
    }
    return result, rows


def evaluate_model_on_pairs(model, tokenizer, label: str, pairs: list[dict], args: Arguments, out_dir: Path,
                            bar, counts: dict[str, np.ndarray]) -> dict:
    """{pair name: stats} of one model over every pair, with the intervals of ``evaluation.compare.score_intervals``
    on the pair's resampled item ``counts``; the per-item rows (with each item's soft agreement) go to
    ``out_dir/label/<pair>.items.jsonl``."""
    from lm_eval.models.huggingface import HFLM

    from evaluation.compare import score_intervals, soft_scores

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, max_length=args.max_length)
    stats = {}
    for pair in pairs:
        bar.set_postfix_str(f"{label}: {pair['en']} / {pair['ko']}")
        stats[pair["name"]], rows = evaluate_pair(lm, pair, args.seed)
        stats[pair["name"]].update(score_intervals(rows, counts[pair["name"]], args.ci_level))
        for name, values in soft_scores(rows).items():
            for row, value in zip(rows, values):
                row[name] = float(value)
        item_path = out_dir / label / f"{pair['name']}.items.jsonl"
        item_path.parent.mkdir(parents=True, exist_ok=True)
        with open(item_path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        bar.update(1)
    return stats
