"""Command-line options generated from pydantic models, for both programs (``cbpt``, ``cbpt-server``).

A setting is declared once, as a model field (type, default, constraints, description); its option
is generated here: ``--<name>``, typed as the field is (``Literal`` choices, ``Enum`` values,
repeatable lists, ``--x/--no-x`` for a bool), its help the description and its shown default the
model's. A field may name another flag (``json_schema_extra={"flag": "--generator"}``), read an
environment variable as typer does (``{"envvar": "CBPT_SERVER"}``), or stay off the command line
(``{"cli": False}``). A model's sections (fields that are models themselves) are walked one level:
their settings become flat options, so a name may be used once across sections (``leaves`` refuses
a second). An option not given is None and left out, so the model's own precedence decides.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from enum import Enum
from typing import Annotated, Any, NamedTuple, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from cbpt.common.version import __version__

R = TypeVar("R")
Command = Callable[..., R]


def version_option(program: str) -> Any:
    """``--version`` for a typer callback: prints ``PROGRAM VERSION`` and exits before any command runs."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{program} {__version__}")
            raise typer.Exit()

    return typer.Option("--version", callback=show, is_eager=True, help="Print the version and exit.")


def flag(name: str) -> str:
    """The option a setting's name becomes (``select_on`` -> ``--select-on``), as typer derives it."""
    return "--" + name.replace("_", "-")


class Leaf(NamedTuple):
    """One setting: where it sits in the model (``("limits", "max_candidates")``) and its field."""

    path: tuple[str, ...]
    field: FieldInfo

    @property
    def name(self) -> str:
        return self.path[-1]

    def extra(self, key: str, default: Any = None) -> Any:
        extra = self.field.json_schema_extra
        return extra.get(key, default) if isinstance(extra, dict) else default

    @property
    def option(self) -> str:
        return str(self.extra("flag") or flag(self.name))


def _section(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def leaves(model: type[BaseModel]) -> dict[str, Leaf]:
    """Every setting of ``model`` by name, its sections' settings included, in declaration order."""
    found: dict[str, Leaf] = {}
    for name, field in model.model_fields.items():
        section = _section(field)
        inner = [Leaf((name, *leaf.path), leaf.field) for leaf in leaves(section).values()] if section else []
        for leaf in inner or [Leaf((name,), field)]:
            if leaf.name in found:
                where = ".".join(found[leaf.name].path)
                raise TypeError(f"{model.__name__}: setting {leaf.name!r} is declared twice ({where})")
            found[leaf.name] = leaf
    return found


def nest(model: type[BaseModel], flat: Mapping[str, Any]) -> dict[str, Any]:
    """Values by setting name put into their sections (``{"limits": {"max_candidates": 8}}``); a value
    of None (or an empty list) is "not given" and left out."""
    where = leaves(model)
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        if not _given(value):
            continue
        if name not in where:
            raise TypeError(f"{model.__name__} has no setting {name!r}")
        *sections, leaf = where[name].path
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = value
    return nested


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, (list, tuple)) and not value)


def _cli_type(annotation: Any) -> Any:
    """The type typer parses a setting as: the field's own, without ``None``."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return args[0] if len(args) == 1 else str
    return annotation


def _shown(default: Any) -> str | bool:
    if default is None or default == [] or default is PydanticUndefined:
        return False
    return str(default.value if isinstance(default, Enum) else default)


def _sentence(description: str) -> str:
    """A description as help: a capital first letter and a full stop."""
    if not description:
        return ""
    return description[0].upper() + description[1:] + ("" if description.endswith(".") else ".")


def _parameter(leaf: Leaf, default: Any) -> inspect.Parameter:
    kind = _cli_type(leaf.field.annotation)
    names = [f"{leaf.option}/--no-{leaf.option[2:]}"] if kind is bool else [leaf.option]
    option = typer.Option(
        *names,
        help=_sentence(leaf.field.description or ""),
        envvar=leaf.extra("envvar"),
        show_default=_shown(default),
        rich_help_panel=leaf.path[0] if len(leaf.path) > 1 else None,  # a section's options together
    )
    return inspect.Parameter(
        leaf.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
    )


def model_options(
    model: type[BaseModel],
    *,
    only: Collection[str] | None = None,
    exclude: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> list[inspect.Parameter]:
    """One option per setting of ``model`` (``only``: these sections or settings); ``defaults``
    are shown in place of the model's (a command's own, which its ``build`` applies)."""
    chosen = []
    for leaf in leaves(model).values():
        if not leaf.extra("cli", True) or leaf.name in exclude:
            continue
        if only is not None and leaf.name not in only and leaf.path[0] not in only:
            continue
        default = leaf.field.get_default(call_default_factory=True)
        chosen.append(_parameter(leaf, (defaults or {}).get(leaf.name, default)))
    return chosen


def settings_options(
    parameter: str,
    build: Callable[..., object],
    model: type[BaseModel],
    *,
    only: Collection[str] | None = None,
    exclude: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> Callable[[Command[R]], Command[R]]:
    """Put ``model``'s options in place of a command's ``parameter``, which then receives
    ``build(**given)``: the options given, nested into their sections, over ``defaults``."""
    options = model_options(model, only=only, exclude=exclude, defaults=defaults)

    def from_options(**values: Any) -> object:
        return build(
            **nest(model, {**(defaults or {}), **{name: v for name, v in values.items() if _given(v)}})
        )

    return option_group(parameter, from_options, options)


def option_group(
    parameter: str, build: Callable[..., object], options: Sequence[inspect.Parameter]
) -> Callable[[Command[R]], Command[R]]:
    """Replace a command's ``parameter`` by ``options``; call it with ``build(**their values)`` instead.

    The options stay options of the command itself, so they may come before or after its
    arguments, exactly as if each command spelled them out."""
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


def validation_problems(error: ValidationError, *models: type[BaseModel]) -> str:
    """A ValidationError as one line, each problem named by its flag where it is about a setting of
    the model that failed (one of ``models``: ``--port: ...``), else by its place
    (``adapters.specs.0.placement: ...``)."""
    failed = next((model for model in models if model.__name__ == error.title), None)
    known = leaves(failed) if failed is not None else {}
    problems = []
    for problem in error.errors():
        names = [str(part) for part in problem["loc"]]
        leaf = known.get(names[-1]) if names else None
        where = leaf.option if leaf is not None and list(leaf.path) == names else ".".join(names)
        problems.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(problems)
