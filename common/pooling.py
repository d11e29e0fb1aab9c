"""Sentence vectors from the hidden states of a decoder-only model.

Layer numbering, used everywhere in koen-align: layer 0 is the embedding output, layer L (1..N) the
output of decoder layer L. This equals Hugging Face's ``hidden_states[L]`` for L < N. For L = N it
is the output of the last decoder layer BEFORE the final norm, whereas Hugging Face's
``hidden_states[N]`` is after it (the input of the LM head). ``layer_states`` gives these for any
causal LM; ``decoder_hidden_states`` is its truncated form for the Llama family, which training uses.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.masking_utils import create_causal_mask


def pooling_mask(input_ids: Tensor, attention_mask: Tensor, bos_token_id: int | None,
                 exclude_bos: bool = True) -> Tensor:
    """The tokens a sentence vector averages over: (B, T) 0/1, padding excluded and, by default, BOS.

    BOS carries no meaning of the sentence and, being the attention sink of a causal LM, has a large
    hidden state that would dominate the mean. It is found by id, so left or right padding both work.
    """
    mask = attention_mask.bool()
    if exclude_bos and bos_token_id is not None:
        mask = mask & (input_ids != bos_token_id)
    return mask.to(attention_mask.dtype)


def pool(hidden: Tensor, mask: Tensor, method: str = "mean") -> Tensor:
    """Pool ``hidden`` (B, T, D) over the tokens where ``mask`` (B, T) is 1 into (B, D).

    - ``mean``: sum_t mask_t * h_t / sum_t mask_t (a row with no token gives zeros).
    - ``last``: h at the last position where mask is 1, i.e. the last real token under right
      padding; under causal attention it is the only position that has seen the whole sentence.
    """
    if method == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    if method == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {method!r}; expected 'mean' or 'last'")


class LayerMixture(nn.Module):
    """A trainable softmax-weighted mixture of the pooled vectors of several layers.

    With logits z_k for layers ``layers[k]`` and temperature t, weights w = softmax(z / t) sum to 1,
    and the mixed vector is sum_k w_k * v_k / |v_k| for per-layer pooled vectors v_k (B, D): each layer's
    vector is L2-normalised first, so w_k is layer k's share of the mixture (its importance). The
    residual stream's norm grows with depth; without the normalisation (``normalize=False``, the
    research's original mixture) layer k contributes w_k * |v_k|, and near-uniform weights can hide a
    mixture dominated by the deepest layers (``shares`` gives the effective contribution either way).
    The logits start at 0 (uniform weights). A temperature below 1 sharpens the softmax, so the same
    logit change separates the weights more; give the logits their own learning rate as well, since at
    a model's learning rate (1e-5) they barely move.
    """

    def __init__(self, layers: Sequence[int], temperature: float = 1.0, normalize: bool = True):
        super().__init__()
        if not layers:
            raise ValueError("LayerMixture needs at least one layer")
        if temperature <= 0:
            raise ValueError(f"mixture temperature must be > 0, got {temperature}")
        self.layers = list(layers)
        self.temperature = temperature
        self.normalize = normalize
        self.logits = nn.Parameter(torch.zeros(len(self.layers)))

    def weights(self) -> Tensor:
        return torch.softmax(self.logits / self.temperature, dim=0)

    def forward(self, pooled: Tensor, return_shares: bool = False):
        """``pooled`` (K, B, D), one slice per layer in ``self.layers`` order -> (B, D); with ``return_shares``
        also (K,) each layer's mean share of the mixed vectors, w_k |v_k| / sum_j w_j |v_j| averaged over
        the B sentences (equal to the weights when the layers are normalised). Called as the module (not
        through ``weights``), so DeepSpeed ZeRO-3 gathers the logits for it."""
        norms = pooled.detach().float().norm(dim=-1)  # (K, B)
        if self.normalize:
            pooled = F.normalize(pooled, dim=-1)
            norms = torch.ones_like(norms)
        w = self.weights()
        mixed = torch.einsum("k,kbd->bd", w.to(pooled.dtype), pooled)
        if not return_shares:
            return mixed
        part = w.detach().float()[:, None] * norms
        return mixed, (part / part.sum(dim=0, keepdim=True)).mean(dim=1)

    def shares(self, pooled: Tensor) -> Tensor:
        """(K,): each layer's mean share of the mixed vectors of ``pooled`` (K, B, D); see ``forward``."""
        with torch.no_grad():
            return self(pooled, return_shares=True)[1]


