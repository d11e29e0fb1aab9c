"""Named pairs of parallel English/Korean benchmarks (``--pair belebele``, ``--suite koen``): lm-eval's own tasks,
with what pairing them needs beyond the two task names: the document fields that identify an item in both
languages, the field that groups items sharing a context (resampled together by the clustered bootstrap), and
what to do with items the two tasks cannot score alike.

The task names, fields and splits are those of lm-eval 0.4.13's YAMLs (lm_eval/tasks/...):

- ``arc``: koen_arc_challenge_en / koen_arc_challenge_ko (this project's tasks/arc_en_ko), ARC-Challenge test,
  1,172 items, joined on ``id``.
- ``belebele``: belebele_eng_Latn / belebele_kor_Hang (facebook/belebele, configs eng_Latn / kor_Hang, split
  test), 900 questions on 488 passages; a question is ``link`` + ``question_number`` (a passage holds one to
  several questions, so neither field alone is unique); clustered on ``link``, the passage.
- ``global_mmlu_lite``: global_mmlu_en / global_mmlu_ko (CohereLabs/Global-MMLU-Lite, configs en / ko, split
  test), 400 items, joined on ``sample_id``. In lm-eval these are groups of six tasks, one per subject category
  (``process_docs`` filters ``subject_category``); here the pair is one task holding the union of the group's
  documents (each member's filter applied, then concatenated), so the accuracy is the group's size-weighted one.
- ``global_mmlu``: global_mmlu_full_en / global_mmlu_full_ko (CohereForAI/Global-MMLU, configs en / ko, split
  test), 14,042 items, the same fields; groups of 57 subject tasks (filter on ``subject``), joined likewise.
- ``paws_x``: paws_en / paws_ko (google-research-datasets/paws-x, configs en / ko, split test), 2,000 items,
  joined on ``id``; the choices are the two sentences joined by "No" / "Yes" and the gold is ``label``. A
  label of -1 is outside the two choices: lm-eval scores such an item as wrong (argmax never equals -1) without
  a warning; here it is dropped from both languages and counted in the pair's ``dropped``. paws_en also drops
  documents with an empty sentence (``process_docs``), paws_ko does not: an id left in one language only is
  dropped and counted too.
- ``demo``: koen_demo_en / koen_demo_ko (data/demo/eval_{en,ko}.jsonl, tasks/demo_en_ko), 157 items written
  for this project, joined on ``id``, clustered on ``cluster`` (three questions share each reading passage).

``--suite koen``: arc, belebele, global_mmlu_lite and paws_x: the full Global-MMLU (14,042 items, 35 times the
Lite set) is left to an explicit ``--pair global_mmlu``, so that the suite stays a routine evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from evaluation import EvalError

DROP_GOLD = "gold outside the choices"
DROP_ONLY_EN = "only in the English task"
DROP_ONLY_KO = "only in the Korean task"


@dataclass(frozen=True)
class Preset:
    """A pair of lm-eval tasks and how their documents pair up."""

    en: str
    ko: str
    join: tuple[str, ...]  # document fields that together identify an item, the same in both languages
    cluster: str | None = None  # document field shared by the items of one context (None: every item alone)
    drop_gold_outside: bool = False  # drop (and count) items whose gold is not one of their choices; else an error
    drop_unpaired: bool = False  # drop (and count) items present in one language only; else an error
    lm_eval_folder: str | None = None  # folder of the tasks under lm_eval/tasks (None: the project's tasks/)


PRESETS: dict[str, Preset] = {
    "arc": Preset("koen_arc_challenge_en", "koen_arc_challenge_ko", ("id",)),
    "belebele": Preset("belebele_eng_Latn", "belebele_kor_Hang", ("link", "question_number"), cluster="link",
                       lm_eval_folder="belebele"),
    "global_mmlu_lite": Preset("global_mmlu_en", "global_mmlu_ko", ("sample_id",),
                               lm_eval_folder="global_mmlu/default"),
    "global_mmlu": Preset("global_mmlu_full_en", "global_mmlu_full_ko", ("sample_id",),
                          lm_eval_folder="global_mmlu/full"),
    "paws_x": Preset("paws_en", "paws_ko", ("id",), drop_gold_outside=True, drop_unpaired=True,
                     lm_eval_folder="paws-x"),
    "demo": Preset("koen_demo_en", "koen_demo_ko", ("id",), cluster="cluster"),
}
SUITES: dict[str, tuple[str, ...]] = {"koen": ("arc", "belebele", "global_mmlu_lite", "paws_x")}


def resolve_pairs(pair: list[str], suite: str | None, id_field: str) -> list[tuple[str, Preset]]:
    """[(pair name, Preset)] for ``--pair`` (preset names or EN_TASK:KO_TASK, joined on ``id_field``) and
    ``--suite`` (its presets, after the pairs, each pair once)."""
    names = list(pair)
    if suite is not None:
        if suite not in SUITES:
            raise EvalError(f"--suite {suite!r}: unknown suite; suites: "
                            + ", ".join(f"{k} ({', '.join(v)})" for k, v in SUITES.items()))
        names += [n for n in SUITES[suite] if n not in names]
    out = []
    for spec in names:
        if spec in PRESETS:
            out.append((spec, PRESETS[spec]))
        elif spec.count(":") == 1 and all(spec.split(":")):
            en, ko = spec.split(":")
            out.append((spec, Preset(en, ko, (id_field,))))
        else:
            raise EvalError(f"--pair {spec!r}: neither a preset ({', '.join(PRESETS)}) nor EN_TASK:KO_TASK")
    return out


def lm_eval_task_dir(preset: Preset) -> str | None:
    """The folder of lm-eval's own YAMLs for ``preset`` (indexing it alone takes a fraction of a second, where
    indexing every built-in task takes seconds)."""
    if preset.lm_eval_folder is None:
        return None
    import lm_eval.tasks

    return os.path.join(os.path.dirname(lm_eval.tasks.__file__), preset.lm_eval_folder)


def doc_key(doc: dict, join: tuple[str, ...]):
    """The item's identity: the value of the one join field, or the tuple of the join fields."""
    return doc[join[0]] if len(join) == 1 else tuple(doc[f] for f in join)


