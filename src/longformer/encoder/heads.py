"""Task models on the encoder, named and shaped as transformers' (`lm_head`, `classifier.dense/out_proj`,
`qa_outputs`, ...) so checkpoints load both ways. Each holds `self.longformer`, a `LongformerModel`.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import compat
from .config import LongformerConfig
from .modeling import LongformerModel, init_weights
from .outputs import (MaskedLMOutput, MultipleChoiceOutput, QuestionAnsweringOutput, SequenceClassifierOutput,
                      TokenClassifierOutput)


def first_separator(input_ids: torch.Tensor, sep_token_id: int | None) -> torch.Tensor:
    """Index of the first separator token in each row, (B, T) -> (B,). Errors when a row has none."""
    if sep_token_id is None:
        raise ValueError("config.sep_token_id is None: pass global_attention_mask explicitly")
    is_sep = input_ids == sep_token_id
    if not torch.compiler.is_compiling() and not bool(is_sep.any(dim=-1).all()):
        rows = (~is_sep.any(dim=-1)).nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"rows {rows} of input_ids have no separator token (sep_token_id={sep_token_id}), so the question "
            "tokens (which get global attention) cannot be found; pass global_attention_mask explicitly"
        )
    return is_sep.int().argmax(dim=-1)


# The methods every task model shares, as plain functions each class lists in its body (no base class).
def _from_pretrained(cls, path: str | os.PathLike, **overrides: Any):
    """Load our saved dirs or transformers Longformer dirs (see hub.load_pretrained); overrides set config
    fields (e.g. num_labels=3 for a new head), plus impl= and dtype=."""
    from .hub import load_pretrained

    return load_pretrained(cls, path, **overrides)


def _save_pretrained(self, path: str | os.PathLike, **kwargs: Any) -> None:
    """Write config.json + model.safetensors that the transformers class of the same name loads
    (kwargs: transformers' state_dict= and is_main_process=, see hub.save_pretrained)."""
    from .hub import save_pretrained

    save_pretrained(self, path, **kwargs)


class LongformerLMHead(nn.Module):
    """dense -> gelu -> LayerNorm -> decoder (tied to the word embeddings) + bias."""

    def __init__(self, hidden_size: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(x))))  # (B, T, V)


# (second name, main name) of the tensors a tied masked-LM head shares.
TIED_NAMES = (("lm_head.decoder.weight", "longformer.embeddings.word_embeddings.weight"),
              ("lm_head.decoder.bias", "lm_head.bias"))


def _drop_tied_names(module, state_dict, prefix, local_metadata) -> None:
    for alias, _ in TIED_NAMES:
        state_dict.pop(prefix + alias, None)


def _restore_tied_names(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                        error_msgs) -> None:
    for alias, main in TIED_NAMES:
        if prefix + alias not in state_dict and prefix + main in state_dict:
            state_dict[prefix + alias] = state_dict[prefix + main]


