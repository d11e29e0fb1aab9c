"""Gradient equivalence worker: run under 2 processes, compared against a plain 1-process reference.

Launched by tests/test_distributed.py as
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 -m tests.dist_worker OUT.json

For each variant, every rank builds the same tiny Llama, wraps it exactly as train_contrastive.py
does (ContrastiveModel, the script's DDP settings, step_losses), takes its half of one global
batch (padded to its own local length; packed into rows by the packed variants), and runs forward +
backward. Rank 0 then recomputes the loss on the whole global batch with a plain implementation written
here (full model forward, per-row mean pooling, InfoNCE as a double loop) and records the largest
gradient difference.
"""

import contextlib
import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator

import train_contrastive as tc
from common.data import text_key
from common.demo import tiny_llama
from common.pooling import LayerMixture

NUM_LAYERS, VOCAB, BOS, PAD = 4, 96, 1, 3
# Settings of each variant over these defaults; "mix_temperature" set means a layer mixture.
DEFAULTS = dict(layers=[2], pooling="mean", frozen=False, mix_temperature=None, mix_normalize=True, temperature=0.05,
                symmetric=True, cl_weight=1.0, lm_weight=0.0, dedup=False, two_gradients=False, chunk=0, joint=False,
                pack=0)
VARIANTS = {
    "top_layer_unused_head": dict(layers=[NUM_LAYERS]),
    "truncated_middle_layer": dict(layers=[2]),
    "layer_0": dict(layers=[0]),
    "last_token": dict(layers=[3], pooling="last"),
    "frozen_english": dict(frozen=True),
    "mixture": dict(layers=[1, 2, 3], mix_temperature=0.5),
    "mixture_unnormalised": dict(layers=[1, 2, 3], mix_temperature=0.5, mix_normalize=False),
    "frozen_english_mixture": dict(layers=[0, 2, 4], mix_temperature=0.5, frozen=True),
    "duplicates_masked": dict(dedup=True),
    "one_directional": dict(symmetric=False),
    "lm_loss": dict(lm_weight=0.5),
    # the contrastive and LM gradients backwarded apart and averaged by hand (grad conflict, PCGrad's path)
    "two_gradients_summed": dict(lm_weight=0.5, two_gradients=True),
    # gradient caching: chunks of 3 of each process's 4 pairs, with a mixture, the frozen English copy and the LM loss
    "chunked_gradient_cache": dict(layers=[1, 2, 3], mix_temperature=0.5, frozen=True, lm_weight=0.5, chunk=3),
    # packed sentences (rows of 16 tokens), against the reference's one sentence at a time: alone, with the
    # frozen copy and last-token pooling, and both sides together in chunks with a mixture and the LM loss
    "packed": dict(pack=16),
    "packed_frozen_last_token": dict(pack=16, frozen=True, layers=[3], pooling="last"),
    "packed_joint_chunked_mixture": dict(pack=16, joint=True, chunk=3, layers=[1, 2, 3], mix_temperature=0.5,
                                         lm_weight=0.5),
}


def global_batch(seed: int, n: int = 8):
    """n pairs of random sentences of different lengths: lists of ids, BOS first. Pair 5 (on process 1)
    repeats pair 1's Korean sentence and pair 6 repeats pair 2's English one (process 0): duplicates across
    processes, which the masked loss must recognise through the gathered keys."""
    g = torch.Generator().manual_seed(seed)

    def sentence():
        length = int(torch.randint(3, 11, (1,), generator=g))
        return [BOS] + torch.randint(4, VOCAB, (length,), generator=g).tolist()

    pairs = [(sentence(), sentence()) for _ in range(n)]
    pairs[5] = (pairs[1][0], pairs[5][1])
    pairs[6] = (pairs[6][0], pairs[2][1])
    return pairs


def pad(seqs):
    width = max(map(len, seqs))
    ids = torch.tensor([s + [PAD] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return ids, mask


def reference_vectors(lm, seqs, layers, pooling, weights, normalize=False):
    """Plain: one full forward per sentence, output of decoder layer L captured by a hook; with a mixture,
    each layer's vector L2-normalised first when ``normalize``."""
    captured = {}
    hooks = [lm.model.layers[i].register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i + 1, out))
             for i in range(NUM_LAYERS)]
    vectors = []
    for s in seqs:
        out = lm(torch.tensor([s]), output_hidden_states=True)
        per_layer = []
        for layer in layers:
            h = out.hidden_states[0][0] if layer == 0 else captured[layer][0]
            v = h[1:].mean(dim=0) if pooling == "mean" else h[-1]
            per_layer.append(v / v.norm() if normalize else v)
        vectors.append(sum(w * v for w, v in zip(weights, per_layer)))
    for h in hooks:
        h.remove()
    return vectors


def reference_info_nce(a, c, tau, symmetric, pairs=None):
    """Double loop; with ``pairs``, candidate j != i is left out when it shares a sentence with pair i."""
    def one_way(x, y):
        total = 0.0
        for i in range(len(x)):
            js = [j for j in range(len(y)) if j == i or pairs is None
                  or (pairs[j][0] != pairs[i][0] and pairs[j][1] != pairs[i][1])]
            logits = [torch.nn.functional.cosine_similarity(x[i], y[j], dim=0) / tau for j in js]
            total = total - (logits[js.index(i)] - torch.logsumexp(torch.stack(logits), dim=0))
        return total / len(x)
    return (one_way(a, c) + one_way(c, a)) / 2 if symmetric else one_way(a, c)


