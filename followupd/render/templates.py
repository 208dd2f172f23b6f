"""Templates: the practice's own Jinja2 code, rendered in the sandbox.

A template's first line is `Subject: ...` (drafts) or `Title: ...` (reminders); the rest is
the body. Patient details are reachable only as `client.*`, and `client` is in the context
only for a draft with a release on file, so a template that uses it is known to need one, and
a reminder can never show one.

Templates are code the practice writes: they run in Jinja2's sandbox, and an error in one is
reported by template, line and a name written in the template, never by a value from the data.
"""

from __future__ import annotations

import functools
import os
import traceback
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import missing

from followupd.config import Rule, Settings
from followupd.render.errors import RenderError
from followupd.resources import default_templates_dir

PATIENT_ROOT = "client"


def long_date(value: date | datetime | None) -> str:
    if value is None:
        return "[date]"
    return f"{value:%B} {value.day}, {value.year}"


class UndefinedValue(jinja2.UndefinedError):
    """A value a template asked for is missing.

    Jinja's own message names the missing key, and a key may be data: in
    `focus_names[client.focus]` it is the client's treatment focus. So the message here is
    generic, and the key travels as an attribute for `Templates` to name only if the
    template itself wrote it.
    """

    def __init__(self, message: str | None = None, *, name: Any = None, top_level: bool = False):
        super().__init__("a value the template uses is missing")
        self.name = name if isinstance(name, str) else None
        self.top_level = top_level  # a variable (`{{ x }}`), not an attribute or a key


class MissingValue(jinja2.StrictUndefined):
    """StrictUndefined whose error carries the missing name instead of quoting it.

    Other errors an undefined stands for (the sandbox's SecurityError) are kept as they are.
    """

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: Any = None,
        exc: type[jinja2.TemplateRuntimeError] = jinja2.UndefinedError,
    ) -> None:
        if exc is jinja2.UndefinedError:
            exc = functools.partial(UndefinedValue, name=name, top_level=obj is missing)
        super().__init__(hint, obj, name, exc)


@dataclass(frozen=True)
class Written:
    """What a template (with everything it includes) spells out in its own source: the only
    names an error message may repeat, since anything else came from the data."""

    templates: frozenset[str]  # itself and the templates it includes, imports or extends
    variables: frozenset[str]  # {{ name }}
    # {{ x.attr }} and {{ x["key"] }}. Not every string constant: in
    # `{"cbt": "CBT"}[client.focus]`, a focus of "CBT" is missing, and naming it would name
    # the client's focus.
    keys: frozenset[str]
    patient: bool  # refers to `client`