def decoder_hidden_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                          upto: int) -> list[Tensor]:
    """Hidden states of layers 0..``upto`` of a Llama-family causal LM, running only decoder layers 1..upto.

    The layers above ``upto`` would get no gradient from a loss on these states, so skipping them
    saves their forward and their activations. Uses the model's own modules (embeddings, rotary
    embedding, causal mask, decoder layers), so gradient checkpointing and DeepSpeed hooks apply as
    in the full forward. Returns ``upto + 1`` tensors of shape (B, T, D); see the module docstring
    for what layer N means.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    missing = [name for name in ("embed_tokens", "rotary_emb", "layers") if not hasattr(decoder, name)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not a Llama-family decoder (no {', '.join(missing)}); "
            "the truncated forward supports Llama, Mistral, Qwen2 and the like"
        )
    num_layers = len(decoder.layers)
    if not 0 <= upto <= num_layers:
        raise ValueError(f"layer {upto} is outside 0..{num_layers}")
    hidden = decoder.embed_tokens(input_ids)
    states = [hidden]
    if upto == 0:
        return states
    position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    causal_mask = create_causal_mask(
        config=decoder.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None,
        position_ids=position_ids,
    )
    position_embeddings = decoder.rotary_emb(hidden, position_ids=position_ids)
    for layer in decoder.layers[:upto]:
        hidden = layer(hidden, attention_mask=causal_mask, position_embeddings=position_embeddings,
                       position_ids=position_ids)
        states.append(hidden)
    return states


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder layers: the first one whose length is the number of hidden layers."""
    n = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    for _, module in model.base_model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise TypeError(f"{type(model).__name__}: cannot find its {n} decoder layers")


def is_llama_family(model: nn.Module) -> bool:
    """True when ``decoder_hidden_states`` (the truncated forward) can run ``model``."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    return all(hasattr(decoder, name) for name in ("embed_tokens", "rotary_emb", "layers"))


def layer_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, generic: bool = False) -> list[Tensor]:
    """Hidden states of layers 0..N of any Hugging Face causal LM, numbered as in this module's docstring.

    Llama-family models go through ``decoder_hidden_states``, the forward training pools from. Others
    (GPT-NeoX, GPT-2, ...) through the base model with ``output_hidden_states``, whose last entry
    (after the final norm) is replaced by the last decoder layer's own output, captured by a forward
    hook. ``generic=True`` takes the second way for any model (tests compare the two).
    """
    if not generic and is_llama_family(model):
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        return decoder_hidden_states(model, input_ids, attention_mask, upto=len(decoder.layers))
    last = find_decoder_layers(model)[-1]
    captured = {}

    def keep(module, inputs, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    handle = last.register_forward_hook(keep)
    try:
        out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    finally:
        handle.remove()
    return list(out.hidden_states[:-1]) + [captured["h"]]


def pooled_layers(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, *, layers: Sequence[int],
                  pooling: str = "mean", exclude_bos: bool = True, bos_token_id: int | None = None) -> Tensor:
    """(K, B, D): the pooled vector of every sentence at each of ``layers`` (K of them).

    A Llama-family model runs only as deep as the deepest layer asked for (``decoder_hidden_states``);
    other families run whole (``layer_states``). ``pooling``, ``exclude_bos`` and ``bos_token_id`` are
    those of ``pool`` and ``pooling_mask``.
    """
    if is_llama_family(model):
        states = decoder_hidden_states(model, input_ids, attention_mask, upto=max(layers))
    else:
        states = layer_states(model, input_ids, attention_mask)
    mask = pooling_mask(input_ids, attention_mask, bos_token_id, exclude_bos=exclude_bos)
    return torch.stack([pool(states[layer], mask, pooling) for layer in layers])
