"""Forms generated from what a `Yield` asks for, and submitted form data parsed back.

The description is the JSON schema of the `Yield`'s `input` type — what a durable run stores
with its prompt — or the pydantic type itself (turned into its JSON schema), so one generator
serves both a live suspension and a run read back from the store.

`build_form(schema_or_type)` describes one field per property (nested models become
fieldsets): booleans are checkboxes, enums and literals radio buttons (up to four choices) or a
select, integers and numbers number inputs, date/date-time/time strings their pickers, secrets
password inputs, arrays of choices checkbox groups and other arrays one item per line.
Constraints become HTML attributes, defaults and submitted values fill the inputs, and
pydantic's errors land next to their fields. A field may ask for a widget with
`Field(json_schema_extra={"widget": "textarea" | "password" | "select" | "radio"})` and a
`placeholder`. Choices get labels and descriptions from a `choices` mapping, on the field
(`Field(json_schema_extra={"choices": {"pro": {"label": "Pro", "description": "10 €/month"}}})`)
or on a reusable type (`Annotated[Literal[...], Field(json_schema_extra=...)]`); a value
mapped to a plain string gets that string as its description.

An input that is not an object (`int`, a `Literal`, an Enum...) gets a single field named
`value` and is answered with the bare value.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

FormData = Mapping[str, Sequence[str]]
"""Submitted form data: every field name with all its values."""

Schema = dict[str, Any]

_RADIO_MAX = 4  # up to this many choices render as radio buttons, more as a select
_TEXTAREA_MIN = 200  # strings allowed to be longer than this get a textarea
_FORMATS = {
    "date": "date",
    "date-time": "datetime-local",
    "time": "time",
    "email": "email",
    "uri": "url",
    "password": "password",
}


@dataclass(slots=True)
class Option:
    """One choice of a select, a radio group or a checkbox group; `description` says what
    choosing it means (from the schema's `choices`, see `build_form`)."""

    value: str
    label: str
    selected: bool = False
    description: str = ""


@dataclass(slots=True)
class FormField:
    """One input of a generated form (or a fieldset of inputs when `kind == "fieldset"`).

    `kind` is an HTML input type (`text`, `number`, `checkbox`, `date`, `email`, ...) or one
    of `textarea`, `lines` (a textarea, one item per line), `select`, `radio`, `checkboxes`,
    `fieldset`.
    """

    name: str
    label: str
    kind: str
    required: bool = False
    value: str = ""
    options: list[Option] = field(default_factory=list)
    attrs: dict[str, str] = field(default_factory=dict)
    help: str | None = None
    error: str | None = None
    children: list[FormField] = field(default_factory=list)

    @property
    def id(self) -> str:
        """The HTML id of the input."""
        return "f-" + self.name.replace(".", "-")

    @property
    def checked(self) -> bool:
        """For a checkbox: whether it is ticked."""
        return self.value in ("true", "on", "1", "True")


@dataclass(slots=True)
class Form:
    """A generated form: its `fields`, the `errors` that belong to no single field, and
    whether the answer is a bare value (`scalar`) rather than an object."""

    fields: list[FormField]
    errors: list[str] = field(default_factory=list)
    scalar: bool = False
    title: str | None = None

    @property
    def has_errors(self) -> bool:
        """Whether any field, or the form itself, has an error."""
        return bool(self.errors) or any(_has_error(f) for f in self.fields)


def _has_error(f: FormField) -> bool:
    return f.error is not None or any(_has_error(c) for c in f.children)


@functools.cache
def _adapter(input_type: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(input_type)


def input_schema(input: Any) -> Schema:
    """The JSON schema of `input`: a pydantic-describable type, or already a schema (a dict)."""
    if isinstance(input, dict):
        return input
    schema: Schema = _adapter(input).json_schema()
    return schema


def _humanize(name: str) -> str:
    text = name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


class _Resolver:
    def __init__(self, root: Schema) -> None:
        self.defs: Schema = root.get("$defs", {}) or root.get("definitions", {})

    def resolve(self, schema: Schema) -> tuple[Schema, bool]:
        """Follow `$ref`, `allOf` of one and `anyOf` with null; returns (schema, nullable)."""
        nullable = False
        seen = 0
        while seen < 32:
            seen += 1
            if "$ref" in schema:
                target = self.defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
                rest = {k: v for k, v in schema.items() if k != "$ref"}
                schema = {**{k: v for k, v in target.items() if k != "title"}, **rest}
                continue
            if "allOf" in schema and len(schema["allOf"]) == 1:
                rest = {k: v for k, v in schema.items() if k != "allOf"}
                schema = {**schema["allOf"][0], **rest}
                continue
            options = schema.get("anyOf") or schema.get("oneOf")
            if options:
                real = [o for o in options if o.get("type") != "null"]
                if len(real) < len(options):
                    nullable = True
                if len(real) == 1:
                    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
                    schema = {**real[0], **rest}
                    continue
            break
        return schema, nullable


def _choices(schema: Schema) -> list[Any] | None:
    if "enum" in schema:
        return list(schema["enum"])
    if "const" in schema:
        return [schema["const"]]
    return None


def _choice_texts(*schemas: Schema) -> dict[str, tuple[str | None, str]]:
    """`value -> (label or None, description)` from the `choices` of the first schema that
    has them (the field's own, then its type's)."""
    for schema in schemas:
        choices = schema.get("choices")
        if isinstance(choices, dict):
            texts: dict[str, tuple[str | None, str]] = {}
            for value, text in choices.items():
                if isinstance(text, dict):
                    label = text.get("label")
                    texts[str(value)] = (
                        str(label) if label else None,
                        str(text.get("description") or ""),
                    )
                else:
                    texts[str(value)] = (None, str(text or ""))
            return texts
    return {}


def _option(choice: Any, selected: bool, texts: dict[str, tuple[str | None, str]]) -> Option:
    value = _text(choice)
    label, description = texts.get(value, (None, ""))
    return Option(value, label or value, selected, description)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else ""
    if isinstance(value, list | tuple):
        return "\n".join(_text(v) for v in value)
    return str(value)


def _attrs(schema: Schema, kind: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    if kind == "number":
        if "minimum" in schema:
            attrs["min"] = str(schema["minimum"])
        if "maximum" in schema:
            attrs["max"] = str(schema["maximum"])
        attrs["step"] = str(
            schema.get("multipleOf", "1" if schema.get("type") == "integer" else "any")
        )
    if kind in ("text", "textarea", "password", "email", "url"):
        if "minLength" in schema:
            attrs["minlength"] = str(schema["minLength"])
        if "maxLength" in schema:
            attrs["maxlength"] = str(schema["maxLength"])
    if "placeholder" in schema:
        attrs["placeholder"] = str(schema["placeholder"])
    return attrs


def _field(
    resolver: _Resolver,
    name: str,
    prop: Schema,
    required: bool,
    values: FormData | None,
    errors: Mapping[str, str],
) -> FormField:
    label = str(prop.get("title") or _humanize(name.rsplit(".", 1)[-1]))
    schema, nullable = resolver.resolve(prop)
    required = required and not nullable
    help_text = schema.get("description")
    widget = schema.get("widget")
    error = errors.get(name)
    submitted = None if values is None else values.get(name)
    default = schema.get("default")

    if schema.get("type") == "object" and "properties" in schema:
        children = _fields(resolver, schema, values, errors, prefix=name + ".")
        return FormField(
            name, label, "fieldset", required, help=help_text, error=error, children=children
        )

    if schema.get("type") == "array":
        items, _ = resolver.resolve(schema.get("items", {}))
        choices = _choices(items)
        if choices is not None:
            if submitted is not None:
                chosen = set(submitted)
            elif values is None:
                chosen = {_text(v) for v in default or ()}
            else:
                chosen = set()
            texts = _choice_texts(prop, items)
            options = [_option(c, _text(c) in chosen, texts) for c in choices]
            return FormField(
                name, label, "checkboxes", required, options=options, help=help_text, error=error
            )
        value = "\n".join(submitted) if submitted is not None else _text(default)
        return FormField(
            name,
            label,
            "lines",
            required,
            value=value,
            attrs=_attrs(schema, "textarea"),
            help=help_text,
            error=error,
        )

    choices = _choices(schema)
    if choices is not None:
        current = submitted[0] if submitted else _text(default)
        texts = _choice_texts(prop, schema)
        options = [_option(c, _text(c) == current, texts) for c in choices]
        if widget in ("select", "radio"):
            kind = str(widget)
        else:
            kind = "radio" if len(options) <= _RADIO_MAX else "select"
        return FormField(
            name,
            label,
            kind,
            required,
            value=current,
            options=options,
            help=help_text,
            error=error,
        )

    stype = schema.get("type")
    if stype == "boolean":
        kind = "checkbox"
        if values is not None:
            value = "true" if submitted and submitted[0] not in ("", "false", "off") else ""
        else:
            value = _text(default)
        # An unticked box is an answer ("no"), not a missing one.
        return FormField(name, label, kind, False, value=value, help=help_text, error=error)
    if stype in ("integer", "number"):
        kind = "number"
    elif stype == "string":
        kind = _FORMATS.get(str(schema.get("format", "")), "text")
        if kind == "text" and int(schema.get("maxLength", 0) or 0) > _TEXTAREA_MIN:
            kind = "textarea"
    else:
        kind = "text"
    if widget in ("textarea", "password", "email", "url", "text"):
        kind = str(widget)
    if kind == "password":
        value = ""  # never echo a secret back into the page
    elif submitted:
        value = submitted[0]
    else:
        value = _text(default)
    return FormField(
        name,
        label,
        kind,
        required,
        value=value,
        attrs=_attrs(schema, kind),
        help=help_text,
        error=error,
    )


def _fields(
    resolver: _Resolver,
    schema: Schema,
    values: FormData | None,
    errors: Mapping[str, str],
    prefix: str = "",
) -> list[FormField]:
    required = set(schema.get("required", ()))
    return [
        _field(resolver, prefix + name, prop, name in required, values, errors)
        for name, prop in schema.get("properties", {}).items()
    ]


def _is_object(resolver: _Resolver, schema: Schema) -> bool:
    resolved, _ = resolver.resolve(schema)
    return resolved.get("type") == "object" and "properties" in resolved


def _names(resolver: _Resolver, schema: Schema, prefix: str = "") -> list[str]:
    out: list[str] = []
    resolved, _ = resolver.resolve(schema)
    for name, prop in resolved.get("properties", {}).items():
        out.append(prefix + name)
        if _is_object(resolver, prop):
            out.extend(_names(resolver, prop, prefix + name + "."))
    return out


def _error_map(
    resolver: _Resolver, schema: Schema, scalar: bool, errors: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, str], list[str]]:
    names = {"value"} if scalar else set(_names(resolver, schema))
    by_field: dict[str, str] = {}
    general: list[str] = []
    for err in errors:
        loc = ["value"] if scalar else [str(p) for p in err.get("loc", ())]
        target = next(
            (".".join(loc[:n]) for n in range(len(loc), 0, -1) if ".".join(loc[:n]) in names),
            None,
        )
        msg = str(err.get("msg", "invalid value"))
        if target is None:
            general.append(msg)
        else:
            by_field.setdefault(target, msg)
    return by_field, general


def build_form(
    input: Any,
    values: FormData | None = None,
    errors: Sequence[Mapping[str, Any]] = (),
) -> Form:
    """Describe the form that answers a `Yield(input=...)`.

    `input` is the input type or its JSON schema. `values` are submitted values to show again
    (after an invalid answer); `errors` is pydantic's error list (`InvalidInput.errors`).
    Errors that match no field become form-level errors.
    """
    root = input_schema(input)
    resolver = _Resolver(root)
    scalar = not _is_object(resolver, root)
    by_field, general = _error_map(resolver, root, scalar, errors)
    title = root.get("title")
    if scalar:
        prop = {k: v for k, v in root.items() if k not in ("title", "$defs")}
        fields = [_field(resolver, "value", {"title": "Answer", **prop}, True, values, by_field)]
    else:
        resolved, _ = resolver.resolve(root)
        fields = _fields(resolver, resolved, values, by_field)
    return Form(fields, general, scalar, str(title) if title else None)


def _collect(resolver: _Resolver, schema: Schema, form: FormData, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        value = _value(resolver, prefix + name, prop, name in required, form)
        if value is not _OMIT:
            out[name] = value
    return out


_OMIT: Any = object()


def _value(resolver: _Resolver, name: str, prop: Schema, required: bool, form: FormData) -> Any:
    schema, nullable = resolver.resolve(prop)
    stype = schema.get("type")
    if stype == "object" and "properties" in schema:
        sub = _collect(resolver, schema, form, name + ".")
        return sub if sub or (required and not nullable) else _OMIT
    raw = list(form.get(name, ()))
    if stype == "array":
        items, _ = resolver.resolve(schema.get("items", {}))
        if _choices(items) is not None:
            return raw
        return [line.strip() for text in raw for line in text.splitlines() if line.strip()]
    if stype == "boolean":
        return bool(raw) and raw[0] not in ("", "false", "off", "0")
    # What a browser sends is what was typed, spaces included: a name of spaces is no name,
    # so `min_length` and "required" judge the text without them. Secrets are taken as typed.
    text = raw[0] if raw else None
    if text is not None and not _is_secret(schema):
        text = text.strip()
    if not text:
        if not required:
            return _OMIT  # the model's default applies
        if nullable:
            return None
        return text
    return text


def _is_secret(schema: Schema) -> bool:
    return schema.get("format") == "password" or schema.get("widget") == "password"


def parse_form(input: Any, form: FormData) -> Any:
    """Turn submitted form data into the answer of a `Yield(input=...)`: a dict for an
    object (nested objects from dotted names), the bare value otherwise. Values stay strings
    where the schema says number or date: pydantic converts them when it validates. Text is
    stripped of surrounding whitespace (passwords excepted), so a field left blank or filled
    with spaces counts as empty: optional ones take their default, and `min_length` applies to
    what remains."""
    root = input_schema(input)
    resolver = _Resolver(root)
    if _is_object(resolver, root):
        resolved, _ = resolver.resolve(root)
        return _collect(resolver, resolved, form, "")
    prop = {k: v for k, v in root.items() if k != "$defs"}
    value = _value(resolver, "value", prop, True, form)
    return None if value is _OMIT else value


def validation_errors(input_type: Any, data: Any) -> list[dict[str, Any]]:
    """Pydantic's errors for `data` validated as `input_type` (empty when it is valid)."""
    try:
        _adapter(input_type).validate_python(data)
    except pydantic.ValidationError as err:
        return [dict(e) for e in err.errors(include_url=False)]
    return []
