"""Option groups: a set of CLI options declared once and handed to each command as one object.

``option_group`` puts a group's options where the command names the group's parameter
(``connection: Connection``), so every command that takes the group takes the same
options, in the same place, with the same help; only defaults may differ per command.
Options stay options of the command itself, so they may come before or after its
arguments, exactly as if each command spelled them out.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, get_type_hints

R = TypeVar("R")
Command = Callable[..., R]


def flag(name: str) -> str:
    """The option a parameter name becomes (``select_on`` -> ``--select-on``), as typer derives it."""
    return "--" + name.replace("_", "-")


def dataclass_options(group: type, **defaults: Any) -> list[inspect.Parameter]:
    """Parameters from a dataclass whose fields are ``Annotated[type, typer.Option(...)]`` with defaults."""
    hints = get_type_hints(group, include_extras=True)
    return [
        inspect.Parameter(
            field.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=hints[field.name],
            default=defaults.get(field.name, field.default),
        )
        for field in dataclasses.fields(group)
    ]


def option_group(
    parameter: str, build: Callable[..., object], options: Sequence[inspect.Parameter]
) -> Callable[[Command[R]], Command[R]]:
    """Replace a command's ``parameter`` by ``options``; call it with ``build(**their values)`` instead."""
    names = [option.name for option in options]

    def decorate(command: Command[R]) -> Command[R]:
        signature = inspect.signature(command, eval_str=True)  # typer needs the real annotations
        if parameter not in signature.parameters:
            raise TypeError(f"{command.__name__} has no parameter {parameter!r} for its option group")
        if clash := [name for name in names if name in signature.parameters]:
            raise TypeError(f"{command.__name__}: option {clash[0]!r} is declared twice")
        spliced: list[inspect.Parameter] = []
        for own in signature.parameters.values():  # the group's options take its place and its kind
            spliced.extend(
                [option.replace(kind=own.kind) for option in options] if own.name == parameter else [own]
            )

        @functools.wraps(command)
        def wrapper(**values: Any) -> R:
            group = build(**{name: values.pop(name) for name in names})
            return command(**values, **{parameter: group})

        wrapper.__signature__ = signature.replace(parameters=spliced)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {option.name: option.annotation for option in spliced}
        return wrapper

    return decorate
