"""The Longformer encoder (RoBERTa-shaped, transformers-compatible checkpoints) and its task models.

Importing this package touches no device and loads no model.
"""
from .attention import LongformerSelfAttention
from .config import LongformerConfig
from .heads import (LongformerForMaskedLM, LongformerForMultipleChoice, LongformerForQuestionAnswering,
                    LongformerForSequenceClassification, LongformerForTokenClassification)
from .modeling import LongformerLayer, LongformerModel
from .tokenizer import load_tokenizer
from .outputs import (LongformerModelOutput, MaskedLMOutput, MultipleChoiceOutput, QuestionAnsweringOutput,
                      SequenceClassifierOutput, TokenClassifierOutput)

__all__ = [
    "LongformerConfig",
    "LongformerSelfAttention",
    "LongformerLayer",
    "LongformerModel",
    "LongformerForMaskedLM",
    "LongformerForSequenceClassification",
    "LongformerForQuestionAnswering",
    "LongformerForTokenClassification",
    "LongformerForMultipleChoice",
    "LongformerModelOutput",
    "MaskedLMOutput",
    "SequenceClassifierOutput",
    "QuestionAnsweringOutput",
    "TokenClassifierOutput",
    "MultipleChoiceOutput",
    "load_tokenizer",
]
