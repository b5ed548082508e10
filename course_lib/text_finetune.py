"""Fine-tuning the text encoder: captions go through Sentence-BERT inside the training step.

Taught in notebook 09 ("beyond the baseline"). The baseline keeps Sentence-BERT frozen and trains only a
Linear layer on its cached caption vectors (notebooks 04 and 05). Here the top few transformer layers
learn too:

    tokenise(text_model, captions)      once a split: (N, 2, L) token ids and attention mask, one row a caption
    CaptionEncoder(text_model, n)       tokens (B, 2, L) -> (B, d) unit vectors, as SentenceTransformer.encode
                                        computes them; only the top n transformer layers are trained
    trainable_parameters(encoder)       those layers' parameters, for an optimizer group with its own learning rate

The token rows take the place of the cached caption vectors in a training batch. Built, a CaptionEncoder
gives the same vectors as the cache (``course_lib.text.encode_captions``), so training starts where the
baseline starts.

Frozen means frozen: the embeddings, the lower layers, pooling and everything after stay in eval mode
(no dropout) even while the module trains; only the top n layers follow ``train()``/``eval()``. None of
the frozen parameters requires a gradient, so autograd records nothing below the first trained layer:
the frozen part costs no activation memory, as if it ran under ``torch.no_grad``.

A CaptionEncoder's ``state_dict`` holds only the trained layers (a few MB instead of the whole model). The
frozen weights are the text model's own: a fresh CaptionEncoder built from the same text model loads it
back into the same encoder. A run's identity names the text model, not its files: keep its folder unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from course_lib._text_models import LOADED_FROM, has_normalize_module

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["tokenise", "CaptionEncoder", "trainable_parameters", "transformer_layers"]


def tokenise(text_model: SentenceTransformer, captions: list[str]) -> torch.Tensor:
    """(N, 2, L) int64: each caption's input_ids (row 0) and attention_mask (row 1), padded to the longest caption.

    Taught in notebook 09, section 3. Captions longer than the model's max_seq_length are cut there, as encode() cuts them.
    """
    _check_no_prompt(text_model)
    if not captions:
        return torch.zeros((0, 2, 0), dtype=torch.int64)
    preprocess = getattr(text_model, "preprocess", None) or text_model.tokenize  # sentence-transformers < 6: tokenize
    features = preprocess([str(caption) for caption in captions])
    return torch.stack([features["input_ids"], features["attention_mask"]], dim=1).to(torch.int64)


class CaptionEncoder(nn.Module):
    """Sentence-BERT with its top ``unfrozen_layers`` transformer layers trainable: tokens (B, 2, L) -> (B, d) unit vectors.

    Taught in notebook 09, section 3. It trains ``text_model`` in place: give it a model of its own (``load_text_model``).
    """

    def __init__(self, text_model: SentenceTransformer, unfrozen_layers: int):
        super().__init__()
        _check_no_prompt(text_model)
        layers = transformer_layers(text_model)
        _check_unfrozen_layers(unfrozen_layers, len(layers), text_model)
        self.text_model = text_model
        self.trained_layers = tuple(layers[len(layers) - unfrozen_layers :])  # a tuple: not registered twice
        self.normalized_by_model = has_normalize_module(text_model)
        self.text_model.requires_grad_(False)
        for layer in self.trained_layers:
            layer.requires_grad_(True)
        self._frozen_keys = _frozen_keys(self)
        self.register_state_dict_post_hook(_drop_frozen_weights)
        self.register_load_state_dict_pre_hook(_fill_frozen_weights)
        self.train(self.training)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 2, L) tokens -> (B, d) unit sentence vectors."""
        used = tokens[:, 1].bool().any(dim=0)  # drop the padding columns no caption of this batch needs
        features = self.text_model({"input_ids": tokens[:, 0, used], "attention_mask": tokens[:, 1, used]})
        vectors = features["sentence_embedding"]
        return vectors if self.normalized_by_model else F.normalize(vectors, p=2, dim=-1)  # unit, like the cached vectors

    def train(self, mode: bool = True) -> CaptionEncoder:
        """Set the trained layers' mode; the frozen rest stays in eval mode (no dropout)."""
        super().train(mode)
        self.text_model.eval()
        for layer in self.trained_layers:
            layer.train(mode)
        return self


