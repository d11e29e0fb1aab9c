"""Sentence vectors from the hidden states of a decoder-only model.

Layer numbering, used everywhere in koen-align: layer 0 is the embedding output, layer L (1..N) the
output of decoder layer L. This equals Hugging Face's ``hidden_states[L]`` for L < N. For L = N it
is the output of the last decoder layer BEFORE the final norm, whereas Hugging Face's
``hidden_states[N]`` is after it (the input of the LM head). ``layer_states`` gives these for any
causal LM; ``decoder_hidden_states`` is its truncated form for the Llama family, which training uses.
"""

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

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


def decoder_hidden_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                          upto: int, position_ids: Tensor | None = None) -> list[Tensor]:
    """Hidden states of layers 0..``upto`` of a Llama-family causal LM, running only decoder layers 1..upto.

    The layers above ``upto`` would get no gradient from a loss on these states, so skipping them
    saves their forward and their activations. Uses the model's own modules (embeddings, rotary
    embedding, causal mask, decoder layers), so gradient checkpointing and DeepSpeed hooks apply as
    in the full forward. Returns ``upto + 1`` tensors of shape (B, T, D); see the module docstring
    for what layer N means. Packed rows (``PackedSentences``) come with ``attention_mask=None`` and
    their ``position_ids``, which restart at 0 for every sentence: transformers then builds the
    block-diagonal causal mask, so a sentence attends to itself only.
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
    if position_ids is None:
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


def pack_rows(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """Sentences into rows of at most ``row_length`` tokens: the sentence indices of each row, by best-fit
    decreasing (longest first, each into the row with the least room that still holds it, found by bisection
    in the rows sorted by room), which leaves little room unused. A sentence longer than a row is an error
    (``pack_sentences`` widens the rows first)."""
    rows: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, row), sorted
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > row_length:
            raise ValueError(f"a sentence of {lengths[i]} tokens does not fit a row of {row_length}")
        k = bisect.bisect_left(rooms, (lengths[i], -1))
        if k < len(rooms):
            room, r = rooms.pop(k)
        else:
            room, r = row_length, len(rows)
            rows.append([])
        rows[r].append(i)
        bisect.insort(rooms, (room - lengths[i], r))
    return rows


@dataclass
class PackedSentences:
    """A right-padded batch (B, T) repacked without padding: its sentences end to end in R rows of L tokens.

    ``input_ids`` (R, L); ``position_ids`` (R, L), restarting at 0 for every sentence, which is what makes
    transformers mask attention block-diagonally (``decoder_hidden_states``); ``index`` (B * T,) the packed
    position, in R * L, of every position of the padded batch (its padding points at position 0, a real
    token, and stays masked when pooling). The end of a row that no sentence fills is a sequence of its own
    that no sentence sees and nothing pools. Build with ``pack_sentences``.
    """

    input_ids: Tensor
    position_ids: Tensor
    index: Tensor
    batch_shape: tuple[int, int]

    def unpack(self, hidden: Tensor) -> Tensor:
        """(R, L, D) packed states -> (B, T, D), each sentence's states where the padded batch has them."""
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, self.index).view(*self.batch_shape, -1)


def pack_sentences(input_ids: Tensor, attention_mask: Tensor, row_length: int) -> PackedSentences:
    """Pack a right-padded batch into rows of ``row_length`` tokens (wider when a sentence is longer: the
    longest, rounded up to a multiple of 8). Reads the sentence lengths once (one host sync); builds the
    layout on the host, as ``pack_rows`` decides it, and the packed ids on the batch's device."""
    batch, width = input_ids.shape
    lengths = attention_mask.sum(dim=1)
    prefix = torch.arange(width, device=attention_mask.device) < lengths[:, None]
    counts = torch.cat([lengths, (prefix == attention_mask.bool()).all().long()[None]]).tolist()
    lengths_list, right_padded = counts[:-1], counts[-1]
    if not right_padded:
        raise ValueError("packing needs right-padded sentences (their real tokens first)")
    row_length = max(row_length, -(-max(lengths_list, default=1) // 8) * 8)
    rows = pack_rows(lengths_list, row_length)
    # the layout, on the host: sentences in packed order, each one's row and offset in it, then every real
    # token's place in the padded batch and in the packed rows
    n = torch.tensor(lengths_list, dtype=torch.long)
    order = torch.tensor([i for row in rows for i in row], dtype=torch.long)
    n_ord = n[order]
    row_ord = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor([len(row) for row in rows]))
    before = n_ord.cumsum(0) - n_ord  # tokens before each sentence in all rows' contents end to end
    start = before - before[torch.searchsorted(row_ord, row_ord)]  # minus those before its row's first one
    sentence = torch.repeat_interleave(torch.arange(len(order)), n_ord)  # of each token, in packed order
    t = torch.arange(int(n.sum())) - before.repeat_interleave(n_ord)
    padded_at = order[sentence] * width + t
    packed_at = row_ord[sentence] * row_length + start[sentence] + t
    # positions: from 0 in every sentence; a row's unused end counts from 0 too, a sequence of its own
    used = torch.zeros(len(rows), dtype=torch.long).index_add_(0, row_ord, n_ord)
    position_ids = torch.arange(row_length).repeat(len(rows), 1) - used[:, None]
    position_ids.view(-1)[packed_at] = t
    index = torch.zeros(batch * width, dtype=torch.long)
    index[padded_at] = packed_at
    device = input_ids.device
    packed_at, padded_at = packed_at.to(device), padded_at.to(device)
    ids = input_ids.new_zeros(len(rows) * row_length)
    ids[packed_at] = input_ids.reshape(-1)[padded_at]
    return PackedSentences(ids.view(len(rows), row_length), position_ids.to(device), index.to(device),
                           (batch, width))


def pooled_layers(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, *, layers: Sequence[int],
                  pooling: str = "mean", exclude_bos: bool = True, bos_token_id: int | None = None,
                  packed: PackedSentences | None = None) -> Tensor:
    """(K, B, D): the pooled vector of every sentence at each of ``layers`` (K of them).

    A Llama-family model runs only as deep as the deepest layer asked for (``decoder_hidden_states``);
    other families run whole (``layer_states``). ``pooling``, ``exclude_bos`` and ``bos_token_id`` are
    those of ``pool`` and ``pooling_mask``. With ``packed`` (``pack_sentences`` of this batch; Llama family
    only) the model runs on the packed rows, and the pooled layers' states are unpacked: the same vectors.
    """
    if packed is not None:
        if not is_llama_family(model):
            raise TypeError(f"{type(model).__name__}: packed sentences need a Llama-family decoder")
        states = decoder_hidden_states(model, packed.input_ids, None, upto=max(layers),
                                       position_ids=packed.position_ids)
        states = {layer: packed.unpack(states[layer]) for layer in set(layers)}
    elif is_llama_family(model):
        states = decoder_hidden_states(model, input_ids, attention_mask, upto=max(layers))
    else:
        states = layer_states(model, input_ids, attention_mask)
    mask = pooling_mask(input_ids, attention_mask, bos_token_id, exclude_bos=exclude_bos)
    return torch.stack([pool(states[layer], mask, pooling) for layer in layers])
