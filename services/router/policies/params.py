"""Policy parameters: the pydantic base every policy's parameter model extends, and its validation.

A policy's ``Params`` model is the part of the YAML routing config under ``policy.params``;
:func:`parse_params` validates it against the configured variants and turns pydantic's errors into
one :class:`PolicyConfigError` naming each problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class PolicyConfigError(ValueError):
    """Bad policy configuration. The message names the parameter and the problem."""


class PolicyParams(BaseModel):
    """Base of every policy's parameter model (the part the YAML routing config embeds).

    Unknown keys are rejected, field docstrings become JSON-schema descriptions, and instances are
    immutable. Cross-checks against the variant list read ``info.context["variants"]``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


P = TypeVar("P", bound=PolicyParams)


def validate_variants(variants: Sequence[str]) -> tuple[str, ...]:
    """Return the variants as a tuple, or raise PolicyConfigError naming the problem."""
    if isinstance(variants, str) or not isinstance(variants, Sequence):
        raise PolicyConfigError("variants: expected a list of variant names")
    names = tuple(variants)
    if not names:
        raise PolicyConfigError("variants: at least one variant is required")
    for name in names:
        if not isinstance(name, str) or not name:
            raise PolicyConfigError(f"variants: every name must be a non-empty string, got {name!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PolicyConfigError(f"variants: duplicate names {duplicates}")
    return names


def parse_params(model: type[P], kind: str, variants: Sequence[str], raw: P | Mapping[str, Any] | None) -> P:
    """Validate ``raw`` against ``model`` (with the variant list as context).

    Pydantic's errors are flattened into one PolicyConfigError such as
    ``invalid params for policy 'canary': weights.b: Input should be greater than or equal to 0``.
    """
    data: Any = {} if raw is None else raw
    if isinstance(data, BaseModel):
        # Re-validate: the instance may have been built without the variant cross-checks.
        data = data.model_dump()
    try:
        return model.model_validate(data, context={"variants": tuple(variants)})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"])
            # Our own validators raise PolicyConfigError, whose text already names the field;
            # pydantic would prefix it with "Value error, ".
            ctx_error = err.get("ctx", {}).get("error")
            text = str(ctx_error) if isinstance(ctx_error, PolicyConfigError) else err["msg"]
            problems.append(f"{where}: {text}" if where else text)
        raise PolicyConfigError(f"invalid params for policy {kind!r}: " + "; ".join(problems)) from None


def context_variants(info: Any) -> tuple[str, ...] | None:
    """The variant list passed by :func:`parse_params`, or None when validated standalone."""
    context = getattr(info, "context", None)
    return None if not context else context.get("variants")
