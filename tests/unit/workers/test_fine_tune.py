"""'auto' hyperparameters of a fine-tuning job, per base model."""

from __future__ import annotations

from llmaas.workers.fine_tune import BASE_LR, auto_defaults, auto_hyperparameters

AUTO = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}


def test_auto_hyperparameters_general_and_gemma():
    assert auto_hyperparameters(AUTO, 300) == {"n_epochs": 7, "batch_size": 8, "learning_rate_multiplier": 1.0}
    assert auto_hyperparameters(AUTO, 300, "gemma3")["n_epochs"] == 4
    assert auto_hyperparameters(AUTO, 50, "gemma3") == {"n_epochs": 5, "batch_size": 6,
                                                              "learning_rate_multiplier": 1.0}
    assert auto_hyperparameters(AUTO, 5000, "gemma3")["n_epochs"] == 1
    assert auto_defaults("llama").base_lr == BASE_LR and auto_defaults("qwen2").base_lr == BASE_LR
    assert auto_defaults("gemma3").base_lr == 1e-3
    given = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    assert auto_hyperparameters(given, 300, "gemma3") == given
