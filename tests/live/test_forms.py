"""Forms generated from a `Yield`'s input (type or stored JSON schema) and parsed back."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Literal

import pydantic
import pytest
from markupsafe import Markup
from pydantic import BaseModel, Field, SecretStr

from bridges.live import Form, FormField, build_form, parse_form
from bridges.live._app import make_templates
from bridges.live._forms import validation_errors


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"
    CYAN = "cyan"
    PINK = "pink"


class Address(BaseModel):
    street: str
    zip: str = Field(min_length=5, max_length=5)


class Signup(BaseModel):
    name: str = Field(description="As on your passport", min_length=1, max_length=40)
    age: int = Field(ge=18, le=120)
    ratio: float = 0.5
    agree: bool = False
    size: Literal["S", "M", "L"] = "M"
    color: Color
    extra: Color | None = None
    tags: list[Color] = []
    notes: list[str] = []
    born: dt.date | None = None
    password: SecretStr
    bio: str = Field(default="", json_schema_extra={"widget": "textarea", "placeholder": "…"})
    address: Address


def by_name(form: Form) -> dict[str, FormField]:
    out = {}
    for f in form.fields:
        out[f.name] = f
        for c in f.children:
            out[c.name] = c
    return out


def test_field_kinds_follow_the_annotations() -> None:
    """Each annotation maps to the HTML input that fits it."""
    fields = by_name(build_form(Signup))
    kinds = {name: f.kind for name, f in fields.items()}
    assert kinds == {
        "name": "text",
        "age": "number",
        "ratio": "number",
        "agree": "checkbox",
        "size": "radio",
        "color": "select",
        "extra": "select",
        "tags": "checkboxes",
        "notes": "lines",
        "born": "date",
        "password": "password",
        "bio": "textarea",
        "address": "fieldset",
        "address.street": "text",
        "address.zip": "text",
    }


def test_required_defaults_labels_and_constraints() -> None:
    """Required fields, defaults, labels, help and constraints come from the model."""
    f = by_name(build_form(Signup))
    assert f["name"].required
    assert f["name"].label == "Name"
    assert f["name"].help == "As on your passport"
    assert f["name"].attrs == {"minlength": "1", "maxlength": "40"}
    assert f["age"].attrs == {"min": "18", "max": "120", "step": "1"}
    assert f["ratio"].attrs["step"] == "any"
    assert f["ratio"].value == "0.5"
    assert not f["extra"].required
    assert not f["agree"].required
    assert f["size"].value == "M"
    assert [o.value for o in f["size"].options] == ["S", "M", "L"]
    assert f["bio"].attrs["placeholder"] == "…"
    assert f["address.zip"].required


def test_schema_and_type_give_the_same_form() -> None:
    """The stored JSON schema (what a durable run keeps) gives the form the type gives."""
    schema = pydantic.TypeAdapter(Signup).json_schema()
    assert build_form(schema) == build_form(Signup)


def test_parse_turns_form_data_into_the_answer() -> None:
    """Checkboxes, choices, lines, nested names and empty optionals become the answer."""
    data = parse_form(
        Signup,
        {
            "name": ["Ada"],
            "age": ["36"],
            "color": ["red"],
            "tags": ["red", "blue"],
            "notes": ["a\n\n b \n"],
            "born": [""],
            "password": ["pw"],
            "address.street": ["Main St"],
            "address.zip": ["12345"],
        },
    )
    assert data == {
        "name": "Ada",
        "age": "36",
        "agree": False,
        "color": "red",
        "tags": ["red", "blue"],
        "notes": ["a", "b"],
        "password": "pw",
        "address": {"street": "Main St", "zip": "12345"},
    }
    model = Signup.model_validate(data)
    assert model.age == 36
    assert model.tags == [Color.RED, Color.BLUE]
    assert model.born is None


def test_errors_land_next_to_their_fields_and_values_stay() -> None:
    """pydantic's errors attach to the fields they name; submitted values are shown again."""
    form_data = {"name": ["<b>x</b>"], "age": ["12"], "color": ["red"], "address.zip": ["1"]}
    errors = validation_errors(Signup, parse_form(Signup, form_data))
    form = build_form(Signup, form_data, errors)
    f = by_name(form)
    assert "greater than or equal to 18" in (f["age"].error or "")
    assert f["age"].value == "12"
    assert f["name"].value == "<b>x</b>"
    assert f["name"].error is None
    assert f["address.zip"].error
    assert f["password"].error
    assert form.has_errors


def test_secrets_are_never_shown_again() -> None:
    """A submitted password is not echoed back into the re-rendered form."""
    form = build_form(Signup, {"password": ["hunter2"]}, [])
    assert by_name(form)["password"].value == ""


def test_error_without_a_field_is_a_form_error() -> None:
    """An error whose location names no field is shown for the whole form."""
    form = build_form(Signup, {}, [{"loc": ("nowhere",), "msg": "bad combination"}])
    assert form.errors == ["bad combination"]


@pytest.mark.parametrize(
    ("input_type", "raw", "expected", "kind"),
    [
        (int, "5", 5, "number"),
        (Literal["a", "b"], "b", "b", "radio"),
        (Color, "pink", Color.PINK, "select"),
        (bool, "true", True, "checkbox"),
    ],
)
def test_scalar_input_is_a_single_value_field(
    input_type: object, raw: str, expected: object, kind: str
) -> None:
    """A non-model input is one field named `value`, answered with the bare value."""
    form = build_form(input_type)
    assert form.scalar
    assert [(f.name, f.kind) for f in form.fields] == [("value", kind)]
    answer = parse_form(input_type, {"value": [raw]})
    assert pydantic.TypeAdapter(input_type).validate_python(answer) == expected


def test_scalar_errors_attach_to_the_value_field() -> None:
    """A bare value's validation error shows on its single field."""
    errors = validation_errors(int, "x")
    form = build_form(int, {"value": ["x"]}, errors)
    assert form.fields[0].error
    assert form.errors == []


def test_rendered_form_escapes_values_and_marks_errors() -> None:
    """The default template escapes user text and wires errors for assistive technology."""
    form_data = {"name": ['"><script>alert(1)</script>'], "age": ["3"]}
    errors = validation_errors(Signup, parse_form(Signup, form_data))
    form = build_form(Signup, form_data, errors)
    env = make_templates()
    macro = env.get_template("live/form.html").module.render_field
    html = "".join(str(macro(f)) for f in form.fields)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html
    assert 'id="f-age-err" role="alert"' in html
    assert 'aria-invalid="true"' in html
    assert 'aria-describedby="f-age-err"' in html
    assert isinstance(macro(form.fields[0]), Markup | str)


def test_text_is_stripped_so_blank_answers_fail_min_length() -> None:
    """A name of spaces is no name: text is stripped before validation (so `min_length`
    refuses it and a blank optional field takes its default); secrets are kept as typed."""
    data = parse_form(
        Signup,
        {
            "name": ["   "],
            "age": [" 36 "],
            "color": ["red"],
            "bio": ["  \n "],
            "password": [" pw "],
            "address.street": ["  Main St \t"],
            "address.zip": ["12345"],
        },
    )
    assert data["name"] == ""
    assert data["age"] == "36"
    assert "bio" not in data
    assert data["password"] == " pw "
    assert data["address"]["street"] == "Main St"
    errors = validation_errors(Signup, data)
    assert [(e["loc"], e["type"]) for e in errors] == [(("name",), "string_too_short")]
    assert parse_form(str, {"value": ["  x "]}) == "x"
