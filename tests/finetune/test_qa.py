"""QA: strided windows over long contexts, global attention on the question, span extraction, and a
tiny model that overfits a handful of SQuAD-format examples (exact match rises)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from finetune_helpers import WORDS, write_jsonl

from longformer.finetune.data import QAExample, load_qa
from longformer.finetune.features import load_tokenizer
from longformer.finetune.qa import extract_answers, qa_features

CITIES = ["paris", "rome", "berlin", "madrid"]


def qa_rows(n: int, seed: int, n_words: int = 60) -> list[dict]:
    """'where is the cat ?' -> the city right after 'cat is' somewhere in a long filler context."""
    rng = random.Random(seed)
    filler = WORDS[:24]
    rows = []
    for i in range(n):
        words = [rng.choice(filler) for _ in range(n_words)]
        at = rng.randrange(n_words)
        city = CITIES[i % len(CITIES)]
        words[at:at] = ["the", "cat", "is", city]
        context = " ".join(words)
        start = len(" ".join(words[: at + 3])) + 1
        rows.append({"id": f"q{i}", "question": "where is the cat ?", "context": context,
                     "answers": {"text": [city], "answer_start": [start]}})
    return rows


def test_windows_cover_long_contexts(tiny_model_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    examples = load_qa(write_jsonl(tmp_path / "q.jsonl", qa_rows(6, seed=0)))
    feats = qa_features(tok, examples, max_length=32, doc_stride=8, with_targets=True)
    assert len(feats) > 2 * len(examples)  # 64 context tokens do not fit in 32
    for ex_index, ex in enumerate(examples):
        windows = [f for f in feats if f["example_index"] == ex_index]
        hits = 0
        for f in windows:
            assert len(f["input_ids"]) <= 32
            # [CLS] + 5 question tokens are global, nothing else
            assert f["global"] == [1] * 6 + [0] * (len(f["input_ids"]) - 6)
            s, e = f["start_positions"], f["end_positions"]
            if s:
                hits += 1
                assert ex.context[f["offsets"][s][0] : f["offsets"][e][1]] == ex.answers[0]["text"]
            else:
                assert e == 0
        assert hits >= 1
        spans = [(f["offsets"][i][0]) for f in windows for i, o in enumerate(f["offsets"]) if o is not None]
        assert set(spans) >= {m.start() for m in __import__("re").finditer(r"\S+", ex.context)}  # every word seen


def test_extract_answers_picks_best_valid_span() -> None:
    ex = QAExample("q", "aa bb cc dd", [])
    offsets = [None, None, (0, 2), (3, 5), (6, 8), (9, 11), None]
    feat = {"example_index": 0, "offsets": offsets}
    start = np.array([9.0, 0, 0, 5, 0, 0, 9])  # the best raw starts are outside the context
    end = np.array([9.0, 0, 0, 0, 4, 0, 9])
    assert extract_answers([ex], [feat], [start], [end]) == ["bb cc"]
    assert extract_answers([ex], [feat], [start], [end], max_answer_length=1) == ["bb"]


def _exact_match(model_dir: Path, examples: list[QAExample], model: torch.nn.Module) -> float:
    from longformer.finetune.metrics import squad_metrics
    from longformer.finetune.predict import infer
    from longformer.finetune.tasks import get_task
    from longformer.training.distributed import DistContext

    tok = load_tokenizer(model_dir)
    feats = qa_features(tok, examples, max_length=48, doc_stride=16, with_targets=False)
    out = infer(model, get_task("qa"), feats, batch_size=8, pad=0, use_token_types=True, ctx=DistContext(), bf16=False)
    preds = extract_answers(examples, feats, [o["start"] for o in out], [o["end"] for o in out])
    return squad_metrics([[a["text"] for a in ex.answers] for ex in examples], preds)["exact_match"]


def test_tiny_model_overfits_squad_examples(tiny_model_dir: Path, tmp_path: Path) -> None:
    from longformer.encoder import LongformerForQuestionAnswering
    from longformer.finetune.__main__ import main

    rows = qa_rows(4, seed=1, n_words=50)
    dev = write_jsonl(tmp_path / "dev.jsonl", rows)
    train = write_jsonl(tmp_path / "train.jsonl", rows * 12)  # one long epoch: fewer evaluations
    examples = load_qa(dev)
    torch.manual_seed(0)
    untrained = _exact_match(tiny_model_dir, examples, LongformerForQuestionAnswering.from_pretrained(tiny_model_dir))
    out = tmp_path / "out"
    assert main(["finetune", "--task", "qa", "--model", str(tiny_model_dir), "--train", str(train),
                 "--validation", str(dev), "--out", str(out), "--epochs", "3", "--batch-size", "8",
                 "--max-length", "48", "--doc-stride", "16", "--lr", "3e-3", "--warmup-ratio", "0.05",
                 "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    trained = _exact_match(tiny_model_dir, examples, LongformerForQuestionAnswering.from_pretrained(out / "best"))
    assert metrics["validation"]["exact_match"] == trained
    assert untrained <= 25.0 and trained >= 75.0, (untrained, trained, metrics["history"])