def main(out_path: str) -> None:
    results = {}
    for v, (name, overrides) in enumerate(VARIANTS.items()):
        s = {**DEFAULTS, **overrides}
        layers = s["layers"]
        accelerator = Accelerator(cpu=True, kwargs_handlers=[tc.ddp_kwargs(s["lm_weight"])])
        rank, world = accelerator.process_index, accelerator.num_processes
        lm = tiny_llama(VOCAB, hidden_size=32, num_layers=NUM_LAYERS, seed=v)
        lm.config.use_cache = False
        start = copy.deepcopy(lm)
        frozen = copy.deepcopy(lm).requires_grad_(False).eval() if s["frozen"] else None
        mixture = None
        if s["mix_temperature"] is not None:
            mixture = LayerMixture(layers, s["mix_temperature"], normalize=s["mix_normalize"])
        if mixture is not None:
            with torch.no_grad():
                mixture.logits.copy_(torch.linspace(-1, 1, len(layers)))
        model = accelerator.prepare(tc.ContrastiveModel(lm, layers=layers, pooling=s["pooling"], exclude_bos=True,
                                                        bos_token_id=BOS, mixture=mixture, joint=s["joint"],
                                                        pack_length=s["pack"]))

        pairs = global_batch(seed=100 + v)
        local = pairs[rank * len(pairs) // world : (rank + 1) * len(pairs) // world]
        ko_ids, ko_mask = pad([p[0] for p in local])
        en_ids, en_mask = pad([p[1] for p in local])
        batch = {"ko_input_ids": ko_ids, "ko_attention_mask": ko_mask,
                 "en_input_ids": en_ids, "en_attention_mask": en_mask}
        keys = torch.tensor([[text_key(p[0]), text_key(p[1])] for p in local]) if s["dedup"] else None
        lm_global = torch.randint(4, VOCAB, (4, 12), generator=torch.Generator().manual_seed(v))
        lm_local = lm_global[rank * 2 : (rank + 1) * 2] if s["lm_weight"] > 0 else None
        with accelerator.no_sync(model) if s["two_gradients"] else contextlib.nullcontext():
            if not s["chunk"]:
                ko, en, lm_loss, _ = model(**batch, english_encoder=frozen, lm_input_ids=lm_local)
                loss, cl_loss, _ = tc.step_losses(ko, en, lm_loss, temperature=s["temperature"],
                                                  symmetric=s["symmetric"], cl_weight=s["cl_weight"],
                                                  lm_weight=s["lm_weight"], pair_keys=keys)
        if s["chunk"]:
            loss, cl_loss, _, _ = tc.cached_backward(
                accelerator, model, batch, s["chunk"], english_encoder=frozen, lm_input_ids=lm_local,
                cl_weight=s["cl_weight"], lm_weight=s["lm_weight"], mix_entropy_weight=0.0,
                temperature=s["temperature"], symmetric=s["symmetric"], pair_keys=keys)
        elif s["two_gradients"]:
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            params = [p for p in model.parameters() if p.requires_grad]
            tc.combine_gradients(params, names, s["cl_weight"] * cl_loss, s["lm_weight"] * lm_loss, "sum", 2)
        else:
            accelerator.backward(loss)
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        loss /= world
        grads = {n: (p.grad.clone() if p.grad is not None else None)
                 for n, p in accelerator.unwrap_model(model).named_parameters()}

        if rank == 0:
            ref_mix = torch.nn.Parameter(torch.linspace(-1, 1, len(layers))) if mixture is not None else None
            weights = torch.softmax(ref_mix / s["mix_temperature"], 0) if ref_mix is not None else [1.0]
            normalize = ref_mix is not None and s["mix_normalize"]
            ko = reference_vectors(start, [p[0] for p in pairs], layers, s["pooling"], weights, normalize)
            en_model = start if frozen is None else copy.deepcopy(frozen)
            en = reference_vectors(en_model, [p[1] for p in pairs], layers, s["pooling"], weights, normalize)
            ref_loss = s["cl_weight"] * reference_info_nce(ko, en, s["temperature"], s["symmetric"],
                                                           pairs if s["dedup"] else None)
            if s["lm_weight"] > 0:
                # mean of the two processes' LM losses, each a mean over its own tokens
                halves = [lm_global[r * 2 : (r + 1) * 2] for r in range(2)]
                lm_losses = [start(input_ids=h, labels=h).loss for h in halves]
                ref_loss = ref_loss + s["lm_weight"] * sum(lm_losses) / 2
            ref_loss.backward()
            ref_grads = {f"lm.{n}": p.grad for n, p in start.named_parameters()}
            if ref_mix is not None:
                ref_grads["mixture.logits"] = ref_mix.grad
            worst, nonzero = 0.0, 0
            for n, g in grads.items():
                r = ref_grads[n]
                if r is None or r.abs().max() == 0:
                    assert g is None or g.abs().max() == 0, f"{name}: {n} has a gradient the reference lacks"
                    continue
                assert g is not None, f"{name}: {n} got no gradient"
                nonzero += 1
                worst = max(worst, ((g - r).abs().max() / r.abs().max()).item())
            results[name] = {"loss": loss.item(), "ref_loss": ref_loss.item(), "max_rel_grad_err": worst,
                             "params_with_grad": nonzero, "world_size": world}
        accelerator.wait_for_everyone()
    if dist.get_rank() == 0:
        Path(out_path).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