@compat.transformers_interface
class LongformerForMaskedLM(nn.Module):
    from_pretrained = classmethod(_from_pretrained)
    save_pretrained = _save_pretrained

    def __init__(self, config: LongformerConfig, impl: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.longformer = LongformerModel(config, add_pooling_layer=False, impl=impl)
        self.lm_head = LongformerLMHead(config.hidden_size, config.vocab_size, config.layer_norm_eps)
        init_weights(self.lm_head, config.initializer_range)
        if config.tie_word_embeddings:  # one parameter under two names each, as in transformers
            self.lm_head.decoder.weight = self.longformer.embeddings.word_embeddings.weight
            self.lm_head.decoder.bias = self.lm_head.bias
            # The state dict lists each tied tensor once, under its main name (as save_pretrained writes
            # it): safetensors refuses shared tensors, and transformers.Trainer saves a plain state dict.
            # Loading puts the second names back, so strict load_state_dict(state_dict()) still works.
            self.register_state_dict_post_hook(_drop_tied_names)
            self.register_load_state_dict_pre_hook(_restore_tied_names)

    def forward(self, input_ids=None, attention_mask=None, global_attention_mask=None, token_type_ids=None,
                position_ids=None, labels=None, inputs_embeds=None, output_hidden_states=None,
                output_attentions=None, return_dict=None, head_mask=None) -> MaskedLMOutput:
        """labels: (B, T) token ids, -100 = not scored. Returns logits (B, T, V) and the mean loss."""
        output_hidden_states = compat.forward_flags(output_attentions, output_hidden_states, head_mask)
        out = self.longformer(input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
                              inputs_embeds, output_hidden_states)
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        return compat.finish(MaskedLMOutput(logits=logits, loss=loss, hidden_states=out.hidden_states), return_dict)


class LongformerClassificationHead(nn.Module):
    """First token -> dropout -> dense -> tanh -> dropout -> out_proj."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden[:, 0])
        return self.out_proj(self.dropout(torch.tanh(self.dense(x))))  # (B, num_labels)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None) -> torch.Tensor:
    """transformers' rule: 1 label -> regression (MSE); integer labels -> cross-entropy; else BCE."""
    num_labels = logits.shape[-1]
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        return F.mse_loss(logits.squeeze().float(), labels.squeeze().float()) if num_labels == 1 \
            else F.mse_loss(logits.float(), labels.float())
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.reshape(-1, num_labels).float(), labels.reshape(-1))
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    raise ValueError(f"unknown problem_type {problem_type!r}")


@compat.transformers_interface
class LongformerForSequenceClassification(nn.Module):
    """Global attention on the first token unless global_attention_mask is given."""

    from_pretrained = classmethod(_from_pretrained)
    save_pretrained = _save_pretrained

    def __init__(self, config: LongformerConfig, impl: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.longformer = LongformerModel(config, add_pooling_layer=False, impl=impl)
        self.classifier = LongformerClassificationHead(config.hidden_size, config.num_labels, config.hidden_dropout_prob)
        init_weights(self.classifier, config.initializer_range)

    def forward(self, input_ids=None, attention_mask=None, global_attention_mask=None, token_type_ids=None,
                position_ids=None, labels=None, inputs_embeds=None, output_hidden_states=None,
                output_attentions=None, return_dict=None, head_mask=None) -> SequenceClassifierOutput:
        """labels: (B,) class ids, or (B, num_labels) floats (multi-label / regression)."""
        if global_attention_mask is None:
            ref = input_ids if input_ids is not None else inputs_embeds[..., 0]
            global_attention_mask = torch.zeros(ref.shape, dtype=torch.bool, device=ref.device)
            global_attention_mask[:, 0] = True
        output_hidden_states = compat.forward_flags(output_attentions, output_hidden_states, head_mask)
        out = self.longformer(input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
                              inputs_embeds, output_hidden_states)
        logits = self.classifier(out.last_hidden_state)
        loss = classification_loss(logits, labels, self.config.problem_type) if labels is not None else None
        out = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return compat.finish(out, return_dict)


@compat.transformers_interface
class LongformerForQuestionAnswering(nn.Module):
    """Global attention on the question (tokens before the first separator) unless given."""

    from_pretrained = classmethod(_from_pretrained)
    save_pretrained = _save_pretrained

    def __init__(self, config: LongformerConfig, impl: str = "auto") -> None:
        super().__init__()
        if config.num_labels != 2:
            raise ValueError(f"question answering needs num_labels=2 (start and end logits), got {config.num_labels}")
        self.config = config
        self.longformer = LongformerModel(config, add_pooling_layer=False, impl=impl)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.qa_outputs, config.initializer_range)

    def forward(self, input_ids=None, attention_mask=None, global_attention_mask=None, token_type_ids=None,
                position_ids=None, start_positions=None, end_positions=None, inputs_embeds=None,
                output_hidden_states=None, output_attentions=None, return_dict=None, head_mask=None) -> QuestionAnsweringOutput:
        """start_positions / end_positions: (B,) token indices (out-of-range ones are ignored in the loss)."""
        if global_attention_mask is None:
            if input_ids is None:
                raise ValueError("with inputs_embeds, pass global_attention_mask (the question tokens)")
            sep = first_separator(input_ids, self.config.sep_token_id)
            global_attention_mask = torch.arange(input_ids.shape[1], device=input_ids.device)[None] < sep[:, None]
        output_hidden_states = compat.forward_flags(output_attentions, output_hidden_states, head_mask)
        out = self.longformer(input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
                              inputs_embeds, output_hidden_states)
        logits = self.qa_outputs(out.last_hidden_state)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]
            s = start_positions.reshape(-1).clamp(0, ignored)
            e = end_positions.reshape(-1).clamp(0, ignored)
            loss = (F.cross_entropy(start_logits.float(), s, ignore_index=ignored)
                    + F.cross_entropy(end_logits.float(), e, ignore_index=ignored)) / 2
        return compat.finish(QuestionAnsweringOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                                    hidden_states=out.hidden_states), return_dict)


