"""Eval files: what the line reader refuses."""

from __future__ import annotations

import pytest

from llmaas.evals.tasks import TaskError, read_rows
from tests.unit.conftest import DEEP


def test_an_eval_file_line_nested_thousands_deep_is_a_task_error():
    with pytest.raises(TaskError, match="nested too deeply"):
        read_rows(DEEP, {"type": "loss"})