def trainable_parameters(encoder: CaptionEncoder) -> list[nn.Parameter]:
    """The parameters of the encoder's trained layers (for their own optimizer group and learning rate).

    Taught in notebook 09, section 3.
    """
    return [parameter for layer in encoder.trained_layers for parameter in layer.parameters()]


def transformer_layers(text_model: SentenceTransformer) -> nn.ModuleList:
    """The text model's stack of transformer layers, bottom first: the list of its ``num_hidden_layers`` layer modules.

    BERT's ``encoder.layer``, DistilBERT's ``transformer.layer`` and the like, found without naming the architecture.
    """
    auto_model = getattr(text_model[0], "auto_model", None) if len(text_model) else None
    count = getattr(getattr(auto_model, "config", None), "num_hidden_layers", None)
    if auto_model is not None and isinstance(count, int):
        for module in auto_model.modules():
            if isinstance(module, nn.ModuleList) and len(module) == count and len({type(layer) for layer in module}) == 1:
                return module
    raise ValueError(
        f"Cannot find the transformer layers of {_describe(text_model)}: fine-tuning needs a Hugging Face transformer "
        "whose num_hidden_layers layers are a list of modules (BERT, RoBERTa, MPNet, DistilBERT and the like). "
        "Use such a text_model, or keep the text encoder frozen (the baseline)."
    )


# --- safeguards and checkpoint plumbing ---------------------------------------------------------


def _check_unfrozen_layers(unfrozen_layers: int, count: int, text_model: SentenceTransformer) -> None:
    if isinstance(unfrozen_layers, bool) or not isinstance(unfrozen_layers, int) or not 0 <= unfrozen_layers <= count:
        raise ValueError(
            f"unfrozen_layers={unfrozen_layers!r} is not possible: {_describe(text_model)} has {count} transformer layers. "
            f"Choose a whole number from 0 (text encoder frozen) to {count} (all layers trained)."
        )


def _check_no_prompt(text_model: SentenceTransformer) -> None:
    """Refuse a model whose encode() prepends a default prompt: the tokens here would lack it."""
    name = getattr(text_model, "default_prompt_name", None)
    if name:
        raise ValueError(
            f"{_describe(text_model)} prepends its prompt {name!r} in encode(); CaptionEncoder does not. "
            "Set text_model.default_prompt_name = None before caching and fine-tuning, so both see the same captions."
        )


def _describe(text_model: SentenceTransformer) -> str:
    folder = getattr(text_model, LOADED_FROM, None)
    auto_model = getattr(text_model[0], "auto_model", None) if len(text_model) else None
    architecture = type(auto_model).__name__ if auto_model is not None else type(text_model[0]).__name__
    return f"the text model {folder} ({architecture})" if folder else f"the text model ({architecture})"


def _frozen_keys(encoder: CaptionEncoder) -> frozenset[str]:
    """The state_dict keys outside the trained layers (computed before the hook that drops them is registered)."""
    trained = {f"{name}." for name, module in encoder.named_modules() if any(module is layer for layer in encoder.trained_layers)}
    return frozenset(key for key in encoder.state_dict() if not key.startswith(tuple(trained)))


def _drop_frozen_weights(module: CaptionEncoder, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict hook: keep only the trained layers; the frozen weights are the text model's own files."""
    for key in module._frozen_keys:
        state_dict.pop(prefix + key, None)


def _fill_frozen_weights(module: CaptionEncoder, state_dict: dict, prefix: str, *_: object) -> None:
    """load_state_dict hook: frozen weights absent from the state_dict are kept as they are (the text model's)."""
    current = {**dict(module.named_parameters(remove_duplicate=False)), **dict(module.named_buffers(remove_duplicate=False))}
    for key in module._frozen_keys:
        if key in current:
            state_dict.setdefault(prefix + key, current[key].detach())