class Templates:
    """The home's templates/ over the shipped defaults, sandboxed and strict about undefined
    variables."""

    def __init__(self, home_templates: Path | None = None):
        paths = [str(p) for p in (home_templates, default_templates_dir()) if p and p.is_dir()]
        self.env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(paths),
            undefined=MissingValue,
            autoescape=False,  # plain-text mail and calendar text, not HTML
            keep_trailing_newline=False,
            trim_blocks=False,
        )
        self.env.filters["longdate"] = long_date
        self._written: dict[str, Written] = {}

    def written(self, name: str) -> Written:
        """What `name` and the templates it refers to write in their source (cached)."""
        if name not in self._written:
            self._written[name] = self._collect(name)
        return self._written[name]

    def _collect(self, root: str) -> Written:
        """Walk `root` and what it refers to. A missing or broken one raises: `problems`
        reports it at start-up."""
        templates, variables, keys, patient = set(), set(), set(), False
        pending = [root]
        while pending:
            name = pending.pop()
            if name in templates:
                continue
            templates.add(name)
            tree = self.env.parse(self.env.loader.get_source(self.env, name)[0])
            patient = patient or PATIENT_ROOT in jinja2.meta.find_undeclared_variables(tree)
            variables.update(node.name for node in tree.find_all(jinja2.nodes.Name))
            keys.update(node.attr for node in tree.find_all(jinja2.nodes.Getattr))
            keys.update(
                node.arg.value
                for node in tree.find_all(jinja2.nodes.Getitem)
                if isinstance(node.arg, jinja2.nodes.Const) and isinstance(node.arg.value, str)
            )
            pending.extend(child for child in jinja2.meta.find_referenced_templates(tree) if child)
        return Written(frozenset(templates), frozenset(variables), frozenset(keys), patient)

    def uses_patient_fields(self, name: str) -> bool:
        """Does the template (or anything it includes) refer to `client`?"""
        return self.written(name).patient

    def problems(self, rules: list[Rule]) -> list[str]:
        """What is wrong with the templates the rules use (for `check` and start-up)."""
        out = []
        for rule in rules:
            try:
                self.env.get_template(rule.template)
                patient = self.uses_patient_fields(rule.template)
            except jinja2.TemplateNotFound as exc:
                out.append(
                    f"rules: {rule.name}: template {exc.name} not found "
                    f"(in {', '.join(self.env.loader.searchpath)})"
                )
                continue
            except jinja2.TemplateSyntaxError as exc:
                out.append(f"{exc.filename or rule.template}:{exc.lineno}: {exc.message}")
                continue
            if patient and rule.make == "reminder":
                out.append(
                    f"rules: {rule.name}: reminder template {rule.template} uses "
                    f"client fields; calendar reminders may not carry patient details"
                )
            elif patient and rule.digest:
                out.append(
                    f"rules: {rule.name}: digest template {rule.template} uses client "
                    f"fields; a digest carries refs and physician names only"
                )
        return out

    def render_text(self, name: str, context: dict[str, Any]) -> tuple[str, str]:
        """(first-line value, body) of a rendered template.

        Errors name the template, the line and at most a name the template wrote; never the
        text of the exception, which may quote a value (Jinja's "'dict object' has no
        attribute ..." names the key it was given, and that key may be a client's data).
        """
        try:
            text = self.env.get_template(name).render(context)
        except jinja2.TemplateNotFound as exc:
            raise RenderError(f"template {self._shown(name, exc.name)} not found") from None
        except jinja2.TemplateSyntaxError as exc:
            where = f"{self._shown(name, exc.name or name)}:{exc.lineno}"
            raise RenderError(f"template {where}: {exc.message}") from None
        except SecurityError as exc:
            raise RenderError(
                f"template {self._where(exc, name)}: the template tried an unsafe operation"
            ) from None
        except UndefinedValue as exc:
            raise RenderError(
                f"template {self._where(exc, name)}: {self._missing(exc, name)}"
            ) from None
        # TypeError, ZeroDivisionError...: their text may quote data, so only the type is named
        except Exception as exc:  # noqa: BLE001 -- any template error fails one follow-up
            raise RenderError(f"template {self._where(exc, name)}: {type(exc).__name__}") from None
        first, _, body = text.lstrip("\n").partition("\n")
        return first, body.strip("\n") + "\n"

    def _known(self, root: str) -> Written:
        """What `root` writes, for an error message; nothing if that cannot be read (an
        included template missing or broken): then nothing is named."""
        try:
            return self.written(root)
        except Exception:  # noqa: BLE001 -- unreadable: then nothing is named
            return Written(frozenset({root}), frozenset(), frozenset(), False)

    def _shown(self, root: str, template: str | None) -> str:
        """A template's name if `root` names it in its source; else it came from the data."""
        if template == root or template in self._known(root).templates:
            return template
        return "(a template named by the data)"

    def _missing(self, exc: UndefinedValue, root: str) -> str:
        written = self._known(root)
        if exc.name is None:
            return "a value the template uses is undefined"
        if exc.top_level and exc.name in written.variables:
            return f"{exc.name!r} is undefined"
        if not exc.top_level and exc.name in written.keys:
            return f"no attribute or key {exc.name!r}"
        return "a key or attribute taken from the data is missing"

    def _where(self, exc: BaseException, root: str) -> str:
        """template:line of the innermost template frame (Jinja rewrites the traceback so
        template code shows as its file and line); the root's name if none is found."""
        known = self._known(root).templates
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            template = self._template_of(frame.filename)
            if template in known:
                return f"{template}:{frame.lineno}"
        return root

    def _template_of(self, filename: str | None) -> str | None:
        """The template name of a file under one of the loader's folders."""
        path = Path(os.path.normpath(os.path.abspath(filename or "")))
        for folder in self.env.loader.searchpath:
            try:
                return path.relative_to(os.path.normpath(os.path.abspath(folder))).as_posix()
            except ValueError:
                continue
        return None


@dataclass(frozen=True)
class Rendering:
    """One follow-up to render: its rule (and so its template), what the template may use,
    and the identity the result carries (follow-up id, installation, the therapist's own
    settings)."""

    templates: Templates
    rule: Rule
    context: dict[str, Any]
    follow_up_id: int
    settings: Settings
    installation: str
