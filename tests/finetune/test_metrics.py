"""Metrics against hand-computed values."""
from __future__ import annotations

import pytest

from longformer.finetune.metrics import classification_metrics, normalize_answer, squad_metrics, token_metrics


def test_classification_binary_and_macro() -> None:
    gold = ["true", "true", "false", "false", "false"]
    pred = ["true", "false", "true", "false", "false"]
    m = classification_metrics(gold, pred, ["false", "true"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # positive 'true': tp=1 fp=1 fn=1 -> 0.5; 'false': tp=2 fp=1 fn=1 -> 2/3
    assert m["f1"] == pytest.approx(0.5) and m["positive_label"] == "true"
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert "f1" not in classification_metrics(["a", "b", "c"], ["a", "b", "b"], ["a", "b", "c"])


def test_squad_normalisation_and_max_over_golds() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    m = squad_metrics([["the cat sat", "a dog"], ["Paris"]], ["cat sat on", "London"])
    # example 1: F1 vs "cat sat" = 2*(2/3*1)/(2/3+1) = 0.8; EM 0. example 2: 0.
    assert m["exact_match"] == 0.0 and m["f1"] == pytest.approx(40.0)
    assert squad_metrics([["An apple"]], ["apple."])["exact_match"] == 100.0


def test_token_and_entity_f1() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]
    m = token_metrics(gold, pred)
    assert m["accuracy"] == pytest.approx(3 / 4)
    # entities: gold {PER 0-2, LOC 3-4}, pred {PER 0-1, LOC 3-4} -> tp 1, fp 1, fn 1 -> 0.5
    assert m["entity_f1"] == pytest.approx(0.5)
    # token F1 over non-O tags: B-PER 1, I-PER 0, B-LOC 1
    assert m["token_macro_f1"] == pytest.approx(2 / 3)
