"""Labels and prompt templates, as users write them. Free of torch, so light processes (an API) can check them.

Every way in (the CLI, serve.yaml, an HTTP request, the Python API) goes through `parse_labels` and
`load_templates`, so a label set or a template accepted in one place is accepted everywhere, and a template that
would fail later in a worker (`"a {x} {}"`, `"{0.__class__}"`) is refused where it enters.
"""

from __future__ import annotations

import os
import re
import stat
import string
from collections.abc import Iterable, Sequence
from importlib import resources

from pictag.data._io import read_file
from pictag.errors import PictagError

UNKNOWN = "unknown"
# Longest label, in characters. CLIP's text encoders read 77 tokens, so a longer label only costs tokenizer time;
# the limit keeps a request's text work proportional to its label count.
MAX_LABEL_CHARS = 1000
BUILTIN_TEMPLATES = ("simple", "imagenet80")
_FORMATTER = string.Formatter()


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of a UTF-8 text file (a byte-order mark dropped, CRLF or LF), or one clear error.

    Args:
        path: The file.
        what: What the file holds, for the message ("labels file").

    Raises:
        PictagError: the file is missing, unreadable, binary, or not UTF-8.
    """
    data = read_file(path, what, pipes=True)  # a device, a named pipe with no writer or a file over 256 MiB: one line
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PictagError(f"{what} {path} is UTF-16: save it as UTF-8")
    if b"\x00" in data:
        raise PictagError(f"{what} {path} is binary (it holds NUL bytes), not text with one entry per line")
    try:
        text = data.decode("utf-8-sig")  # a BOM left in would glue itself to the first entry, hiding a duplicate
    except UnicodeDecodeError as exc:
        raise PictagError(
            f"{what} {path} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}): save it as UTF-8"
        ) from None
    # Only \n and \r end lines: str.splitlines would also split a label at \x0b, \x1c or \u2028.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_once(
    labels: str | Sequence[str] | None, labels_file: str | None, templates: str | Sequence[str]
) -> tuple[str | Sequence[str] | None, str | None, str | Sequence[str]]:
    """(labels, labels_file, templates) with a labels or templates file that is not a regular file (a pipe such as
    `<(printf 'a\\nb\\n')`, /dev/stdin) read now, once, into the labels or templates themselves.

    A pipe gives its content to its first reader only, and its name (/dev/fd/63) means nothing in a resolved config
    or in another process, so the content takes its place. A regular file keeps its name.

    Raises:
        PictagError: the file cannot be read, or holds no valid labels or templates.
    """
    if labels_file is not None and _is_pipe(labels_file):
        labels, labels_file = parse_labels(None, labels_file), None
    if isinstance(templates, str) and templates not in BUILTIN_TEMPLATES and _is_pipe(templates):
        templates = load_templates(templates)
    return labels, labels_file, templates


def _is_pipe(path: str | os.PathLike) -> bool:
    """Whether `path` names something readable only once: anything that exists and is neither a file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing: the readers say so in their own words
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_template(template: object) -> str:
    """A template that `template.format(label)` fills for any label: exactly one `{}` and no other field.

    `{{` and `}}` stand for literal braces, as in `str.format`.

    Raises:
        PictagError: not a string, no `{}`, more than one, or any other replacement field (`{0}`, `{x}`,
            `{!r}`, `{:>9}`), which would fail or reach into the label's attributes in the worker.
    """
    if not isinstance(template, str):
        raise PictagError(f"templates must be strings, got {type(template).__name__} {_short(template)}")
    _check_text(template, "template")
    try:
        fields = [
            (name, spec, conversion) for _, name, spec, conversion in _FORMATTER.parse(template) if name is not None
        ]
    except ValueError as exc:  # an unmatched { or }
        raise PictagError(f"template {_short(template)}: {exc} (write {{{{ and }}}} for literal braces)") from None
    if fields != [("", "", None)]:
        found = ", ".join(_field(*f) for f in fields[:3]) if fields else "none"
        raise PictagError(
            f"template {_short(template)} must hold exactly one {{}} for the label and no other field "
            f"(it has: {found}); write {{{{ and }}}} for literal braces"
        )
    return template


def _field(name: str, spec: str, conversion: str | None) -> str:
    return "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"


