import pytest
import torch

from common.demo import tiny_llama
from common.pooling import (
    LayerMixture,
    decoder_hidden_states,
    pack_rows,
    pack_sentences,
    pool,
    pooled_layers,
    pooling_mask,
)

BOS, PAD = 1, 3


def batch():
    # right-padded, BOS first, different lengths
    ids = torch.tensor([[BOS, 7, 8, 9, 10], [BOS, 11, 12, PAD, PAD], [BOS, 13, PAD, PAD, PAD]])
    mask = (ids != PAD).long()
    return ids, mask


def test_mean_pool_excludes_pad_and_bos():
    ids, mask = batch()
    hidden = torch.randn(3, 5, 4)
    pooled = pool(hidden, pooling_mask(ids, mask, BOS), "mean")
    torch.testing.assert_close(pooled[0], hidden[0, 1:5].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1, 1:3].mean(0))
    torch.testing.assert_close(pooled[2], hidden[2, 1])
    with_bos = pool(hidden, pooling_mask(ids, mask, BOS, exclude_bos=False), "mean")
    torch.testing.assert_close(with_bos[1], hidden[1, 0:3].mean(0))


def test_last_token_pool_takes_last_real_token_under_either_padding():
    ids, mask = batch()
    hidden = torch.randn(3, 5, 4)
    pooled = pool(hidden, mask, "last")
    torch.testing.assert_close(pooled, torch.stack([hidden[0, 4], hidden[1, 2], hidden[2, 1]]))
    left_mask = mask.flip(1)
    torch.testing.assert_close(pool(hidden, left_mask, "last"), hidden[:, 4])


def test_unknown_pooling_is_an_error():
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(torch.randn(1, 2, 3), torch.ones(1, 2), "max")


@pytest.mark.parametrize("upto", [0, 1, 2, 3])
def test_truncated_forward_equals_full_model_hidden_states(upto):
    model = tiny_llama(64, hidden_size=32, num_layers=4).eval()
    ids, mask = batch()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        states = decoder_hidden_states(model, ids, mask, upto)
    assert len(states) == upto + 1
    for layer in range(upto + 1):
        real = mask.bool()  # padded positions are never pooled; compare the real ones
        torch.testing.assert_close(states[layer][real], full[layer][real], rtol=1e-5, atol=1e-5)


def test_layer_n_is_before_the_final_norm():
    model = tiny_llama(64, hidden_size=32, num_layers=4).eval()
    ids, mask = batch()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        top = decoder_hidden_states(model, ids, mask, 4)[4]
        real = mask.bool()
        torch.testing.assert_close(model.model.norm(top)[real], full[4][real], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(top[real], full[4][real])


def test_truncated_forward_rejects_layers_outside_the_model():
    model = tiny_llama(64, hidden_size=32, num_layers=2)
    ids, mask = batch()
    with pytest.raises(ValueError, match="outside 0..2"):
        decoder_hidden_states(model, ids, mask, 3)


def test_layer_mixture_weights_sum_to_one_and_train():
    mix = LayerMixture([1, 2, 3], temperature=0.5)
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
    w = mix.weights()
    assert w.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(w, torch.softmax(torch.tensor([0.3, -1.0, 2.0]) / 0.5, 0))
    pooled = torch.randn(3, 5, 8) * torch.tensor([1.0, 10.0, 100.0])[:, None, None]  # norms grow with depth
    out = mix(pooled)
    # each layer's vector is normalised first, so w_k is its share whatever its norm
    torch.testing.assert_close(out, sum(w[k] * pooled[k] / pooled[k].norm(dim=-1, keepdim=True) for k in range(3)))
    torch.testing.assert_close(mix.shares(pooled), w)
    out.pow(2).sum().backward()
    assert mix.logits.grad is not None and mix.logits.grad.abs().sum() > 0


def test_unnormalised_mixture_and_its_effective_shares():
    mix = LayerMixture([1, 2], normalize=False)  # uniform weights, as the research's mixture started
    pooled = torch.stack([torch.full((4, 2), 1.0), torch.full((4, 2), 3.0)])  # layer 2's vectors 3x longer
    torch.testing.assert_close(mix(pooled), 0.5 * pooled[0] + 0.5 * pooled[1])
    torch.testing.assert_close(mix.shares(pooled), torch.tensor([0.25, 0.75]))  # uniform weights, not shares


def test_one_layer_mixture_equals_single_layer_pooling():
    model = tiny_llama(64, hidden_size=32, num_layers=4).eval()
    ids, mask = batch()
    with torch.no_grad():
        states = decoder_hidden_states(model, ids, mask, 2)
        m = pooling_mask(ids, mask, BOS)
        single = pool(states[2], m)
        mixed = LayerMixture([2], normalize=False)(pool(states[2], m).unsqueeze(0))
        normalised = LayerMixture([2])(pool(states[2], m).unsqueeze(0))
    torch.testing.assert_close(mixed, single)
    torch.testing.assert_close(normalised, torch.nn.functional.normalize(single, dim=-1))


def test_truncated_forward_respects_the_padding_mask_under_left_padding():
    """Left padding (what an expanded Llama tokenizer may use): pads sit before the real tokens, so a
    forward that ignored the mask would let every real token attend to them. Each row must equal the
    same sentence run alone (rotary attention depends on relative positions only)."""
    model = tiny_llama(64, hidden_size=32, num_layers=3).eval()
    rows = [[BOS, 7, 8, 9, 10], [BOS, 11, 12], [BOS, 13]]
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = (ids != PAD).long()
    with torch.no_grad():
        states = decoder_hidden_states(model, ids, mask, 3)
        for i, r in enumerate(rows):
            alone = decoder_hidden_states(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long), 3)
            for layer in range(4):
                torch.testing.assert_close(states[layer][i, width - len(r):], alone[layer][0], rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_recomputes_the_truncated_layers():
    """With checkpointing on, the backward pass runs each decoder layer's forward again (what saves the
    memory); a switch that did nothing would run it once."""
    calls = []
    model = tiny_llama(64, hidden_size=32, num_layers=2).train()
    mlp = model.model.layers[0].mlp
    forward = mlp.forward

    def counted(*args, **kwargs):  # (module hooks do not run in the recompute; the forward itself does)
        calls.append(1)
        return forward(*args, **kwargs)

    mlp.forward = counted
    ids, mask = batch()

    def forward_backward():
        calls.clear()
        states = decoder_hidden_states(model, ids, mask, 2)
        pool(states[2], pooling_mask(ids, mask, BOS)).sum().backward()
        return len(calls)

    assert forward_backward() == 1
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert forward_backward() == 2


# Packed sentences: the batch's sentences end to end in rows, each attending to itself only.

def test_pack_rows_places_every_sentence_once_within_the_row_length():
    lengths = [5, 2, 5, 3, 3, 5, 3, 2]
    rows = pack_rows(lengths, 8)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 8 for row in rows)
    assert len(rows) == 4  # best-fit decreasing: 5+3, 5+3, 5+3, 2+2 (next-fit in order would take 5)
    with pytest.raises(ValueError, match="does not fit a row of 4"):
        pack_rows([5], 4)