@compat.transformers_interface
class LongformerForTokenClassification(nn.Module):
    from_pretrained = classmethod(_from_pretrained)
    save_pretrained = _save_pretrained

    def __init__(self, config: LongformerConfig, impl: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.longformer = LongformerModel(config, add_pooling_layer=False, impl=impl)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(self, input_ids=None, attention_mask=None, global_attention_mask=None, token_type_ids=None,
                position_ids=None, labels=None, inputs_embeds=None, output_hidden_states=None,
                output_attentions=None, return_dict=None, head_mask=None) -> TokenClassifierOutput:
        """labels: (B, T) class ids, -100 = not scored."""
        output_hidden_states = compat.forward_flags(output_attentions, output_hidden_states, head_mask)
        out = self.longformer(input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
                              inputs_embeds, output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        out = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)
        return compat.finish(out, return_dict)


@compat.transformers_interface
class LongformerForMultipleChoice(nn.Module):
    """Inputs (B, num_choices, T). Default global attention as transformers: the tokens after the first
    separator pair (the choice), found per choice."""

    from_pretrained = classmethod(_from_pretrained)
    save_pretrained = _save_pretrained

    def __init__(self, config: LongformerConfig, impl: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.longformer = LongformerModel(config, add_pooling_layer=True, impl=impl)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        init_weights(self.classifier, config.initializer_range)

    def forward(self, input_ids=None, attention_mask=None, global_attention_mask=None, token_type_ids=None,
                position_ids=None, labels=None, inputs_embeds=None, output_hidden_states=None,
                output_attentions=None, return_dict=None, head_mask=None) -> MultipleChoiceOutput:
        """input_ids and masks: (B, N, T) for N choices; labels: (B,) index of the right choice."""
        ref = input_ids if input_ids is not None else inputs_embeds
        if ref is None or ref.dim() < 3:
            raise ValueError("multiple choice inputs must have shape (B, num_choices, T)")
        N, T = ref.shape[1], ref.shape[2]
        if global_attention_mask is None and input_ids is not None:
            sep = first_separator(input_ids.reshape(-1, T), self.config.sep_token_id)
            global_attention_mask = (torch.arange(T, device=ref.device)[None] > (sep[:, None] + 1)).view(-1, N, T)

        def flat(t):
            return None if t is None else t.reshape(-1, *t.shape[2:])

        output_hidden_states = compat.forward_flags(output_attentions, output_hidden_states, head_mask)
        out = self.longformer(flat(input_ids), flat(attention_mask), flat(global_attention_mask), flat(token_type_ids),
                              flat(position_ids), flat(inputs_embeds), output_hidden_states)
        logits = self.classifier(self.dropout(out.pooler_output)).view(-1, N)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return compat.finish(MultipleChoiceOutput(logits=logits, loss=loss, hidden_states=out.hidden_states), return_dict)
