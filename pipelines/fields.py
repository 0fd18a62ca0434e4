"""How the fields of a pydantic model become command-line options: a field that carries a `Flag` is one option, its
type and bounds parse the text (a bad value is a usage error), its description is the help. The models declared
this way (`pipelines.settings`, `pipelines.execution.options`) are each one flow parameter and one group of flags.

Imports pydantic only: the CLI reads it to build its parser, and ``dipflow --help`` must stay quick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, TypeAdapter

__all__ = ["Flag", "flags", "parse_field"]


@dataclass(frozen=True)
class Flag:
    """How the command line spells a field: its metavar, its option when it is not ``--field-name``, the help
    group it is listed in (None: the command's own options), and the check of `pipelines.cli_options` that its text
    passes first (``"url"``: a known, installed protocol; ``"glob"``; ``"suffix"``)."""

    metavar: str
    option: str | None = None
    group: str | None = None
    check: str | None = None

    def name(self, field: str) -> str:
        return self.option or "--" + field.replace("_", "-")


def flags(model: type[BaseModel]) -> list[tuple[str, Flag, str]]:
    """(field, its Flag, its help) of every field of `model` the CLI offers, in declaration order."""
    out = []
    for name, field in model.model_fields.items():
        flag = next((m for m in field.metadata if isinstance(m, Flag)), None)
        if flag is not None:
            out.append((name, flag, field.description or ""))
    return out


def parse_field(model: type[BaseModel], name: str, text: str) -> Any:
    """Field `name`'s value from command-line text, validated as the model validates it; ``ValueError`` (pydantic's
    ``ValidationError``) with the reasons when it is not one. Only that field is validated: a model whose other
    fields are required still parses each of them alone."""
    field = model.model_fields[name]
    strict = ConfigDict(allow_inf_nan=model.model_config.get("allow_inf_nan", True))
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)], config=strict).validate_python(text)