def load_templates(name_or_path: str | Sequence[str] = "simple", max_templates: int | None = None) -> list[str]:
    """Prompt templates by name ("simple", "imagenet80"), from a file (one per line, # starts a comment), or a list.

    Args:
        name_or_path: A built-in name, a file, or the templates themselves.
        max_templates: Most templates accepted (None: no limit); checked before any template is.

    Raises:
        PictagError: unknown name, unreadable file, no templates, too many, or a template `check_template` refuses.
    """
    if isinstance(name_or_path, str):
        builtin = resources.files("pictag") / "templates" / f"{name_or_path}.txt"
        if name_or_path in BUILTIN_TEMPLATES:
            lines = builtin.read_text(encoding="utf-8").splitlines()
        elif os.path.exists(name_or_path):
            lines = read_lines(name_or_path, "templates file")
        else:
            raise PictagError(f"templates {name_or_path!r}: not a file, nor one of {', '.join(BUILTIN_TEMPLATES)}")
        templates = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    elif isinstance(name_or_path, Sequence):
        templates = list(name_or_path)
    else:
        raise PictagError(f"templates must be a name, a file or a list of strings, not {type(name_or_path).__name__}")
    if max_templates is not None and len(templates) > max_templates:
        raise PictagError(f"{len(templates)} templates, above the limit of {max_templates}")
    if not templates:
        raise PictagError(f"templates {_short(name_or_path)}: no templates; each needs one {{}} for the label")
    return [check_template(t) for t in templates]


def request_templates(templates: object, max_templates: int | None = None) -> str | list[str]:
    """Templates as a client may name them: a built-in name, or a list of templates; never a file on the server.

    Raises:
        PictagError: any other string, or a list `load_templates` refuses.
    """
    if isinstance(templates, str):
        if templates not in BUILTIN_TEMPLATES:
            raise PictagError(f"unknown templates {_short(templates)}: use {', '.join(BUILTIN_TEMPLATES)}, or a list")
        return templates
    return load_templates(templates, max_templates)


# A comma-separated label: from its first character that is neither a comma nor blank, up to the next comma.
_LABEL = re.compile(r"[^,\s][^,]*")


def parse_labels(
    labels: str | Sequence[str] | None = None,
    labels_file: str | os.PathLike | None = None,
    max_labels: int | None = None,
) -> list[str]:
    """Labels from a comma-separated string, a list, or a file with one label per line (# starts a comment).

    Linear in the input, and the label limit is checked as labels are counted, before any other work.

    Args:
        labels: "cat,dog" or ["cat", "dog"].
        labels_file: A UTF-8 file, one label per line (used instead of `labels`).
        max_labels: Most labels accepted (None: no limit).

    Raises:
        PictagError: no labels, too many, a label too long or not a string, a duplicate, or the reserved "unknown".
    """
    if labels_file is not None:
        raw: Iterable = (line.split("#", 1)[0] for line in read_lines(labels_file, "labels file"))
    elif isinstance(labels, str):
        # One label at a time, the blank ones skipped by the regex engine: a 20 MB "ab,ab,..." split at once was
        # 6.6 million strings before the count stopped at max_labels.
        raw = (match.group() for match in _LABEL.finditer(labels))
    elif labels is None or isinstance(labels, Sequence):
        raw = labels or []
    else:
        raise PictagError(f"labels must be a list or a comma-separated string, not {type(labels).__name__}")
    items: list[str] = []
    for entry in raw:
        if not isinstance(entry, str):
            raise PictagError(f"labels must be strings, got {type(entry).__name__} {_short(entry)}")
        item = entry.strip()
        if not item:
            continue
        if len(item) > MAX_LABEL_CHARS:  # before _check_text, which encodes the label whole
            raise PictagError(f"label {_short(item)} is {len(item):,} characters, above the {MAX_LABEL_CHARS} limit")
        if not item.isascii():
            _check_text(item, "label")
        items.append(item)
        if max_labels is not None and len(items) > max_labels:
            raise PictagError(f"more than {max_labels} labels, above the limit (max_labels)")
    if not items:
        raise PictagError("the label list is empty: pass --labels a,b,c or --labels-file FILE")
    seen: set[str] = set()
    duplicates = [x for x in items if x in seen or seen.add(x)]  # set.add returns None: records x, keeps it out
    if duplicates:
        raise PictagError(f"labels appear more than once: {', '.join(sorted(set(duplicates))[:5])}")
    if UNKNOWN in seen:
        raise PictagError(f"{UNKNOWN!r} is reserved for images below --threshold; rename that label")
    return items


def _check_text(text: str, what: str) -> None:
    # Lone surrogates (from JSON "\udcff" escapes, or undecodable bytes in argv) are no text: they cannot be
    # tokenized, nor written back as UTF-8 in an answer or a results file.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PictagError(f"{what} {_short(text)} is not valid Unicode text (it holds a lone surrogate)") from None


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
