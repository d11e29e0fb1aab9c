"""Sentence representations: how a run pooled (its training_args.json), the representation as trained, and the
alignment metrics of every layer."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from common.data import DataError, iter_parallel_jsonl, sample_indices, text_key
from common.metrics import alignment_measures, alignment_metrics, language_probe_hits, retrieval_hits
from common.pooling import LayerMixture, layer_states, pool, pooled_layers, pooling_mask
from common.stats import alignment_intervals, weighted_mean_ci
from evaluation import EvalError
from evaluation.models import num_layers_of, num_layers_of_model, read_json

if TYPE_CHECKING:  # the argument dataclass of eval_agreement.py
    from eval_agreement import Arguments

logger = logging.getLogger("eval_agreement")


def trained_pooling(folder: str, max_depth: int = 8) -> dict | None:
    """How the stage-1 run behind the model ``folder`` pooled its sentence vectors; None when no stage-1 run
    trained it (a base model: no training_args.json, or a lineage that leaves the local disk).

    From the checkpoint's ``training_args.json`` (train_contrastive.py's arguments) and, for a mixture,
    ``layer_weights.json`` (the trained weights, at the run's final temperature): the layers (``pool_layer``,
    unset = N // 2; or the mixture's layers), the weights, per-layer normalisation (``mix_normalize``),
    ``pooling``, BOS handling, ``max_seq_length``, the validation batch size (``per_device_train_batch_size``),
    bf16 autocast, and the English side: ``shared``, or ``frozen`` with the starting model
    (``model_name_or_path``) as its encoder. A stage-2/3 checkpoint (training_args.json without these settings)
    is pooled as the stage-1 checkpoint it descends from (its ``model_name_or_path``, followed up to
    ``max_depth`` times), with the English side shared: its own frozen copy is gone."""
    path, descendants = Path(folder), []
    for _ in range(max_depth):
        if not (path / "training_args.json").is_file():
            return None
        targs = read_json(path / "training_args.json", "training arguments")
        if "pool_layer" in targs or "mix_layers" in targs:
            break
        start = targs.get("model_name_or_path")
        if not start or not os.path.isdir(start):
            if descendants or start:
                logger.warning("%s: the model it started from (%s) is not a local folder; no stage-1 pooling known",
                               folder, start)
            return None
        descendants.append(str(path))
        path = Path(start)
    else:
        return None
    if targs.get("mix_layers"):
        weights_file = path / "layer_weights.json"
        if not weights_file.is_file():
            raise EvalError(f"{path}: trained with --mix_layers {targs['mix_layers']} but has no layer_weights.json")
        saved = read_json(weights_file, "layer weights")
        layers = sorted(int(k) for k in saved)
        weights = [float(saved[str(layer)]) for layer in layers]
    else:
        layer = targs.get("pool_layer")
        layers, weights = [num_layers_of(str(path)) // 2 if layer is None else int(layer)], None
    frozen = targs.get("english_encoder") == "frozen" and not descendants
    return {
        "layers": layers, "weights": weights, "normalize": bool(targs.get("mix_normalize", True)),
        "pooling": targs.get("pooling", "mean"), "include_bos": bool(targs.get("include_bos", False)),
        "max_seq_length": int(targs.get("max_seq_length", 128)),
        "batch_size": int(targs.get("per_device_train_batch_size", 32)), "bf16": bool(targs.get("bf16", False)),
        "english_encoder": "frozen" if frozen else "shared",
        "english_model": targs.get("model_name_or_path") if frozen else None,
        "trained_by": str(path.resolve()), "descendant_of_run": bool(descendants),
    }


def stage_of(folder: str) -> int | None:
    """The training stage that wrote the checkpoint ``folder``, from its training_args.json: 1 (a pooling:
    train_contrastive.py), 3 (a Korean/English ratio: train_full.py) or 2 (train_lm_head.py); None without one."""
    path = Path(folder) / "training_args.json"
    if not path.is_file():
        return None
    targs = read_json(path, "training arguments")
    return 1 if "pool_layer" in targs or "mix_layers" in targs else 3 if "ko_ratio" in targs else 2


def flags_pooling(args: Arguments) -> dict:
    """The pooling of a model no run trained, from --pooling, --include_bos, --max_seq_length at an integer
    --report_layer (else the model's middle layer: ``layers`` None)."""
    layer = int(args.report_layer) if re.fullmatch(r"\d+", args.report_layer) else None
    return {"layers": None if layer is None else [layer], "weights": None, "normalize": True, "pooling": args.pooling,
            "include_bos": args.include_bos, "max_seq_length": args.max_seq_length, "batch_size": args.rep_batch_size,
            "bf16": False, "english_encoder": "shared", "english_model": None, "trained_by": None}


def as_step_zero(spec: dict) -> dict:
    """A run's pooling as it was at step 0, for a baseline: the same layers with uniform mixture weights, its
    pooling, BOS handling, max length and precision, English through the model itself."""
    k = len(spec["layers"])
    return {**spec, "weights": [1.0 / k] * k if spec["weights"] is not None else None, "english_encoder": "shared",
            "english_model": None, "like_run": spec["trained_by"], "trained_by": None, "descendant_of_run": False}


def pooling_key(spec: dict) -> tuple:
    """What makes two poolings the same representation (mixture weights aside): layers, mean/last, BOS, max
    length, and for a mixture the per-layer normalisation."""
    layers = tuple(spec["layers"] or ())
    return (layers, spec["pooling"], bool(spec["include_bos"]), int(spec["max_seq_length"]),
            bool(spec["normalize"]) if len(layers) > 1 else None)


def describe_pooling(spec: dict) -> str:
    """'layer 17, mean' / 'mix 1-24 (top 17: 0.081), mean, BOS' / '..., EN frozen' for the tables."""
    layers, weights = spec["layers"], spec.get("weights")
    if weights is not None and len(layers) > 1:
        contiguous = layers == list(range(layers[0], layers[-1] + 1))
        span = f"{layers[0]}-{layers[-1]}" if contiguous else ",".join(map(str, layers))
        top = max(range(len(layers)), key=weights.__getitem__)
        text = f"mix {span} (top {layers[top]}: {weights[top]:.3f})"
    else:
        text = f"layer {layers[0]}"
    text += f", {spec['pooling']}" + (", BOS" if spec["include_bos"] else "")
    english = {"frozen": "frozen start", "other model": "other model", "self": "through itself"}
    if spec.get("english_encoder") in english:
        text += ", EN " + english[spec["english_encoder"]]
    return text


def top_layer(spec: dict) -> int:
    """The pooled layer, or for a mixture the layer of largest weight (ties: the first)."""
    if spec["weights"] is None:
        return spec["layers"][0]
    return spec["layers"][max(range(len(spec["layers"])), key=spec["weights"].__getitem__)]


def run_checkpoints(folder: str) -> list[Path]:
    """The complete checkpoints of a run folder (``common.checkpoint.sorted_checkpoints``: renamed, with
    trainer_state.json), or of the runs directly inside it; oldest first within a run."""
    from common.checkpoint import sorted_checkpoints

    found = sorted_checkpoints(folder)
    if found:
        return found
    return [c for sub in sorted(Path(folder).iterdir()) if sub.is_dir() for c in sorted_checkpoints(str(sub))]


def pool_like_specs(args: Arguments, entries: list[dict]) -> list[dict]:
    """The distinct run poolings that baselines follow (as at step 0): those of --pool_like (a checkpoint, or a
    run folder's newest checkpoint, or each run's in a folder of runs) and of the checkpoints in ``entries``."""
    specs = []
    sources = []
    for folder in args.pool_like:
        if (Path(folder) / "training_args.json").is_file():
            sources.append(folder)
        else:
            found = run_checkpoints(folder)
            if not found:
                raise EvalError(f"--pool_like {folder}: neither a checkpoint nor a run folder with a complete "
                                "checkpoint")
            newest: dict[Path, Path] = {}
            for c in found:
                newest[c.parent] = c
            sources += [str(c) for c in newest.values()]
    sources += [e["source"] for e in entries if e["role"] == "checkpoint" and e["local"]]
    seen = set()
    for source in sources:
        spec = trained_pooling(source)
        if spec is not None and pooling_key(spec) not in seen:
            seen.add(pooling_key(spec))
            specs.append(as_step_zero(spec))
    return specs


def autocast(device, bf16: bool):
    """The training's precision: float32 weights, under bf16 autocast when the run trained with --bf16
    (accelerate's ``Accelerator.autocast`` is this ``torch.autocast``)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def encode_layers(model, tokenizer, texts: list[str], pooled: dict, batch_size: int, device,
                  label: str) -> torch.Tensor:
    """(N + 1, len(texts), D) float32: the pooled vector of every text at every layer, layers numbered as
    in ``common.pooling`` (N = the last decoder layer's output before the final norm). ``pooled`` gives
    ``pooling``, ``include_bos``, ``max_seq_length`` and ``bf16`` (autocast)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: little padding
    out = [None] * len(texts)
    saved_side, tokenizer.padding_side = tokenizer.padding_side, "right"
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=pooled["max_seq_length"],
                        return_tensors="pt").to(device)
        try:
            with autocast(device, pooled["bf16"]):
                states = layer_states(model, enc["input_ids"], enc["attention_mask"])
        except TypeError as e:  # common.pooling cannot find this model's decoder layers
            raise EvalError(f"{label}: no representation metrics for this model ({e})") from e
        mask = pooling_mask(enc["input_ids"], enc["attention_mask"], tokenizer.bos_token_id,
                            exclude_bos=not pooled["include_bos"])
        vectors = torch.stack([pool(h, mask, pooled["pooling"]).float() for h in states], dim=1).cpu()  # (B, N+1, D)
        for row, i in enumerate(idx):
            out[i] = vectors[row]
    tokenizer.padding_side = saved_side
    return torch.stack(out, dim=1)


NO_SOURCE = "(no source)"


def read_pairs(path: str, max_pairs: int, seed: int) -> dict:
    """The seeded sample of ``max_pairs`` pairs of ``path`` (``common.data.sample_indices``, stratified by
    source, exactly as train_contrastive.py samples its validation pairs: the same file, n and seed give the
    same pairs): ``{"ko", "en", "source"}`` lists in file order (rows without a source are the source
    '(no source)'), and ``rows_in_file``. The whole file is checked (``DataError`` names the line) and read
    twice: once for the sources, once for the sampled rows."""
    try:
        sources = [row["source"] for row in iter_parallel_jsonl(path)]
        if len(sources) < 2:
            raise EvalError(f"{path}: {len(sources)} pairs; the retrieval metrics need at least 2")
        keep = set(sample_indices(sources, max_pairs, seed))
        pairs = {"ko": [], "en": [], "source": [], "rows_in_file": len(sources)}
        for i, row in enumerate(iter_parallel_jsonl(path)):
            if i in keep:
                for key in ("ko", "en"):
                    pairs[key].append(row[key])
                pairs["source"].append(sources[i] or NO_SOURCE)
    except DataError as e:
        raise EvalError(str(e)) from None
    return pairs


def source_groups(sources: list[str], min_pairs: int) -> dict[str, list[int]]:
    """{source: row positions} for the sources with at least ``min_pairs`` rows, when there are several
    sources (with one, the per-source metrics would repeat the overall ones); sorted by name."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        groups.setdefault(s, []).append(i)
    if len(groups) < 2:
        return {}
    return {s: groups[s] for s in sorted(groups) if len(groups[s]) >= min_pairs}


def layer_metrics(model, tokenizer, ko: list[str], en: list[str], args: Arguments, device, label: str,
                  sources: list[str] | None = None, pooled: dict | None = None,
                  counts: np.ndarray | None = None) -> tuple[list, dict]:
    """``alignment_metrics`` of the Korean and English vectors at every layer 0..N, over all the pairs and
    per source (``source_groups`` of ``sources`` with --min_source_pairs); the texts are the keys, so
    repeated sentences are neither random pairs nor retrieval misses. ``pooled``: pooling, BOS, max length and
    precision (default: the flags). With ``counts`` (resampled pair counts, ``common.stats.resample_counts``), each
    layer's overall metrics get ``<metric>_ci`` (``with_intervals``). Returns (layers, {source: layers})."""
    pooled = pooled or flags_pooling(args)
    ko_vecs = encode_layers(model, tokenizer, ko, pooled, args.rep_batch_size, device, label)
    en_vecs = encode_layers(model, tokenizer, en, pooled, args.rep_batch_size, device, label)

    def per_layer(rows: list[int] | None) -> list[dict]:
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])
        ko_keys = ko if rows is None else [ko[i] for i in rows]
        en_keys = en if rows is None else [en[i] for i in rows]
        return [{"layer": layer, **all_metrics(pick(ko_vecs[layer]), pick(en_vecs[layer]), ko_keys, en_keys)}
                for layer in range(len(ko_vecs))]

    groups = source_groups(sources, args.min_source_pairs) if sources is not None else {}
    layers = per_layer(None)
    if counts is not None and len(counts):
        for m in layers:
            m.update(with_intervals(ko_vecs[m["layer"]], en_vecs[m["layer"]], ko, en, counts, args.ci_level))
    return layers, {s: per_layer(rows) for s, rows in groups.items()}


