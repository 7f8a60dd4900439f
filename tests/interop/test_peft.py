"""PEFT LoRA on our task models, with and without task_type: trains, saves, reloads and merges."""
from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")

from longformer.encoder import (LongformerConfig, LongformerForQuestionAnswering,  # noqa: E402
                                LongformerForSequenceClassification, LongformerForTokenClassification)

VOCAB, PAD, SEP = 61, 1, 2
CASES = [  # task_type, model class
    (None, LongformerForSequenceClassification),
    ("SEQ_CLS", LongformerForSequenceClassification),
    ("TOKEN_CLS", LongformerForTokenClassification),
    ("QUESTION_ANS", LongformerForQuestionAnswering),
]


def tiny_config() -> LongformerConfig:
    return LongformerConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48, max_position_embeddings=64, attention_window=[2, 4],
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def batch(cls, B: int = 3, T: int = 13) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    ids[:, 3] = SEP  # the question is the first 3 tokens (global attention by default for QA)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -4:] = 0
    ids[mask == 0] = PAD
    out = dict(input_ids=ids, attention_mask=mask)
    if cls is LongformerForQuestionAnswering:
        out.update(start_positions=torch.tensor([4, 5, 6]), end_positions=torch.tensor([6, 7, 8]))
    elif cls is LongformerForTokenClassification:
        out.update(labels=ids % 2)
    else:
        out.update(labels=torch.tensor([0, 1, 1]))
    return out


def scores(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**{k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")})
    return torch.cat([out.start_logits, out.end_logits], -1) if "start_logits" in out else out.logits


@pytest.mark.parametrize("task_type,cls", CASES, ids=[str(c[0]) for c in CASES])
def test_lora_trains_saves_reloads_merges(tmp_path, task_type, cls):
    torch.manual_seed(0)
    cls(tiny_config()).save_pretrained(tmp_path / "base")
    base = cls.from_pretrained(tmp_path / "base")
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                      task_type=task_type))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    inputs = batch(cls)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**inputs).loss
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]
    model.eval()
    trained = scores(model, inputs)
    assert not torch.allclose(trained, scores(cls.from_pretrained(tmp_path / "base"), inputs))

    model.save_pretrained(tmp_path / "adapter")
    reloaded = peft.PeftModel.from_pretrained(cls.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
    assert torch.allclose(scores(reloaded, inputs), trained, atol=1e-5)

    merged = reloaded.merge_and_unload()
    assert isinstance(merged, cls) and not any("lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(scores(merged, inputs), trained, atol=1e-4)
    merged.save_pretrained(tmp_path / "merged")  # a plain checkpoint again, for both libraries
    assert torch.allclose(scores(cls.from_pretrained(tmp_path / "merged"), inputs), trained, atol=1e-4)


def test_lora_without_target_modules_gets_peft_error():
    with pytest.raises(ValueError, match="target_modules"):
        peft.get_peft_model(LongformerForSequenceClassification(tiny_config()), peft.LoraConfig(task_type="SEQ_CLS"))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers deprecates the gradient_checkpointing name
def test_trainer_with_lora_saves_an_adapter(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cls = LongformerForSequenceClassification
    cls(tiny_config()).save_pretrained(tmp_path / "base")
    model = peft.get_peft_model(cls.from_pretrained(tmp_path / "base"),
                                peft.LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    inputs = batch(cls)
    rows = [{k: v[i] for k, v in inputs.items()} for i in range(3)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=3,
                                          num_train_epochs=3, learning_rate=1e-2, report_to=[], use_cpu=True,
                                          save_strategy="no", gradient_checkpointing=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows)
    trainer.train()
    assert trainer.evaluate()["eval_loss"] > 0
    trainer.save_model()
    model.eval()
    reloaded = peft.PeftModel.from_pretrained(cls.from_pretrained(tmp_path / "base"), tmp_path / "run").eval()
    assert torch.allclose(scores(reloaded, inputs), scores(model, inputs), atol=1e-5)