def random_batch(seed: int, batch_size: int = 9, width: int = 13, vocab: int = 64):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (batch_size,), generator=g)
    lengths[0] = width
    mask = (torch.arange(width) < lengths[:, None]).long()
    ids = torch.randint(4, vocab, (batch_size, width), generator=g) * mask + PAD * (1 - mask)
    ids[:, 0] = BOS
    return ids, mask


def test_packed_rows_hold_each_sentence_with_positions_from_zero():
    ids, mask = random_batch(0)
    packed = pack_sentences(ids, mask, 16)
    assert packed.input_ids.shape[1] == 16 and packed.input_ids.numel() < ids.numel()
    flat_ids, flat_pos = packed.input_ids.reshape(-1), packed.position_ids.reshape(-1)
    for i, n in enumerate(mask.sum(1).tolist()):
        at = packed.index[i * ids.shape[1]:i * ids.shape[1] + n]
        assert flat_ids[at].tolist() == ids[i, :n].tolist()
        assert flat_pos[at].tolist() == list(range(n))
    # a row narrower than the longest sentence widens to it, rounded up to a multiple of 8
    assert pack_sentences(ids, mask, 4).input_ids.shape[1] == 16


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_packed_forward_gives_the_padded_vectors_and_gradients(attn, pooling):
    """The block-diagonal mask and the restarted positions make each packed sentence see what it sees
    alone: pooled vectors and parameter gradients equal those of the padded batch."""
    model = tiny_llama(64, hidden_size=32, num_layers=4)
    model.config._attn_implementation = attn
    ids, mask = random_batch(1)
    target = torch.randn(2, ids.shape[0], 32, generator=torch.Generator().manual_seed(2))
    results = []
    for packed in (None, pack_sentences(ids, mask, 16)):
        model.zero_grad()
        vectors = pooled_layers(model, ids, mask, layers=[1, 3], pooling=pooling, bos_token_id=BOS, packed=packed)
        (vectors * target).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((vectors.detach(), grads))
    (padded, padded_grads), (packed, packed_grads) = results
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)
    assert packed_grads.keys() == padded_grads.keys() and len(padded_grads) > 10
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packing_refuses_left_padding():
    ids, mask = random_batch(3)
    with pytest.raises(ValueError, match="right-padded"):
        pack_sentences(ids.flip(1), mask.flip(1), 16)