def group_leaves(task_manager, name: str) -> list[str]:
    """The tasks under a group or tag of ``task_manager``'s index, in the index's order (recursively)."""
    entry = task_manager.task_index[name]
    kind = entry.kind.name
    if kind == "TASK":
        return [name]
    members = entry.cfg.get("task", []) if kind == "GROUP" else sorted(entry.tags)
    leaves = []
    for member in members:
        if not isinstance(member, str) or member not in task_manager.task_index:
            raise EvalError(f"group {name}: member {member!r} is not a task this lookup knows")
        leaves += group_leaves(task_manager, member)
    return leaves


def group_as_task(task_manager, name: str) -> dict:
    """A group of multiple-choice tasks that share one dataset and one prompt, differing only in the documents
    each keeps (``process_docs``, e.g. Global-MMLU's subject filters), as one task config named ``name`` whose
    documents are every member's, member after member. Its accuracy is the group's size-weighted accuracy."""
    from lm_eval.tasks._yaml_loader import load_yaml

    leaves = group_leaves(task_manager, name)
    configs = [load_yaml(str(task_manager.task_index[leaf].yaml_path), resolve_func=True) for leaf in leaves]
    filters = [c.pop("process_docs", None) for c in configs]
    for c in configs:
        for key in ("task", "tag", "group"):
            c.pop(key, None)
    differ = sorted({k for c in configs[1:] for k in set(c) | set(configs[0]) if c.get(k) != configs[0].get(k)})
    if differ:
        raise EvalError(f"group {name}: its tasks differ in {differ}, not only in the documents they keep; "
                        "pair its tasks one by one (--pair EN_TASK:KO_TASK)")
    if any(f is None for f in filters):
        raise EvalError(f"group {name}: a member keeps every document; the union would hold them twice")

    def process_docs(dataset):
        from datasets import concatenate_datasets

        return concatenate_datasets([keep(dataset) for keep in filters])

    return {**configs[0], "task": name, "process_docs": process_docs}
