"""Wire schema of POST /v1/fine_tuning/jobs (OpenAI's shape, plus a documented `lora` extension)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmaas.protocol.common import Metadata
from llmaas.protocol.evals import FineTuneEval


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: int | Literal["auto"] | None = "auto"
    batch_size: int | Literal["auto"] | None = "auto"
    learning_rate_multiplier: float | Literal["auto"] | None = "auto"


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised"] = "supervised"
    supervised: Supervised = Field(default_factory=Supervised)


class LoraConfig(BaseModel):
    """Extension: the adapter's shape. Defaults: rank 16, alpha 32, dropout 0, all linear layers."""

    model_config = ConfigDict(extra="forbid")
    rank: int | None = Field(default=None, ge=1, le=256)
    alpha: float | None = Field(default=None, gt=0, le=1024)
    dropout: float | None = Field(default=None, ge=0, lt=1)
    target_modules: list[Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]] | None \
        = Field(default=None, min_length=1)


class FineTuneCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the SDK may send fields we do not use (integrations)
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(default=None, max_length=40)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: Metadata = None
    hyperparameters: Hyperparameters | None = None  # legacy top-level form
    method: Method | None = None
    lora: LoraConfig | None = None
    eval: FineTuneEval | None = None  # extension: evaluate the result and each checkpoint when the job succeeds

    def hp(self) -> dict:
        h = self.method.supervised.hyperparameters if self.method else (self.hyperparameters or Hyperparameters())
        return h.model_dump()

    def lora_dict(self) -> dict:
        return self.lora.model_dump(exclude_none=True) if self.lora else {}
