"""Command-line parsers generated from dataclasses, importable without torch or transformers.

One field, one option: ``--field-name`` (dashes), its type, default and choices read from the
field, its help from ``metadata["help"]``. ``hf-topafa train``, ``harvest``, ``evaluate``,
``bench`` and ``features`` build their parsers this way, so a new config field is a new flag
with no argparse copy to keep in step, and every command follows one convention:
``CommandParser`` (which every subcommand's parser is) shows dashed names and also reads each
with underscores (``--max_tokens``); a switch takes no value; a help line names its default at
most once and never as None or False.

Metadata keys besides ``help``: ``flag`` (the option string; for a bool that defaults to True,
the flag that turns it off, e.g. ``--no-downstream``), ``aliases`` (other option strings read
but not shown), ``positional``, ``nargs``, ``choices``, ``parse`` (a function from the string to
the value), ``metavar``, and ``cli=False`` for fields that are not options.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from collections.abc import Collection, Mapping
from typing import Literal

_PARSER_KEYS = ("nargs", "choices", "metavar")


def arg(default=dataclasses.MISSING, help: str = "", **metadata) -> dataclasses.Field:
    """A dataclass field whose help text is also its --help line (no default: required)."""
    metadata = {"help": help, **metadata}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


class CommandParser(argparse.ArgumentParser):
    """The parser of every ``hf-topafa`` subcommand: an option is shown with dashes and read
    with dashes or underscores (``--max-tokens``, ``--max_tokens``, ``--max_tokens=5``);
    ``hidden_aliases`` (option string -> the option it stands for) are read but not shown."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hidden_aliases: dict[str, str] = {}

    def canonical(self, arg: str) -> str:
        """``arg`` with its option name as the parser shows it; anything else unchanged."""
        if not arg.startswith("--") or arg == "--":
            return arg
        name, eq, value = arg.partition("=")
        for candidate in (name, name.replace("_", "-")):
            candidate = self.hidden_aliases.get(candidate, candidate)
            if candidate in self._option_string_actions:
                return candidate + eq + value
        return arg

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)
        args = [self.canonical(a) for a in args[:end]] + args[end:]
        return super().parse_known_args(args, namespace)


class DataclassParser(CommandParser):
    """A ``CommandParser`` whose options are the fields of ``classes``; returns instances.

    ``defaults`` replaces field defaults on this command line only, ``helps`` their help text
    (where the shared text would say otherwise), and ``only`` (class -> field names) keeps a
    subset of a class's fields, so one config can serve a second command with other defaults
    (``features`` reads text like ``harvest`` does). A class with an ``_argument_group_name``
    gets its options under that heading of ``--help``.
    """

    def __init__(
        self,
        *classes: type,
        defaults: Mapping[str, object] | None = None,
        helps: Mapping[str, str] | None = None,
        only: Mapping[type, Collection[str]] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.classes = classes
        self._names: dict[type, list[str]] = {}
        for cls in classes:
            hints = typing.get_type_hints(cls)
            wanted = (only or {}).get(cls)
            heading = getattr(cls, "_argument_group_name", None)
            target = self.add_argument_group(heading) if heading else self
            names = []
            for f in dataclasses.fields(cls):
                if not f.init or f.metadata.get("cli", True) is False:
                    continue
                if wanted is not None and f.name not in wanted:
                    continue
                default = (defaults or {}).get(f.name, _default(f))
                help_text = (helps or {}).get(f.name, f.metadata.get("help", ""))
                self._add(target, f, hints[f.name], default, help_text)
                names.append(f.name)
            self._names[cls] = names

    def _add(self, target, f: dataclasses.Field, hint, default, help_text: str) -> None:
        meta = f.metadata
        kwargs: dict = {k: meta[k] for k in _PARSER_KEYS if k in meta}
        kind, optional = _unwrap(hint)
        help_text = _escape(help_text)
        flag = meta.get("flag", option_name(f.name))
        if kind is bool and not optional:
            if default is True:
                flag = meta.get("flag", "--no-" + f.name.replace("_", "-"))
                target.add_argument(flag, dest=f.name, action="store_false", help=help_text)
            else:
                target.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            self.set_defaults(**{f.name: bool(default)})
            return
        if kind is bool:  # bool | None: --x / --no-x, unset keeps None
            kwargs["action"] = argparse.BooleanOptionalAction
        elif "parse" in meta:
            kwargs["type"] = meta["parse"]
        elif typing.get_origin(kind) is Literal:
            kwargs.setdefault("choices", typing.get_args(kind))
        elif typing.get_origin(kind) in (list, tuple):
            kwargs["type"] = typing.get_args(kind)[0]
            kwargs.setdefault("nargs", "+")
        elif kind in (int, float, str):
            kwargs["type"] = kind
        if default is dataclasses.MISSING:
            kwargs["required"] = not meta.get("positional")
        else:
            kwargs["default"] = default
            if default is not None and default is not False and not _states_default(help_text):
                help_text = f"{help_text} (default: %(default)s)".strip()
        kwargs["help"] = help_text
        if meta.get("positional"):
            kwargs.pop("required", None)
            target.add_argument(f.name, **kwargs)
            return
        target.add_argument(flag, dest=f.name, **kwargs)
        for alias in meta.get("aliases", ()):
            self.hidden_aliases[alias] = flag

    def dataclasses_from(self, namespace: argparse.Namespace, **fixed) -> tuple:
        """One instance per class from parsed options; ``fixed`` sets fields that are not
        options. A value a dataclass refuses raises its ValueError."""
        out = []
        for cls in self.classes:
            kwargs = {name: getattr(namespace, name) for name in self._names[cls]}
            own = {f.name for f in dataclasses.fields(cls)}
            kwargs.update({k: v for k, v in fixed.items() if k in own})
            out.append(cls(**kwargs))
        return tuple(out)

    def parse_dataclasses(self, argv: list[str] | None = None, **fixed) -> tuple:
        """One instance per class from ``argv``; ``fixed`` sets fields that are not options.

        A value the dataclass itself refuses (its ``__post_init__``) is a usage error too:
        one line and exit status 2, as for a value argparse refuses.
        """
        namespace = self.parse_args(argv)
        try:
            return self.dataclasses_from(namespace, **fixed)
        except ValueError as err:
            self.error(" ".join(str(err).split()))


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _unwrap(hint) -> tuple[object, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _states_default(help_text: str) -> bool:
    """Whether a help text already says what the default is (then none is appended)."""
    return re.search(r"default:|default is|by default|%\(default\)", help_text) is not None


def _escape(text: str) -> str:
    """argparse formats help with %: keep a literal % that is not %(name)s."""
    return re.sub(r"%(?!\()", "%%", text)
