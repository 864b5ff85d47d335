"""Settings declared once and read one way by every program: the serving program's environment variables
(serve/settings.py), its request options (serve/options.py), the training program's hyperparameters
(train/hyperparameters.py).

A program declares its settings as fields of a frozen dataclass, each `name: type = setting(default, help, ...)`
with its bounds (`at_least`, `at_most`, `above`, `below`), `choices`, `pattern`, value `aliases` and, for
environment variables, the variable `names`; `specs(cls)` reads them back as `Spec`s, which turn text (or a
JSON value) into a checked value and print the docs' table rows. Adding a setting is adding one field.

One boolean rule: true is 1, true, yes or on; false is 0, false, no or off; any case, spaces around ignored
(`TRUE_WORDS`, `FALSE_WORDS`). A setting whose choices hold `true` and `false` (`auto`/`true`/`false`) takes the
same words for those two. Other words for true exist only as a setting's declared `aliases`.

One wording for a bad value: `{label}{name}={got!r} {problem}` (`SettingError`), e.g.
`SERVE_THREADS=0 must be >= 1`, `hyperparameter mask_time_prob=2.0 must be from 0 to 1`,
`option decoder='wide' must be one of greedy, beam`; unknown names get `unknown_name` (common/suggest.py's
did-you-mean). Each program raises it as its own error type (SettingsError, TrainingError, BadRequest).

Standard library only: the launcher and `train --help` import it without torch or transformers.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .suggest import did_you_mean

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
BOOL_EXPECTED = "true or false (also 1/0, yes/no, on/off)"
_KINDS = {"bool": "bool", "int": "int", "float": "float", "str": "str", "Path": "path", "tuple[str, ...]": "list"}
_TYPE_WORDS = {"bool": "true/false", "int": "integer", "float": "number", "str": "string", "path": "path",
               "list": "list of strings"}


class SettingError(ValueError):
    """A value a setting cannot take. `name` as the user wrote it (SERVE_THREADS, learning_rate), `got` the value
    (as given when it could not be read, else as read), `problem` what was expected (type, bounds, choices)."""

    def __init__(self, name: str, got: Any, problem: str, label: str = ""):
        self.name, self.got, self.problem, self.label = name, got, problem, label
        super().__init__(f"{label}{name}={got!r} {problem}")


def parse_bool(text: Any) -> bool | None:
    """True or False by the one boolean rule, None for any other text (a bool is itself)."""
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


def unknown_name(what: str, name: str, valid: Iterable[str], where: str = "") -> str:
    """'unknown hyperparameter epoch: did you mean epochs?' (or the valid names, or where they are listed)."""
    return f"unknown {what} {name}: {did_you_mean(name, valid, where=where)}"


def setting(default: Any, help: str, *, names: tuple[str, ...] = (), at_least: float | None = None,
            at_most: float | None = None, above: float | None = None, below: float | None = None,
            choices: tuple[str, ...] | None = None, pattern: str | None = None, says: str | None = None,
            aliases: Mapping[str, Any] | None = None, fold_case: bool = False, shown: str | None = None,
            **extra: Any):
    """One setting, as a dataclass field (its type is the field's annotation).

    names: environment variables that set it, first wins (default: the field's name). at_least/at_most: closed
    bounds, above/below: open ones. choices: the values a string may take; fold_case lower-cases it first.
    pattern: a regular expression the whole string must match, `says` what it means in words. aliases: other
    words for a value ({"words": True}). shown: the default as the docs table shows it, when it is computed.
    extra: anything the program keeps beside (serve/options.py's `beam`)."""
    meta = dict(help=help, names=tuple(names), at_least=at_least, at_most=at_most, above=above, below=below,
                choices=tuple(choices) if choices else None, pattern=pattern, says=says,
                aliases=dict(aliases or {}), fold_case=fold_case, shown=shown, extra=dict(extra))
    return field(default=default, metadata={"setting": meta, "help": help})  # "help" also for dataclass readers


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


@dataclass(frozen=True)
class Spec:
    """One declared setting: `kind` is bool, int, float, str, path or list; `optional` when None is allowed."""
    name: str
    kind: str
    optional: bool
    default: Any
    help: str
    names: tuple[str, ...]
    at_least: float | None = None
    at_most: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    says: str | None = None
    aliases: Mapping[str, Any] = field(default_factory=dict)
    fold_case: bool = False
    shown: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    # ---- reading and checking

    def read(self, raw: Any, *, name: str | None = None, label: str = "", whole_floats: bool = False) -> Any:
        """A checked value from text (or an already typed JSON value). name: how the user named it (default the
        first of `names`); label: what it is ('hyperparameter ', 'option '). whole_floats: an int may be written
        as a whole float ('100.0', as hyperparameter tuning sends them). Raises SettingError."""
        name = name or self.names[0]

        def bad(problem: str) -> SettingError:
            return SettingError(name, raw, problem, label)

        if self.kind == "bool":
            if isinstance(raw, str) and raw.strip().lower() in self.aliases:
                return self.aliases[raw.strip().lower()]
            value = parse_bool(raw)
            if value is None:
                raise bad(f"is not a valid bool: expected {BOOL_EXPECTED}")
            return value
        if self.kind == "int":
            if isinstance(raw, bool):
                raise bad("is not a valid int (a whole number)")
            try:
                value = int(raw) if isinstance(raw, int) else int(str(raw).strip())
            except ValueError:
                try:
                    number = float(raw) if whole_floats else math.nan
                except (TypeError, ValueError):
                    number = math.nan
                if not (math.isfinite(number) and number == int(number)):
                    raise bad("is not a valid int (a whole number)") from None
                value = int(number)
            return self.check(value, name=name, label=label)
        if self.kind == "float":
            try:
                value = float(raw) if not isinstance(raw, bool) else math.nan
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise bad("is not a valid float (a finite number)")
            return self.check(value, name=name, label=label)
        if self.kind == "path":
            return Path(str(raw))
        if self.kind == "str" and self.choices:
            text = str(raw).strip()
            text = text.lower() if self.fold_case else text
            if "true" in self.choices and "false" in self.choices and parse_bool(text) is not None:
                text = "true" if parse_bool(text) else "false"
            return self.check(text, name=name, label=label)
        if self.kind == "str":
            return self.check(str(raw), name=name, label=label)
        return raw  # list: the program splits and checks it

    def check(self, value: Any, *, name: str | None = None, label: str = "") -> Any:
        """`value` (already typed) within the declared bounds, choices and pattern; None where allowed."""
        name = name or self.names[0]
        if value is None and (self.optional or self.default is None):
            return value
        if self.kind in ("int", "float"):
            if not math.isfinite(value):
                raise SettingError(name, value, f"is not a valid {self.kind} (a finite number)", label)
            inside = ((self.at_least is None or value >= self.at_least)
                      and (self.at_most is None or value <= self.at_most)
                      and (self.above is None or value > self.above)
                      and (self.below is None or value < self.below))
            if not inside:
                raise SettingError(name, value, f"must be {self.bounds()}", label)
        if self.kind == "str":
            if self.choices and value not in self.choices:
                raise SettingError(name, value, f"must be one of {', '.join(self.choices)}", label)
            if self.pattern and not re.fullmatch(self.pattern, value):
                raise SettingError(name, value[:80], f"is malformed: expected {self.says or self.pattern}", label)
        return value

    def bounds(self) -> str:
        """'>= 1', 'from 0 to 1', '>= 0 and < 1', '' when unbounded."""
        low = (f">= {_number(self.at_least)}" if self.at_least is not None else
               f"> {_number(self.above)}" if self.above is not None else "")
        high = (f"<= {_number(self.at_most)}" if self.at_most is not None else
                f"< {_number(self.below)}" if self.below is not None else "")
        if self.at_least is not None and self.at_most is not None:
            return f"from {_number(self.at_least)} to {_number(self.at_most)}"
        return " and ".join(part for part in (low, high) if part)

    # ---- the docs table

    def type_text(self) -> str:
        if self.choices:
            return " | ".join(f"`{c}`" for c in self.choices)
        text = _TYPE_WORDS[self.kind]
        if self.kind == "bool" and self.aliases:
            text += " (" + ", ".join(f"`{a}`" for a in self.aliases) + ": " + \
                "/".join(sorted({str(v).lower() for v in self.aliases.values()})) + ")"
        bounds = self.bounds() if self.kind in ("int", "float") else ""
        return f"{text} {bounds}" if bounds else text

    def default_text(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return f"`{str(self.default).lower()}`"
        if self.default in ("", ()):
            return "(empty)" if self.default == "" else "none"
        return f"`{self.default}`"


def specs(cls: type) -> dict[str, Spec]:
    """The settings a dataclass declares with `setting`, by field name, in declaration order."""
    out = {}
    for f in dataclasses.fields(cls):
        annotation = str(f.type)
        optional = annotation.endswith(" | None")
        kind = _KINDS[annotation.removesuffix(" | None")]
        meta = dict(f.metadata["setting"])
        meta["names"] = meta["names"] or (f.name,)
        out[f.name] = Spec(name=f.name, kind=kind, optional=optional, default=f.default, **meta)
    return out


def markdown_table(table: Iterable[Spec], first: str = "name") -> str:
    """The docs table of some settings: `first` (the names) | type (with bounds) | default | meaning."""
    def cell(text: str) -> str:
        return re.sub(r"(?<!\\)\|", r"\\|", text)

    rows = [f"| {first} | type | default | meaning |", "| --- | --- | --- | --- |"]
    for s in table:
        names = " or ".join(f"`{n}`" for n in s.names)
        rows.append(f"| {names} | {cell(s.type_text())} | {cell(s.default_text())} | {cell(s.help)} |")
    return "\n".join(rows) + "\n"
