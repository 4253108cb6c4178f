"""Property tests (hypothesis) of label and template parsing: any input gives the labels or a `PictagError`, and an
accepted template formats any label.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pictag.errors import PictagError
from pictag.prompts import check_template, parse_labels, read_lines

SETTINGS = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# Text as users type it: any character UTF-8 can carry (no lone surrogates, which are refused elsewhere).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
ANY_TEXT = st.text(max_size=60)  # lone surrogates included
# One label: no separator, comment sign or line break, nothing to strip.
LABEL = TEXT.map(lambda s: "".join(c for c in s if c not in ",#\r\n").strip()).filter(lambda s: s and s != "unknown")
# In a file: no NUL either (a file holding one is binary, and refused as such).
FILE_LABEL = LABEL.filter(lambda s: "\x00" not in s)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


@SETTINGS
@given(labels=st.lists(LABEL, min_size=1, max_size=30, unique=True))
def test_labels_round_trip_as_a_string_and_a_list(labels):
    assert parse_labels(",".join(labels)) == labels
    assert parse_labels(labels) == labels


@SETTINGS
@given(labels=st.lists(FILE_LABEL, min_size=1, max_size=30, unique=True), bom=st.booleans(),
       newline=st.sampled_from(["\n", "\r\n", "\r"]))  # fmt: skip
def test_labels_files_round_trip_whatever_the_bom_and_line_endings(folder, labels, bom, newline):
    path = folder / "labels.txt"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + newline.join(labels).encode())
    assert parse_labels(labels_file=path) == labels


@SETTINGS
@given(value=st.one_of(ANY_TEXT, st.lists(st.one_of(ANY_TEXT, st.integers(), st.none()), max_size=20)),
       max_labels=st.none() | st.integers(1, 10))  # fmt: skip
def test_any_labels_give_labels_or_one_pictag_error(value, max_labels):
    try:
        labels = parse_labels(value, max_labels=max_labels)
    except PictagError as exc:
        assert "\n" not in str(exc)
        return
    assert labels and len(labels) == len(set(labels)) <= (max_labels or len(labels))
    assert all(label == label.strip() and label for label in labels)


@SETTINGS
@given(labels=st.lists(LABEL, min_size=1, max_size=30, unique=True), data=st.data())
def test_a_duplicate_anywhere_is_named(labels, data):
    twice = data.draw(st.sampled_from(labels))
    where = data.draw(st.integers(0, len(labels)))
    with pytest.raises(PictagError, match="more than once") as error:
        parse_labels([*labels[:where], twice, *labels[where:]])
    assert twice in str(error.value)


@SETTINGS
@given(labels=st.lists(LABEL, min_size=1, max_size=40, unique=True), max_labels=st.integers(1, 40))
def test_the_label_limit_holds_exactly(labels, max_labels):
    if len(labels) <= max_labels:
        assert parse_labels(labels, max_labels=max_labels) == labels
    else:
        with pytest.raises(PictagError, match="max_labels"):
            parse_labels(labels, max_labels=max_labels)


@SETTINGS
@given(template=ANY_TEXT, label=TEXT)
def test_a_template_is_refused_or_formats_any_label(template, label):
    try:
        accepted = check_template(template)
    except PictagError as exc:
        assert "\n" not in str(exc)
        return
    assert label in accepted.format(label)


@SETTINGS
@given(before=TEXT, after=TEXT, label=TEXT)
def test_one_field_with_escaped_braces_around_it_is_accepted(before, after, label):
    def escape(s: str) -> str:
        return s.replace("{", "{{").replace("}", "}}")

    template = escape(before) + "{}" + escape(after)
    assert check_template(template).format(label) == before + label + after


@SETTINGS
@given(prefix=TEXT, field=st.text(string.ascii_letters + string.digits + "._[]!:<>^=", min_size=1, max_size=8))
def test_any_field_but_the_empty_one_is_refused(prefix, field):
    escaped = prefix.replace("{", "{{").replace("}", "}}")
    with pytest.raises(PictagError):
        check_template(f"{escaped}{{{field}}} {{}}")
    with pytest.raises(PictagError):
        check_template(f"{escaped}{{{field}}}")


@SETTINGS
@given(lines=st.lists(TEXT.map(lambda s: "".join(c for c in s if c not in "\r\n\x00")), max_size=20),
       bom=st.booleans(), newline=st.sampled_from(["\n", "\r\n"]))  # fmt: skip
def test_read_lines_gives_back_the_lines(folder, lines, bom, newline):
    path = folder / "f.txt"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + newline.join(lines).encode())
    assert read_lines(path, "file") == (lines or [""])


def test_a_colon_with_no_spec_is_no_label_field():
    """`{:}` parses as `{}` does; the property above draws it only now and then, so it is pinned here."""
    with pytest.raises(PictagError, match=r"\(it has: \{:\}\)"):
        check_template("a photo of {:}")
