"""Fine-tuning the text encoder: tokens once a split, the same vectors as encode(), only the top layers learning."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from course_lib.text import load_text_model
from course_lib.text_finetune import CaptionEncoder, tokenise, trainable_parameters, transformer_layers

CAPTIONS = [
    "A dog barks.",
    "Rain falls steadily on a metal roof while cars pass in the distance, then a door slams shut at the very end.",
    "A bell rings once in a quiet room.",
    " ".join(["birds chirp loudly"] * 120),  # longer than MiniLM's 256-token limit (row LONG)
    "A siren wails, rising and falling quickly, as a low-pitched engine hums the whole time outdoors.",
    "Someone knocks slowly and repeatedly.",
]
LONG = 3
LAYERS = 6  # all-MiniLM-L6-v2


def minilm():
    """A MiniLM of the test's own (a CaptionEncoder trains its text model in place)."""
    return load_text_model("all-MiniLM-L6-v2", device="cpu")


def layer_of(name: str) -> int | None:
    """The transformer layer a parameter name belongs to (None outside the layer stack)."""
    parts = name.split(".")
    return int(parts[parts.index("layer") + 1]) if "layer" in parts else None


def train_steps(encoder: CaptionEncoder, tokens: torch.Tensor, steps: int = 3) -> None:
    """A few Adam steps of a classification head on the encoder, the text layers in their own group."""
    tokens = tokens[[row for row in range(len(CAPTIONS)) if row != LONG]]  # short batches keep the test fast
    torch.manual_seed(0)
    head = nn.Linear(384, len(tokens))
    groups = [{"params": head.parameters()}]
    if trainable_parameters(encoder):
        groups.append({"params": trainable_parameters(encoder), "lr": 1e-3})
    optimizer = torch.optim.Adam(groups, lr=1e-2)
    encoder.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(head(encoder(tokens)), torch.arange(len(tokens)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoder.eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return tokenise(minilm(), CAPTIONS)


def test_tokenise_gives_ids_and_mask_padded_to_the_longest_caption_cut_at_max_seq_length(tokens):
    model = minilm()
    assert tokens.dtype == torch.int64 and tokens.shape == (len(CAPTIONS), 2, model.max_seq_length)
    lengths = tokens[:, 1].sum(dim=1)
    assert lengths[LONG] == model.max_seq_length and lengths[0] < lengths[2] < lengths[1]
    assert torch.all(tokens[0, 0, lengths[0] :] == model.tokenizer.pad_token_id)
    assert tokens[0, 0, 0] == model.tokenizer.cls_token_id
    assert tokenise(model, []).shape == (0, 2, 0)


@pytest.mark.parametrize("unfrozen_layers", [0, 2])
def test_a_new_encoder_gives_what_encode_gives_for_any_batch_of_the_split(tokens, unfrozen_layers):
    model = minilm()
    expected = model.encode(CAPTIONS, convert_to_tensor=True, normalize_embeddings=True)
    encoder = CaptionEncoder(model, unfrozen_layers).eval()
    with torch.no_grad():
        assert torch.allclose(encoder(tokens), expected, atol=1e-5)
        short = [0, 2, 5]  # a batch of short captions: trimmed to its own longest caption
        assert torch.allclose(encoder(tokens[short]), expected[short], atol=1e-5)
        assert torch.allclose(encoder(tokens[[4]]), expected[[4]], atol=1e-5)


def test_only_the_top_layers_require_grad_and_change_in_training(tokens):
    encoder = CaptionEncoder(minilm(), 2)
    before = {name: value.clone() for name, value in encoder.named_parameters()}
    assert {name for name, value in encoder.named_parameters() if value.requires_grad} == {
        name for name in before if layer_of(name) in (4, 5)
    }
    assert {id(value) for value in trainable_parameters(encoder)} == {
        id(value) for name, value in encoder.named_parameters() if value.requires_grad
    }
    train_steps(encoder, tokens)
    changed = {name for name, value in encoder.named_parameters() if not torch.equal(value, before[name])}
    assert changed and all(layer_of(name) in (4, 5) for name in changed)
    assert {layer_of(name) for name in changed} == {4, 5}


def test_with_no_unfrozen_layer_nothing_requires_grad_or_changes(tokens):
    encoder = CaptionEncoder(minilm(), 0)
    before = {name: value.clone() for name, value in encoder.named_parameters()}
    assert trainable_parameters(encoder) == [] and not any(value.requires_grad for value in encoder.parameters())
    assert not encoder(tokens).requires_grad
    train_steps(encoder, tokens)
    assert all(torch.equal(value, before[name]) for name, value in encoder.named_parameters())


def test_the_frozen_part_stays_in_eval_mode_and_builds_no_graph(tokens):
    encoder = CaptionEncoder(minilm(), 1).train()
    top = encoder.trained_layers[0]
    assert top is transformer_layers(encoder.text_model)[-1]
    assert top.training and all(module.training for module in top.modules())
    assert not any(module.training for module in encoder.text_model.modules() if not any(module is m for m in top.modules()))
    seen = {}
    top.register_forward_pre_hook(lambda module, args: seen.update(input_needs_grad=args[0].requires_grad))
    top.register_forward_hook(lambda module, args, output: seen.update(output_needs_grad=output[0].requires_grad))
    encoder(tokens[:2])
    assert seen == {"input_needs_grad": False, "output_needs_grad": True}  # autograd starts at the first trained layer
    assert not encoder.eval().trained_layers[0].training


@pytest.mark.parametrize("bad", [-1, LAYERS + 1, 1.5, True])
def test_impossible_unfrozen_layers_are_refused_naming_the_value_and_the_layer_count(bad):
    with pytest.raises(ValueError, match=rf"unfrozen_layers={bad!r}.*has {LAYERS} transformer layers"):
        CaptionEncoder(minilm(), bad)


def test_a_model_whose_layers_cannot_be_found_is_refused():
    model = minilm()
    model[0].auto_model.config.num_hidden_layers = LAYERS - 1  # no list of that many layers in the model
    with pytest.raises(ValueError, match="Cannot find the transformer layers.*BertModel"):
        CaptionEncoder(model, 1)


def test_a_model_with_a_default_prompt_is_refused():
    model = minilm()
    model.default_prompt_name = "query"
    with pytest.raises(ValueError, match="prompt 'query'"):
        tokenise(model, CAPTIONS)


def test_state_dict_holds_the_trained_layers_and_round_trips_inside_a_parent_module(tokens):
    encoder = CaptionEncoder(minilm(), 2)
    train_steps(encoder, tokens)
    parent = nn.ModuleDict({"captions": encoder, "fc": nn.Linear(384, 3)})
    state = parent.state_dict()
    assert {layer_of(key) for key in state if key.startswith("captions.")} == {4, 5}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh_encoder = CaptionEncoder(minilm(), 2).eval()
    with torch.no_grad():
        untrained = fresh_encoder(tokens)
        fresh = nn.ModuleDict({"captions": fresh_encoder, "fc": nn.Linear(384, 3)})
        fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
        assert torch.equal(fresh_encoder(tokens), encoder.eval()(tokens))
        assert not torch.allclose(untrained, fresh_encoder(tokens), atol=1e-4)  # the load restored trained weights
    assert set(state) == set(fresh.state_dict())