def all_metrics(ko, en, ko_keys, en_keys) -> dict:
    """Every alignment measure of N pairs: ``alignment_metrics`` (cosines, gap, retrieval) and
    ``alignment_measures`` (linear and debiased CKA, the held-out language probe, strict two-way retrieval)."""
    return {**alignment_metrics(ko, en, ko_keys, en_keys), **alignment_measures(ko, en, ko_keys, en_keys)}


def with_intervals(ko, en, ko_keys, en_keys, counts: np.ndarray, level: float) -> dict:
    """``<metric>_ci`` where a resample of the pairs (``counts``) defines one: every metric of
    ``alignment_metrics`` (``common.stats.alignment_intervals``), strict retrieval (the mean of each pair's
    two-way hit) and the language probe (the mean of each pair's held-out hits: the uncertainty of the test
    pairs, the fitted class means held fixed). The CKAs get none: they are not means over pairs, and a
    resample with replacement repeats rows, which a kernel statistic reads as signal."""
    out = {f"{k}_ci": v for k, v in alignment_intervals(ko, en, ko_keys, en_keys, counts=counts, level=level).items()}
    out["retrieval_strict_ci"] = weighted_mean_ci(retrieval_hits(ko, en, ko_keys, en_keys)["strict"].numpy(),
                                                  counts, level)
    out["language_probe_ci"] = weighted_mean_ci(language_probe_hits(ko, en).numpy(), counts, level)
    return out


