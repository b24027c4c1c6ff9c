"""Eval metrics as pure functions over plain Python lists.

Classification numbers follow scikit-learn's conventions (``zero_division=0``, ``labels=...``) so results can be
checked against it, but sklearn itself is only a test dependency. Generation metrics lazily import ``rouge_score``
and ``sacrebleu`` so importing this module stays cheap.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any

import numpy as np

__all__ = [
    "classification_metrics",
    "ece",
    "exact_match",
    "flatten_metrics",
    "generation_metrics",
    "loss_metrics",
    "normalize_answer",
    "token_f1",
]


# --------------------------------------------------------------------------------------------------------------------
# helpers


def _div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """Elementwise num/den with 0 where den == 0 (sklearn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    # exp overflows a double past ~709; a diverged model should report inf rather than crash the eval run.
    return math.exp(loss) if loss < 709.0 else math.inf


def _check_len(name: str, values: list | None, n: int) -> None:
    if values is not None and len(values) != n:
        raise ValueError(f"{name} has {len(values)} rows, expected {n}")


def _prf(tp: np.ndarray, pred_sum: np.ndarray, true_sum: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = _div(tp, pred_sum)
    recall = _div(tp, true_sum)
    # sklearn's form 2tp / (true + pred): equals 2pr/(p+r) and is 0 when p + r == 0.
    f1 = _div(2.0 * tp, true_sum + pred_sum)
    return precision, recall, f1


def _prf_dict(p: float, r: float, f: float) -> dict[str, float]:
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


# --------------------------------------------------------------------------------------------------------------------
# classification


def ece(confidences: list[float] | np.ndarray, correct: list[bool] | np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error over equal-width bins (0, 1/n], ..., ((n-1)/n, 1]; confidence 0 joins the first."""
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape:
        raise ValueError("confidences and correct must have the same length")
    n = conf.size
    if n == 0:
        return 0.0
    # Inner edges as i/n (not linspace) so a confidence of exactly 0.3 lands in (0.2, 0.3] as the definition says.
    inner = np.arange(1, n_bins, dtype=np.float64) / n_bins
    # side="left" counts edges strictly below conf, making bins right-closed; clip absorbs values a hair above 1.
    idx = np.clip(np.searchsorted(inner, conf, side="left"), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        if count:
            total += abs(hit[mask].mean() - conf[mask].mean()) * count / n
    return float(total)


def classification_metrics(
    y_true: list[str],
    y_pred: list[str],
    labels: list[str],
    probs: list[list[float]] | None = None,
    gold_nll: list[float] | None = None,
) -> dict[str, Any]:
    """Accuracy, P/R/F1 (macro, micro, weighted, per class), confusion matrix and probability-based scores.

    ``probs[i][j]`` is the probability of ``labels[j]`` for row i. Predictions (or gold labels) outside ``labels``
    are wrong for every class, matching sklearn called with ``labels=labels``.
    """
    n = len(y_true)
    _check_len("y_pred", y_pred, n)
    _check_len("probs", probs, n)
    _check_len("gold_nll", gold_nll, n)
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be unique")
    k = len(labels)
    index = {label: j for j, label in enumerate(labels)}
    # -1 marks "not one of labels": it then matches no row/column of the confusion matrix.
    t = np.array([index.get(y, -1) for y in y_true], dtype=np.int64)
    p = np.array([index.get(y, -1) for y in y_pred], dtype=np.int64)

    cm = np.zeros((k, k), dtype=np.int64)
    both = (t >= 0) & (p >= 0)
    np.add.at(cm, (t[both], p[both]), 1)

    tp = np.diag(cm).astype(np.float64)
    # Sums count out-of-label predictions against recall (true_sum) but not towards any class's pred_sum.
    true_sum = np.bincount(t[t >= 0], minlength=k).astype(np.float64)
    pred_sum = np.bincount(p[p >= 0], minlength=k).astype(np.float64)

    precision, recall, f1 = _prf(tp, pred_sum, true_sum)
    micro = _prf(tp.sum(), pred_sum.sum(), true_sum.sum())
    support_total = true_sum.sum()
    if support_total > 0:
        weighted = tuple(float((m * true_sum).sum() / support_total) for m in (precision, recall, f1))
    else:
        weighted = (0.0, 0.0, 0.0)
    macro = tuple(float(m.mean()) if k else 0.0 for m in (precision, recall, f1))

    accuracy = float(np.mean([a == b for a, b in zip(y_true, y_pred, strict=True)])) if n else None

    log_loss = ece_value = None
    if probs is not None and n:
        pr = np.asarray(probs, dtype=np.float64).reshape(n, k)
        # Gold labels outside `labels` get probability 0, which the clip turns into a large finite loss.
        p_gold = np.where(t >= 0, pr[np.arange(n), np.maximum(t, 0)], 0.0)
        eps = np.finfo(np.float64).eps
        log_loss = float(-np.log(np.clip(p_gold, eps, 1 - eps)).mean())
        # Calibration scores the model's top choice, so correctness is argmax == gold rather than y_pred == gold.
        ece_value = ece(pr.max(axis=1), pr.argmax(axis=1) == t)

    return {
        "rows": n,
        "accuracy": accuracy,
        "macro": _prf_dict(*macro),
        "micro": _prf_dict(*(float(m) for m in micro)),
        "weighted": _prf_dict(*weighted),
        "per_class": {
            label: {**_prf_dict(precision[j], recall[j], f1[j]), "support": int(true_sum[j])}
            for j, label in enumerate(labels)
        },
        "confusion_matrix": {"labels": list(labels), "matrix": cm.tolist()},
        "log_loss": log_loss,
        "ece": ece_value,
        "gold_label_loss": _mean([float(x) for x in gold_nll]) if gold_nll is not None else None,
    }


# --------------------------------------------------------------------------------------------------------------------
# generation

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(pred: str, ref: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD token-overlap F1 on normalised tokens; two empty answers agree (1.0), one empty scores 0.0."""
    p = normalize_answer(pred).split()
    r = normalize_answer(ref).split()
    if not p or not r:
        return float(p == r)
    same = sum((Counter(p) & Counter(r)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def _token_loss(nll_sums: list[float], token_counts: list[int]) -> tuple[int, float | None]:
    tokens = int(sum(token_counts))
    # Token-weighted, not a mean of per-row means: long references should count for more, as in training loss.
    return tokens, (float(sum(nll_sums)) / tokens if tokens > 0 else None)


def generation_metrics(
    preds: list[str],
    refs: list[str],
    ref_nll: list[float] | None = None,
    ref_tokens: list[int] | None = None,
) -> dict[str, Any]:
    """EM, token F1, ROUGE-L, corpus BLEU and (if NLLs are given) per-token loss and perplexity of the references."""
    n = len(preds)
    _check_len("refs", refs, n)
    _check_len("ref_nll", ref_nll, n)
    _check_len("ref_tokens", ref_tokens, n)
    if (ref_nll is None) != (ref_tokens is None):
        raise ValueError("ref_nll and ref_tokens must be given together")

    rouge_l = bleu = None
    if n:
        import sacrebleu
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        rouge_l = _mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)])
        bleu = float(sacrebleu.corpus_bleu(list(preds), [list(refs)]).score)

    loss = None
    if ref_nll is not None and ref_tokens is not None:
        _, loss = _token_loss(ref_nll, ref_tokens)

    return {
        "rows": n,
        "exact_match": _mean([exact_match(p, r) for p, r in zip(preds, refs, strict=True)]),
        "token_f1": _mean([token_f1(p, r) for p, r in zip(preds, refs, strict=True)]),
        "rouge_l": rouge_l,
        "bleu": bleu,
        "loss": loss,
        "perplexity": _perplexity(loss),
    }


def loss_metrics(nll_sums: list[float], token_counts: list[int]) -> dict[str, Any]:
    """Token-weighted mean cross-entropy and perplexity from per-row summed NLLs and token counts."""
    _check_len("token_counts", token_counts, len(nll_sums))
    tokens, loss = _token_loss(nll_sums, token_counts)
    return {"rows": len(nll_sums), "tokens": tokens, "loss": loss, "perplexity": _perplexity(loss)}


# --------------------------------------------------------------------------------------------------------------------
# flat view

_SCALARS = ("accuracy", "log_loss", "ece", "gold_label_loss", "exact_match", "token_f1", "rouge_l", "bleu", "loss",
            "perplexity")


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """One level of ``name -> float`` for side-by-side comparison tables; missing or None values are left out."""
    flat: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if value is not None:
            flat[name] = float(value)

    put("accuracy", metrics.get("accuracy"))
    for avg in ("macro", "micro", "weighted"):
        put(f"{avg}_f1", (metrics.get(avg) or {}).get("f1"))
    put("macro_precision", (metrics.get("macro") or {}).get("precision"))
    put("macro_recall", (metrics.get("macro") or {}).get("recall"))
    for name in _SCALARS[1:]:
        put(name, metrics.get(name))
    for label, scores in (metrics.get("per_class") or {}).items():
        put(f"f1[{label}]", scores.get("f1"))
    return flat
