"""Validated task payloads (Pydantic v2). Tasks take plain JSON dicts and validate them first thing.

A payload that fails validation will fail the same way every time, so it is never retried: the task raises
InvalidPayload, which is not in any task's `autoretry_for`, and the failure is recorded as a dead letter.
"""

from decimal import Decimal
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class InvalidPayload(ValueError):
    """The task's input is wrong; retrying cannot help."""


class Order(BaseModel):
    # Unknown fields are refused: a producer sending `amout` should hear about it, not have it ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)

    order_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # Money is Decimal, never float: 0.1 + 0.2 != 0.3 in binary floating point. JSON carries it as a string.
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)


def parse(model: type[Model], payload: Any) -> Model:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors())
        raise InvalidPayload(f"invalid {model.__name__}: {problems}") from None
