"""Eval metrics checked against scikit-learn, rouge_score, sacrebleu and hand-worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

from llmaas.evals.metrics import (
    classification_metrics,
    ece,
    exact_match,
    flatten_metrics,
    generation_metrics,
    loss_metrics,
    normalize_answer,
    token_f1,
)

LABELS = ["neg", "neu", "pos", "other"]


def _random_case(seed: int = 0, n: int = 400):
    """Noisy predictions where 'other' is never predicted and some predictions fall outside LABELS."""
    rng = np.random.default_rng(seed)
    y_true = [LABELS[i] for i in rng.integers(0, len(LABELS), n)]
    pool = ["neg", "neu", "pos", "garbage"]
    y_pred = [t if t != "other" and rng.random() < 0.6 else pool[rng.integers(0, len(pool))] for t in y_true]
    probs = rng.dirichlet(np.ones(len(LABELS)), n)
    probs[0] = [0.0, 0.0, 1.0, 0.0]  # a zero gold probability exercises the clipping in log loss
    y_true[0] = "neg"
    gold_nll = rng.exponential(1.0, n).tolist()
    return y_true, y_pred, probs.tolist(), gold_nll


def _ece_loop(conf: list[float], correct: list[bool], n_bins: int = 10) -> float:
    total = 0.0
    n = len(conf)
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i, c in enumerate(conf) if lo < c <= hi or (b == 0 and c == 0)]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            avg = sum(conf[i] for i in members) / len(members)
            total += abs(acc - avg) * len(members) / n
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_sklearn(seed):
    y_true, y_pred, probs, gold_nll = _random_case(seed)
    assert "other" not in y_pred and "garbage" in y_pred
    m = classification_metrics(y_true, y_pred, LABELS, probs=probs, gold_nll=gold_nll)

    assert m["rows"] == len(y_true)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=LABELS, average=None, zero_division=0)
    for j, label in enumerate(LABELS):
        pc = m["per_class"][label]
        assert pc["precision"] == pytest.approx(p[j], abs=1e-12)
        assert pc["recall"] == pytest.approx(r[j], abs=1e-12)
        assert pc["f1"] == pytest.approx(f[j], abs=1e-12)
        assert pc["support"] == s[j] and type(pc["support"]) is int
    assert m["per_class"]["other"]["precision"] == 0.0

    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=LABELS, average=avg, zero_division=0)
        assert m[avg]["precision"] == pytest.approx(p, abs=1e-12), avg
        assert m[avg]["recall"] == pytest.approx(r, abs=1e-12), avg
        assert m[avg]["f1"] == pytest.approx(f, abs=1e-12), avg

    assert m["confusion_matrix"]["labels"] == LABELS
    assert m["confusion_matrix"]["matrix"] == confusion_matrix(y_true, y_pred, labels=LABELS).tolist()

    pr = np.asarray(probs)
    # sklearn's log_loss reads probability columns in sorted label order; ours follow `labels`.
    order = [LABELS.index(label) for label in sorted(LABELS)]
    assert m["log_loss"] == pytest.approx(log_loss(y_true, pr[:, order], labels=sorted(LABELS)), rel=1e-12)
    gold = [LABELS.index(t) for t in y_true]
    correct = [int(np.argmax(row)) == g for row, g in zip(pr, gold, strict=True)]
    assert m["ece"] == pytest.approx(_ece_loop(pr.max(axis=1).tolist(), correct), abs=1e-12)
    assert m["gold_label_loss"] == pytest.approx(float(np.mean(gold_nll)), rel=1e-12)

    # JSON-able: plain Python scalars only.
    for key in ("accuracy", "log_loss", "ece", "gold_label_loss"):
        assert type(m[key]) is float
    assert all(type(v) is float for v in m["macro"].values())


def test_classification_without_probs_and_tiny_hand_case():
    m = classification_metrics(["a", "a", "b"], ["a", "x", "a"], ["a", "b"])
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["micro"]["precision"] == pytest.approx(0.5)  # 'x' is not counted as a prediction of any class
    assert m["micro"]["recall"] == pytest.approx(1 / 3)
    assert m["confusion_matrix"]["matrix"] == [[1, 0], [1, 0]]
    assert m["log_loss"] is None and m["ece"] is None and m["gold_label_loss"] is None


def test_ece_hand_worked_and_random():
    # bin (0.9,1]: acc 0.5 vs conf 0.95 -> 0.45*2/4; bin (0.5,0.6]: acc 1 vs 0.55 -> 0.45/4; 0 joins bin 0 -> 0.
    assert ece([0.95, 0.95, 0.55, 0.0], [True, False, True, False]) == pytest.approx(0.3375)
    # Right-closed bins: 0.3 belongs to (0.2, 0.3] together with 0.25, not with 0.35.
    assert ece([0.3, 0.25], [True, False]) == pytest.approx(abs(0.5 - 0.275))
    assert ece([0.3, 0.35], [True, False]) == pytest.approx(0.7 * 0.5 + 0.35 * 0.5)
    rng = np.random.default_rng(7)
    conf = rng.random(500).tolist()
    correct = (rng.random(500) < np.asarray(conf)).tolist()
    assert ece(conf, correct) == pytest.approx(_ece_loop(conf, correct), abs=1e-12)
    assert ece(conf, correct, n_bins=7) == pytest.approx(_ece_loop(conf, correct, 7), abs=1e-12)


def test_squad_style_em_and_token_f1():
    assert normalize_answer("  The Cat, sat on  a mat! ") == "cat sat on mat"
    assert exact_match("The  Cat!", "cat") == 1.0
    assert exact_match("cats", "cat") == 0.0
    assert token_f1("The cat sat on the mat.", "a cat sat") == pytest.approx(2 / 3)
    assert token_f1("x y y", "y y y z") == pytest.approx(4 / 7)  # overlap is a multiset: y counts twice
    assert token_f1("", "") == 1.0
    assert token_f1("the", "") == 1.0  # both normalise to nothing
    assert token_f1("cat", "") == 0.0
    assert token_f1("dog", "cat") == 0.0


def test_generation_metrics_match_reference_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    preds = ["The cat sat on the mat.", "Paris is the capital", "running quickly home", ""]
    refs = ["A cat was sitting on the mat", "paris", "he runs quickly to his home", "nothing"]
    m = generation_metrics(preds, refs, ref_nll=[4.0, 1.0, 6.0, 1.0], ref_tokens=[2, 2, 4, 4])

    assert m["rows"] == 4
    assert m["exact_match"] == pytest.approx(0.0)
    assert m["token_f1"] == pytest.approx(np.mean([token_f1(p, r) for p, r in zip(preds, refs, strict=True)]))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected_rouge = np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)])
    assert m["rouge_l"] == pytest.approx(expected_rouge, abs=1e-12) and m["rouge_l"] > 0
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score, abs=1e-12)
    # Token-weighted: 12 nats over 12 tokens, not the mean of per-row means (1.375).
    assert m["loss"] == pytest.approx(1.0)
    assert m["perplexity"] == pytest.approx(math.e)


def test_generation_metrics_without_nll():
    m = generation_metrics(["a b c"], ["a b c"])
    assert m["exact_match"] == 1.0 and m["token_f1"] == 1.0 and m["rouge_l"] == pytest.approx(1.0)
    assert m["loss"] is None and m["perplexity"] is None


def test_loss_metrics():
    m = loss_metrics([2.0, 3.0], [1, 4])
    assert m == {"rows": 2, "tokens": 5, "loss": pytest.approx(1.0), "perplexity": pytest.approx(math.e)}
    assert loss_metrics([], [])["loss"] is None


def test_flatten_metrics():
    y_true, y_pred, probs, gold_nll = _random_case()
    cls = classification_metrics(y_true, y_pred, LABELS, probs=probs, gold_nll=gold_nll)
    flat = flatten_metrics(cls)
    assert flat["accuracy"] == cls["accuracy"]
    assert flat["macro_f1"] == cls["macro"]["f1"] and flat["micro_f1"] == cls["micro"]["f1"]
    assert flat["weighted_f1"] == cls["weighted"]["f1"]
    assert flat["macro_precision"] == cls["macro"]["precision"] and flat["macro_recall"] == cls["macro"]["recall"]
    assert flat["log_loss"] == cls["log_loss"] and flat["ece"] == cls["ece"]
    assert flat["gold_label_loss"] == cls["gold_label_loss"]
    assert flat["f1[other]"] == 0.0 and set(flat) >= {f"f1[{label}]" for label in LABELS}

    no_probs = flatten_metrics(classification_metrics(y_true, y_pred, LABELS))
    assert "log_loss" not in no_probs and "ece" not in no_probs

    gen = flatten_metrics(generation_metrics(["a b"], ["a c"]))
    assert set(gen) == {"exact_match", "token_f1", "rouge_l", "bleu"}
    assert flatten_metrics(loss_metrics([2.0], [2])) == {"loss": 1.0, "perplexity": pytest.approx(math.e)}
