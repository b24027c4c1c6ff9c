"""The model catalog's prices (USD per million tokens; pico-USD per token inside), cached in memory."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmaas.control.auth import audit
from llmaas.control.auth.principal import Context
from llmaas.control.billing.money import price_per_mtok, price_to_pico_per_token
from llmaas.control.clock import unix, utcnow
from llmaas.control.db.database import Database
from llmaas.control.db.models import ModelPrice
from llmaas.core.errors import NotFoundError

# Batch lines (POST /v1/batches) cost this fraction less than the same request made interactively, unless an
# admin sets a model's own `batch_discount`: they take only the slots interactive traffic leaves idle.
DEFAULT_BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class Price:
    input_pico: int
    output_pico: int
    training_pico: int
    batch_discount: float = DEFAULT_BATCH_DISCOUNT

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        return prompt_tokens * self.input_pico + completion_tokens * self.output_pico

    def for_batch(self, discount: float | None = None) -> Price:
        """The price of a batch line: input and output tokens `discount` (default: this price's own) cheaper."""
        keep = 1.0 - (self.batch_discount if discount is None else discount)
        return replace(self, input_pico=round(self.input_pico * keep), output_pico=round(self.output_pico * keep),
                       batch_discount=0.0)


def _price(p: ModelPrice) -> Price:
    return Price(p.input_pico, p.output_pico, p.training_pico,
                 DEFAULT_BATCH_DISCOUNT if p.batch_discount is None else p.batch_discount)


def price_dict(p: ModelPrice) -> dict:
    return {"id": p.model, "object": "model.price", "input_usd_per_mtok": price_per_mtok(p.input_pico),
            "output_usd_per_mtok": price_per_mtok(p.output_pico),
            "training_usd_per_mtok": price_per_mtok(p.training_pico),
            "batch_discount": DEFAULT_BATCH_DISCOUNT if p.batch_discount is None else p.batch_discount,
            "updated_at": unix(p.updated_at)}


def base_model(model: str) -> str:
    """'ft:<base>:<tenant>:<suffix>:<job>' is priced as its base model."""
    return model.split(":")[1] if model.startswith("ft:") and model.count(":") >= 2 else model


class Catalog:
    def __init__(self, db: Database, defaults: tuple[str, str, str]) -> None:
        self.db = db
        self.default = Price(*(price_to_pico_per_token(v, param="default price") for v in defaults))
        self._cache: dict[str, Price] = {}

    def ensure(self, models: list[str]) -> None:
        """Give every served model a price row (the default) unless an admin set one."""
        with self.db.session() as s:
            for m in models:
                if s.get(ModelPrice, m) is None:
                    s.add(ModelPrice(model=m, input_pico=self.default.input_pico,
                                     output_pico=self.default.output_pico,
                                     training_pico=self.default.training_pico, updated_at=utcnow()))
        self.reload()

    def reload(self) -> None:
        with self.db.session() as s:
            self._cache = {p.model: _price(p) for p in s.scalars(select(ModelPrice))}

    def price(self, model: str) -> Price:
        return self._cache.get(model) or self._cache.get(base_model(model)) or self.default

    def list(self, s: Session) -> list[ModelPrice]:
        return list(s.scalars(select(ModelPrice).order_by(ModelPrice.model)))

    def find(self, s: Session, model: str) -> ModelPrice | None:
        return s.get(ModelPrice, model)

    def remove(self, s: Session, model: str) -> None:
        """Drop a deleted model's price (usage already recorded keeps its cost)."""
        p = s.get(ModelPrice, model)
        if p is not None:
            s.delete(p)
        self._cache.pop(model, None)

    def get(self, s: Session, model: str) -> ModelPrice:
        p = s.get(ModelPrice, model)
        if p is None:
            raise NotFoundError(f"No price for model '{model}' in the catalog.", param="model")
        return p

    def set_price(self, s: Session, ctx: Context, model: str, *, input_usd_per_mtok: str | None = None,
                  output_usd_per_mtok: str | None = None, training_usd_per_mtok: str | None = None,
                  batch_discount: float | None = None) -> ModelPrice:
        ctx.principal.require()  # admin only
        p = s.get(ModelPrice, model)
        before = price_dict(p) if p else None
        if p is None:
            p = ModelPrice(model=model, input_pico=self.default.input_pico, output_pico=self.default.output_pico,
                           training_pico=self.default.training_pico, updated_at=utcnow())
            s.add(p)
        for attr, value, param in (("input_pico", input_usd_per_mtok, "input_usd_per_mtok"),
                                   ("output_pico", output_usd_per_mtok, "output_usd_per_mtok"),
                                   ("training_pico", training_usd_per_mtok, "training_usd_per_mtok")):
            if value is not None:
                setattr(p, attr, price_to_pico_per_token(value, param=param))
        if batch_discount is not None:
            p.batch_discount = float(batch_discount)
        p.updated_at = utcnow()
        s.flush()
        audit.record(s, ctx, "model.price", "model", model, tenant_id=None, before=before, after=price_dict(p))
        self._cache[model] = _price(p)
        return p
