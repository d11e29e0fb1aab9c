"""Time of the per-layer alignment measures on the CPU: today's pass against the added measures, in one run.

At --pairs Korean/English pairs and --layers + 1 hidden-state layers (embeddings and each block) of width
--hidden, float32 as the evaluation pools them, it times

- today: ``alignment_metrics`` (cosines, centred cosines, one-way retrieval) at every layer;
- added, one function at a time: ``cka``, ``cka_debiased``, ``language_probe`` and ``retrieval_strict`` at every
  layer (the two CKAs each build their own Gram matrices);
- added, together: ``alignment_measures`` at every layer (one pair of Gram matrices for both CKAs);

and prints the ratios to today's pass. The vectors are synthetic but shaped like hidden states: a large mean
shared by all sentences, a language offset, and a low-rank sentence signal common to both languages plus
noise, different at each layer. The model's forward passes that produce the vectors (--pairs x 2 languages
x every layer) are not included: they are the same with or without the added measures.

    python -m bench.bench_alignment_measures                      # 1,000 pairs, 24 layers, hidden 2,048
    python -m bench.bench_alignment_measures --pairs 300 --layers 4 --hidden 256
"""

import argparse
import time

import torch

from common.metrics import alignment_measures, alignment_metrics, cka, cka_debiased, language_probe, retrieval_strict


def layer_vectors(pairs: int, hidden: int, layer: int, rank: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's (pairs, hidden) float32 Korean and English vectors (see the module docstring)."""
    g = torch.Generator().manual_seed(layer)
    latent = torch.randn(pairs, rank, generator=g)
    mix = torch.randn(rank, hidden, generator=g) / rank ** 0.5
    mean = 20 * torch.randn(hidden, generator=g)
    offset = torch.randn(hidden, generator=g)
    ko = mean + latent @ mix + 0.7 * torch.randn(pairs, hidden, generator=g)
    en = mean + offset + latent @ mix + 0.7 * torch.randn(pairs, hidden, generator=g)
    return ko, en


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=1000, help="sentence pairs per layer")
    p.add_argument("--layers", type=int, default=24, help="transformer blocks; the embeddings make one layer more")
    p.add_argument("--hidden", type=int, default=2048, help="width of the vectors")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    keys = [f"sentence {i}" for i in range(args.pairs)]  # the texts are the keys, as in the evaluation
    measures = {
        "today: alignment_metrics": lambda ko, en: alignment_metrics(ko, en, keys, keys),
        "cka": cka,
        "cka_debiased": cka_debiased,
        "language_probe": language_probe,
        "retrieval_strict": lambda ko, en: retrieval_strict(ko, en, keys, keys),
        "alignment_measures (all four)": lambda ko, en: alignment_measures(ko, en, keys, keys),
    }
    # Layer by layer, every measure in turn, so that a load from other processes on the machine falls on all
    # of them alike; wall time and this process's CPU time (all its threads) both summed over the layers.
    wall = dict.fromkeys(measures, 0.0)
    cpu = dict.fromkeys(measures, 0.0)
    for layer in range(args.layers + 1):
        ko, en = layer_vectors(args.pairs, args.hidden, layer)
        for name, measure in measures.items():
            w, c = time.perf_counter(), time.process_time()
            result = measure(ko, en)
            wall[name] += time.perf_counter() - w
            cpu[name] += time.process_time() - c

    print(f"{args.pairs} pairs, {args.layers + 1} layers of width {args.hidden}, float32 input, "
          f"{torch.get_num_threads()} torch threads; the model forward is not included")
    print(f"  {'':32s} {'wall s':>8s} {'ratio':>6s} {'cpu s':>8s} {'ratio':>6s}")
    added = ("cka", "cka_debiased", "language_probe", "retrieval_strict")
    wall["added, four functions one by one"] = sum(wall[n] for n in added)
    cpu["added, four functions one by one"] = sum(cpu[n] for n in added)
    today = "today: alignment_metrics"
    for name in wall:
        print(f"  {name:32s} {wall[name]:8.2f} {wall[name] / wall[today]:6.2f} "
              f"{cpu[name]:8.2f} {cpu[name] / cpu[today]:6.2f}")
    print("  last layer: " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
