"""Command-line parsers generated from dataclasses, importable without torch or transformers.

One field, one option: ``--field-name`` (dashes), its type, default and choices read from the
field, its help from ``metadata["help"]``. ``hf-topafa harvest``, ``evaluate``, ``bench`` and
``features`` build their parsers this way, so a new config field is a new flag with no argparse
copy to keep in step. (``train`` uses transformers' ``HfArgumentParser`` over ``TrainConfig``'s
sections, which loads no torch either; its fields are made with ``arg`` too.)

Metadata keys besides ``help``: ``flag`` (the option string; for a bool that defaults to True,
the flag that turns it off, e.g. ``--no-downstream``), ``positional``, ``nargs``, ``choices``,
``parse`` (a function from the string to the value), ``metavar``, and ``cli=False`` for fields
that are not options.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
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


class DataclassParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose options are the fields of ``classes``; returns instances.

    ``defaults`` replaces field defaults on this command line only, and ``only`` (class ->
    field names) keeps a subset of a class's fields, so one config can serve a second command
    with other defaults (``features`` reads text like ``harvest`` does).
    """

    def __init__(
        self,
        *classes: type,
        defaults: Mapping[str, object] | None = None,
        only: Mapping[type, Collection[str]] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.classes = classes
        self._names: dict[type, list[str]] = {}
        for cls in classes:
            hints = typing.get_type_hints(cls)
            wanted = (only or {}).get(cls)
            names = []
            for f in dataclasses.fields(cls):
                if not f.init or f.metadata.get("cli", True) is False:
                    continue
                if wanted is not None and f.name not in wanted:
                    continue
                default = (defaults or {}).get(f.name, _default(f))
                self._add(f, hints[f.name], default)
                names.append(f.name)
            self._names[cls] = names

    def _add(self, f: dataclasses.Field, hint, default) -> None:
        meta = f.metadata
        kwargs: dict = {k: meta[k] for k in _PARSER_KEYS if k in meta}
        kind, optional = _unwrap(hint)
        help_text = _escape(meta.get("help", ""))
        if kind is bool and not optional:
            if default is True:
                flag = meta.get("flag", "--no-" + f.name.replace("_", "-"))
                self.add_argument(flag, dest=f.name, action="store_false", help=help_text)
            else:
                flag = meta.get("flag", option_name(f.name))
                self.add_argument(flag, dest=f.name, action="store_true", help=help_text)
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
            if default is not None and "default" not in help_text:
                help_text = f"{help_text} (default: %(default)s)".strip()
        kwargs["help"] = help_text
        if meta.get("positional"):
            kwargs.pop("required", None)
            self.add_argument(f.name, **kwargs)
        else:
            self.add_argument(meta.get("flag", option_name(f.name)), dest=f.name, **kwargs)

    def parse_dataclasses(self, argv: list[str] | None = None, **fixed) -> tuple:
        """One instance per class from ``argv``; ``fixed`` sets fields that are not options.

        A value the dataclass itself refuses (its ``__post_init__``) is a usage error too:
        one line and exit status 2, as for a value argparse refuses.
        """
        namespace = self.parse_args(argv)
        out = []
        for cls in self.classes:
            kwargs = {name: getattr(namespace, name) for name in self._names[cls]}
            own = {f.name for f in dataclasses.fields(cls)}
            kwargs.update({k: v for k, v in fixed.items() if k in own})
            try:
                out.append(cls(**kwargs))
            except ValueError as err:
                self.error(" ".join(str(err).split()))
        return tuple(out)


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


def _escape(text: str) -> str:
    """argparse formats help with %: keep a literal % that is not %(name)s."""
    return re.sub(r"%(?!\()", "%%", text)