@torch.no_grad()
def pooled_vectors(model, tokenizer, spec: dict, ko_texts: list[str], en_texts: list[str], device, label: str,
                   english: tuple | None = None) -> dict:
    """The sentence vectors exactly as train_contrastive.py's validation computes them.

    Each side is tokenized alone (truncated to ``max_seq_length``), batched in order by ``batch_size`` and
    padded to the longest of the batch as the trainer's collator does (the tokenizer's own padding side; to a
    multiple of 8 on CUDA), pooled with ``common.pooling.pooled_layers`` at ``layers`` (mean or last, BOS
    excluded unless ``include_bos``), mixed by a ``LayerMixture`` holding the trained weights (per-layer L2
    normalisation by ``normalize``), under the run's autocast. The English side goes through ``english``
    ((model, tokenizer): the frozen starting model or --english_model) or the model itself. Returns {"ko", "en":
    (N, D) float32, "ko_keys", "en_keys": the token ids as keys (``common.data.text_key``: duplicate texts are
    recognised by them, as in training), "layer_share": each mixed layer's effective share, or None}."""
    en_model, en_tokenizer = english if english is not None else (model, tokenizer)
    layers = spec["layers"] or [num_layers_of_model(model) // 2]
    mixture = None
    if spec["weights"] is not None:
        mixture = LayerMixture(layers, temperature=1.0, normalize=spec["normalize"]).to(device)
        mixture.logits.copy_(torch.tensor(spec["weights"], dtype=torch.float32).log())  # softmax(log w) = w
    pad8 = 8 if device.type == "cuda" else None
    ids = {"ko": tokenizer(ko_texts, truncation=True, max_length=spec["max_seq_length"])["input_ids"],
           "en": en_tokenizer(en_texts, truncation=True, max_length=spec["max_seq_length"])["input_ids"]}
    sides = {"ko": (model, tokenizer), "en": (en_model, en_tokenizer)}
    vectors, shares = {"ko": [], "en": []}, []
    for start in range(0, len(ids["ko"]), spec["batch_size"]):
        per_layer = {}
        for side, (encoder, tok) in sides.items():
            batch = tok.pad({"input_ids": ids[side][start : start + spec["batch_size"]]}, padding="longest",
                            pad_to_multiple_of=pad8, return_tensors="pt").to(device)
            try:
                with autocast(device, spec["bf16"]):
                    per_layer[side] = pooled_layers(encoder, batch["input_ids"], batch["attention_mask"], layers=layers,
                                                    pooling=spec["pooling"], exclude_bos=not spec["include_bos"],
                                                    bos_token_id=tok.bos_token_id)
                    vectors[side].append((mixture(per_layer[side]) if mixture is not None else per_layer[side][0])
                                         .float())
            except TypeError as e:  # common.pooling cannot find this model's decoder layers
                raise EvalError(f"{label}: no representation metrics for this model ({e})") from e
        if mixture is not None:
            both = torch.cat([per_layer["ko"], per_layer["en"]], dim=1)
            shares.append(mixture.shares(both) * both.shape[1])
    ko, en = torch.cat(vectors["ko"]), torch.cat(vectors["en"])
    share = None
    if mixture is not None:
        total = torch.stack(shares).sum(dim=0) / (2 * len(ko))
        share = {str(layer): s.item() for layer, s in zip(layers, total)}
    return {"ko": ko, "en": en, "ko_keys": [text_key(x) for x in ids["ko"]],
            "en_keys": [text_key(x) for x in ids["en"]], "layer_share": share}


def pooled_representation(model, tokenizer, spec: dict, pairs: dict, device, label: str, min_source_pairs: int = 50,
                          english: tuple | None = None, counts: np.ndarray | None = None, level: float = 0.95) -> dict:
    """The metrics of the sentence vectors of ``pooled_vectors`` (as train_contrastive.py's validation computes
    them) on the parallel ``pairs``: ``all_metrics`` overall, ``by_source`` (sources with at least
    ``min_source_pairs`` pairs, when there are several) and, for a mixture, ``layer_share`` (each layer's
    effective share); with ``counts`` (resampled pair counts), ``<metric>_ci`` of the overall metrics."""
    v = pooled_vectors(model, tokenizer, spec, pairs["ko"], pairs["en"], device, label, english)
    ko, en, ko_keys, en_keys = v["ko"], v["en"], v["ko_keys"], v["en_keys"]
    result = all_metrics(ko, en, ko_keys, en_keys)
    if counts is not None and len(counts):
        result.update(with_intervals(ko, en, ko_keys, en_keys, counts, level))
    result["by_source"] = {
        source: all_metrics(ko[rows], en[rows], [ko_keys[i] for i in rows], [en_keys[i] for i in rows])
        for source, rows in source_groups(pairs["source"], min_source_pairs).items()}
    if v["layer_share"] is not None:
        result["layer_share"] = v["layer_share"]
    return result


def layer_pairs_summary(pairs: dict, seed: int) -> dict:
    """What the layer metrics were computed on: sample size, rows in the file, seed, sampled pairs per source."""
    by_source: dict[str, int] = {}
    for s in pairs["source"]:
        by_source[s] = by_source.get(s, 0) + 1
    return {"sampled": len(pairs["ko"]), "rows_in_file": pairs["rows_in_file"], "seed": seed,
            "by_source": dict(sorted(by_source.items()))}


def best_layer(layers: list[dict]) -> int:
    """The layer with the highest mean retrieval (ko->en, en->ko), ties broken by the larger gap."""
    return max(layers, key=lambda m: ((m["retrieval_ko_en"] + m["retrieval_en_ko"]) / 2, m["gap"]))["layer"]
