"""Gradient equivalence worker: run under 2 processes, compared against a plain 1-process reference.

Launched by tests/test_distributed.py as
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 tests/dist_worker.py OUT.json

For each variant, every rank builds the same tiny Llama, wraps it exactly as train_contrastive.py
does (ContrastiveModel, the script's DDP settings, training_losses), takes its half of one global
batch (padded to its own local length), and runs forward + backward. Rank 0 then recomputes the
loss on the whole global batch with a plain implementation written here (full model forward,
per-row mean pooling, InfoNCE as a double loop) and records the largest gradient difference.
"""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_contrastive as tc  # noqa: E402
from common.demo import tiny_llama  # noqa: E402

NUM_LAYERS, VOCAB, BOS, PAD = 4, 96, 1, 3
VARIANTS = {
    "top_layer_unused_head": dict(pool_layer=NUM_LAYERS),
    "truncated_middle_layer": dict(pool_layer=2),
    "layer_0": dict(pool_layer=0),
    "last_token": dict(pool_layer=3, pooling="last"),
    "frozen_english": dict(pool_layer=2, english_encoder="frozen"),
    "mixture": dict(mix_layers="1-3", mix_temperature=0.5),
    "one_directional": dict(pool_layer=2, symmetric=False),
    "lm_loss": dict(pool_layer=2, lm_weight=0.5, lm_train_file=__file__),
}


def global_batch(seed: int, n: int = 8):
    """n pairs of random sentences of different lengths: lists of ids, BOS first."""
    g = torch.Generator().manual_seed(seed)
    def sentence():
        length = int(torch.randint(3, 11, (1,), generator=g))
        return [BOS] + torch.randint(4, VOCAB, (length,), generator=g).tolist()
    return [(sentence(), sentence()) for _ in range(n)]


def pad(seqs):
    width = max(map(len, seqs))
    ids = torch.tensor([s + [PAD] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return ids, mask


def reference_vectors(lm, seqs, layers, pooling, weights):
    """Plain: one full forward per sentence, output of decoder layer L captured by a hook."""
    captured = {}
    hooks = [lm.model.layers[i].register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i + 1, out))
             for i in range(NUM_LAYERS)]
    vectors = []
    for s in seqs:
        out = lm(torch.tensor([s]), output_hidden_states=True)
        per_layer = []
        for layer in layers:
            h = out.hidden_states[0][0] if layer == 0 else captured[layer][0]
            per_layer.append(h[1:].mean(dim=0) if pooling == "mean" else h[-1])
        vectors.append(sum(w * v for w, v in zip(weights, per_layer)))
    for h in hooks:
        h.remove()
    return vectors


def reference_info_nce(a, c, tau, symmetric):
    def one_way(x, y):
        total = 0.0
        for i in range(len(x)):
            logits = [torch.nn.functional.cosine_similarity(x[i], y[j], dim=0) / tau for j in range(len(y))]
            total = total - (logits[i] - torch.logsumexp(torch.stack(logits), dim=0))
        return total / len(x)
    return (one_way(a, c) + one_way(c, a)) / 2 if symmetric else one_way(a, c)


def main(out_path: str) -> None:
    results = {}
    for v, (name, overrides) in enumerate(VARIANTS.items()):
        args = tc.Arguments(**overrides)
        layers = tc.check_args(args, NUM_LAYERS)
        accelerator = Accelerator(cpu=True, kwargs_handlers=[tc.ddp_kwargs(args)])
        rank, world = accelerator.process_index, accelerator.num_processes
        lm = tiny_llama(VOCAB, hidden_size=32, num_layers=NUM_LAYERS, seed=v)
        lm.config.use_cache = False
        start = copy.deepcopy(lm)
        frozen = copy.deepcopy(lm).requires_grad_(False).eval() if args.english_encoder == "frozen" else None
        mixture = tc.LayerMixture(layers, args.mix_temperature) if args.mix_layers else None
        if mixture is not None:
            with torch.no_grad():
                mixture.logits.copy_(torch.linspace(-1, 1, len(layers)))
        model = accelerator.prepare(tc.ContrastiveModel(lm, layers, args, BOS, mixture))

        pairs = global_batch(seed=100 + v)
        local = pairs[rank * len(pairs) // world : (rank + 1) * len(pairs) // world]
        ko_ids, ko_mask = pad([p[0] for p in local])
        en_ids, en_mask = pad([p[1] for p in local])
        batch = {"ko_input_ids": ko_ids, "ko_attention_mask": ko_mask, "en_input_ids": en_ids, "en_attention_mask": en_mask}
        lm_global = torch.randint(4, VOCAB, (4, 12), generator=torch.Generator().manual_seed(v))
        lm_local = lm_global[rank * 2 : (rank + 1) * 2] if args.lm_weight > 0 else None
        loss, cl_loss, _ = tc.training_losses(model, frozen, batch, lm_local, args)
        accelerator.backward(loss)
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        loss /= world
        grads = {n: (p.grad.clone() if p.grad is not None else None) for n, p in accelerator.unwrap_model(model).named_parameters()}

        if rank == 0:
            ref_mix = torch.nn.Parameter(torch.linspace(-1, 1, len(layers))) if mixture is not None else None
            weights = torch.softmax(ref_mix / args.mix_temperature, 0) if ref_mix is not None else [1.0]
            ko = reference_vectors(start, [p[0] for p in pairs], layers, args.pooling, weights)
            en_model = start if frozen is None else copy.deepcopy(frozen)
            en = reference_vectors(en_model, [p[1] for p in pairs], layers, args.pooling, weights)
            ref_loss = args.cl_weight * reference_info_nce(ko, en, args.temperature, args.symmetric)
            if args.lm_weight > 0:
                # mean of the two processes' LM losses, each a mean over its own tokens
                lm_losses = [start(input_ids=lm_global[r * 2 : (r + 1) * 2], labels=lm_global[r * 2 : (r + 1) * 2]).loss for r in range(2)]
                ref_loss = ref_loss + args.lm_weight * sum(lm_losses) / 2
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
            results[name] = {"loss": loss.item(), "ref_loss": ref_loss.item(), "max_rel_grad_err": worst, "params_with_grad": nonzero,
                             "world_size": world}
        accelerator.wait_for_everyone()
    if dist.get_rank() == 0:
        Path(out_path).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
