"""Did you mean: for an unknown key (issue 25.25), the keys a pydantic model takes at a place inside it,
and the closest of them (difflib), for the one place settings and recipe errors are formatted
(``recipes.format_validation_error``)."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel


def keys_at(schema: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The keys the model at ``loc`` inside ``schema`` takes ([] where that is not a model)."""
    import types

    model: Any = schema
    for part in loc:
        is_model = isinstance(model, type) and issubclass(model, BaseModel)
        field = model.model_fields.get(str(part)) if is_model else None
        if field is None:
            return []
        ann = field.annotation
        if typing.get_origin(ann) in (typing.Union, types.UnionType):
            ann = next((a for a in typing.get_args(ann) if a is not type(None)), None)
        model = ann
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def did_you_mean(key: str, known: list[str]) -> str:
    """`` (did you mean 'seed'?)`` for the closest of ``known`` (difflib), or ""."""
    import difflib

    close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""
