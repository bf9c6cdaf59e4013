"""MediaWiki XML dumps: stream the article pages and strip their wiki markup to prose.

`iter_pages` reads a dump (`.xml` or `.xml.bz2`) with `xml.etree.ElementTree.iterparse`,
clearing every finished page, so memory stays constant however big the dump is. It is
agnostic to the export schema's XML namespace (export-0.10, 0.11, ...), keeps only
main-namespace pages (ns 0) and skips redirects and empty pages.

`strip_markup` turns wikitext into plain prose. It is a hand-written, linear-time
stripper, not a full MediaWiki parser: templates, tables, references, comments, media
and category links and non-prose elements (math, galleries, ...) are dropped; links and
formatting keep their visible text; headings stay as plain lines; boilerplate sections
(References, External links, See also, ...) are dropped with their content.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from ghosttrack.errors import GhostTrackError

STRIPPER_VERSION = 1
"""Bumped whenever `strip_markup` changes its output: it is part of a corpus description,
so a store extracted with an older stripper is not silently resumed with a newer one."""

# Elements whose content is not prose: dropped together with their content.
_DROPPED_ELEMENTS = (
    "ref|references|math|chem|ce|gallery|timeline|score|syntaxhighlight|source|graph|"
    "imagemap|hiero|templatedata|noinclude|mapframe|maplink|inputbox|categorytree"
)
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_ELEMENT_WITH_CONTENT = re.compile(
    rf"<({_DROPPED_ELEMENTS})\b[^>]*?(?<!/)>.*?</\1\s*>", re.S | re.I
)
_SELF_CLOSING = re.compile(rf"<(?:{_DROPPED_ELEMENTS})\b[^>]*/\s*>", re.I)
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}")
# Tables open and close at the start of a line (optionally indented with ':').
_TABLE_TOKEN = re.compile(r"^[ \t:]*\{\||^[ \t]*\|\}", re.M)
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:|mailto:|//)[^\s\]]*(?:[ \t]+([^\]\n]*))?\]", re.I)
_LINK_TOKEN = re.compile(r"\[{2,}|\]{2,}")
_LINE_BREAK_TAG = re.compile(r"<br\s*/?>", re.I)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_BOLD_ITALIC = re.compile(r"'{2,}")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$")
_LIST_MARKER = re.compile(r"^[*#:;]+\s*")
_HAS_WORD = re.compile(r"\w")
_SPACES = re.compile(r"[ \t\u00a0]+")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?)])")
_EMPTY_PARENS = re.compile(r"\(\s*[,;\s]*\)")
_LEADING_PAREN_PUNCT = re.compile(r"\(\s*[,;]\s*")

_DROPPED_LINK_NAMESPACES = frozenset({"file", "image", "media", "category"})
_INTERLANGUAGE_PREFIX = re.compile(r"^[a-z]{2,3}(?:-[a-z]+)*$")
_BOILERPLATE_SECTIONS = frozenset({
    "references", "notes", "footnotes", "citations", "sources", "bibliography",
    "external links", "see also", "further reading", "notes and references",
    "references and notes", "general references", "works cited",
})


class WikiPage(NamedTuple):
    """One main-namespace, non-redirect page of a dump, markup not yet stripped."""

    page_id: int
    title: str
    wikitext: str


def _remove_balanced(text: str, token_re: re.Pattern[str], is_open) -> str:
    """Remove every balanced opener..closer span (nesting allowed) found by `token_re`.

    Unmatched closers and unclosed openers are left as they are (MediaWiki shows them
    literally too); spans closed inside an unclosed opener are still removed.
    """
    spans: list[tuple[int, int]] = []
    stack: list[int] = []
    for m in token_re.finditer(text):
        if is_open(m.group()):
            stack.append(m.start())
        elif stack:
            spans.append((stack.pop(), m.end()))
    if not spans:
        return text
    spans.sort()
    pieces, pos = [], 0
    for start, end in spans:
        if end <= pos:  # nested inside a span already removed
            continue
        pieces.append(text[pos:start])
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)


def _link_text(inner: str) -> str:
    """The visible text of one [[...]] link ('' for media, category and interlanguage links)."""
    target, pipe, label = inner.partition("|")
    target = target.strip()
    prefix = target.split(":", 1)[0].strip().lower() if ":" in target else ""
    if prefix in _DROPPED_LINK_NAMESPACES:  # [[:Category:X]] (leading colon) is a plain link
        return ""
    if pipe:
        if label.strip():
            return label
        # Pipe trick: [[Paris (band)|]] shows "Paris".
        return re.sub(r"\s*\(.*\)$", "", target.split(":", 1)[-1])
    if prefix and _INTERLANGUAGE_PREFIX.match(prefix):
        return ""
    return target.lstrip(":")


def _replace_links(text: str) -> str:
    """Replace every [[...]] link by its visible text, innermost first, so that links inside
    a file caption resolve before the caption itself is dropped.

    Bracket runs are read the way they nest: in "[x]]]" or "[[a]]]]" a run of closers
    closes as many open links as it can and its spare "]" belongs to the innermost text,
    so single brackets inside a link ("Bicyclo[1.1.0]butane") stay plain text.
    Unclosed "[[" keep their text; unmatched "]]" stay as they are.
    """
    levels: list[list[str]] = [[]]  # text pieces of each open link, outermost first
    pos = 0
    for m in _LINK_TOKEN.finditer(text):
        levels[-1].append(text[pos:m.start()])
        pos = m.end()
        run = m.group()
        if run[0] == "[":
            levels[-1].append("[" * (len(run) % 2))
            levels.extend([] for _ in range(len(run) // 2))
            continue
        closes = min(len(run) // 2, len(levels) - 1)
        levels[-1].append("]" * (len(run) - 2 * closes))
        for _ in range(closes):
            inner = "".join(levels.pop())
            levels[-1].append(_link_text(inner))
    levels[-1].append(text[pos:])
    while len(levels) > 1:  # unclosed links: keep their text
        inner = "".join(levels.pop())
        levels[-1].append(inner)
    return "".join(levels[0])


def _strip_inline(wikitext: str) -> str:
    """Everything that is not line-based: comments, elements, templates, tables, links, tags."""
    text = _COMMENT.sub("", wikitext)
    text = _ELEMENT_WITH_CONTENT.sub("", text)
    text = _SELF_CLOSING.sub("", text)
    text = _remove_balanced(text, _TEMPLATE_TOKEN, lambda t: t == "{{")
    text = _remove_balanced(text, _TABLE_TOKEN, lambda t: t.lstrip(" \t:").startswith("{|"))
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = _replace_links(text)
    text = _LINE_BREAK_TAG.sub("\n", text)
    text = _HTML_TAG.sub("", text)
    text = _BOLD_ITALIC.sub("", text)
    return _MAGIC_WORD.sub("", text)


def _clean_line(line: str) -> str:
    """Entities decoded, list markers and stray spacing removed."""
    line = html.unescape(line)
    line = _LIST_MARKER.sub("", line.strip())
    line = _SPACES.sub(" ", line)
    line = _LEADING_PAREN_PUNCT.sub("(", line)
    line = _EMPTY_PARENS.sub("", line)
    line = _SPACE_BEFORE_PUNCT.sub(r"\1", line)
    return _SPACES.sub(" ", line).strip()


def _prose_lines(text: str) -> Iterator[str]:
    """Line pass: headings as plain lines (only those with content under them),
    boilerplate sections dropped, table remnants dropped, blank runs collapsed to one ''."""
    skip_level = 0  # > 0 while inside a dropped section of that heading level
    pending: list[tuple[int, str]] = []  # headings waiting for content
    blank = False
    for raw in text.split("\n"):
        heading = _HEADING.match(raw.strip())
        if heading:
            level, title = len(heading.group(1)), _clean_line(heading.group(2))
            if skip_level and level > skip_level:
                continue
            skip_level = level if title.lower() in _BOILERPLATE_SECTIONS else 0
            pending = [h for h in pending if h[0] < level]
            if not skip_level and title:
                pending.append((level, title))
            continue
        stripped = raw.strip()
        # Table remnants (rows of tables opened by templates) and horizontal rules.
        if skip_level or stripped.startswith(("|", "!")) or stripped.startswith("----"):
            continue
        line = _clean_line(raw)
        if not _HAS_WORD.search(line):  # empty, or punctuation left around dropped math
            blank = True
            continue
        if blank:
            yield ""
        for _, title in pending:
            yield title
        pending, blank = [], False
        yield line


def strip_markup(wikitext: str) -> str:
    """Wikitext -> plain prose: paragraphs on their own lines, one blank line between blocks."""
    lines = list(_prose_lines(_strip_inline(wikitext)))
    if lines and lines[0] == "":
        lines = lines[1:]
    return "\n".join(lines).strip()


def _local(tag: str) -> str:
    """Tag name without its XML namespace: '{http://...export-0.10/}page' -> 'page'."""
    return tag.rsplit("}", 1)[-1]


def _read_page(page: ET.Element, namespace_names: set[str]) -> WikiPage | None:
    """The page if it is a main-namespace article with text, else None."""
    ns, title, page_id, text, redirect = None, "", 0, "", False
    for child in page:
        name = _local(child.tag)
        if name == "ns":
            ns = (child.text or "").strip()
        elif name == "title":
            title = child.text or ""
        elif name == "id":
            page_id = int((child.text or "0").strip() or 0)
        elif name == "redirect":
            redirect = True
        elif name == "revision":  # full-history dumps: the last revision wins
            for sub in child:
                if _local(sub.tag) == "text":
                    text = sub.text or ""
    if ns is None:  # very old schemas have no <ns>: infer it from the title's prefix
        ns = "1" if ":" in title and title.split(":", 1)[0] in namespace_names else "0"
    if ns != "0" or redirect or not text.strip():
        return None
    if text.lstrip()[:9].upper() == "#REDIRECT":
        return None
    return WikiPage(page_id, title, text)


def _open_binary(path: Path):
    return bz2.open(path, "rb") if path.name.lower().endswith(".bz2") else open(path, "rb")


def iter_pages(path: str | Path) -> Iterator[WikiPage]:
    """Stream the article pages of a MediaWiki XML dump (`.xml` or `.xml.bz2`), in dump order."""
    path = Path(path)
    namespace_names: set[str] = set()
    try:
        with _open_binary(path) as f:
            root = None
            for event, elem in ET.iterparse(f, events=("start", "end")):
                if root is None:
                    root = elem
                    if _local(root.tag) != "mediawiki":
                        raise GhostTrackError(
                            f"{path} is XML but not a MediaWiki dump (root <{_local(root.tag)}>);"
                            " pass a *-pages-articles*.xml[.bz2] dump from dumps.wikimedia.org"
                        )
                if event != "end":
                    continue
                name = _local(elem.tag)
                if name == "namespace" and elem.text:
                    namespace_names.add(elem.text.strip())
                elif name == "page":
                    page = _read_page(elem, namespace_names)
                    root.clear()  # drop finished pages: constant memory
                    if page is not None:
                        yield page
    except ET.ParseError as exc:
        raise GhostTrackError(
            f"{path} is not a well-formed MediaWiki XML dump ({exc}); re-download it or pass another --corpus"
        ) from exc
    except (EOFError, OSError) as exc:
        raise GhostTrackError(
            f"cannot read {path} ({exc}); the file is truncated or corrupt: re-download it"
        ) from exc


def iter_dump_texts(path: str | Path) -> Iterator[str]:
    """The prose of every article page of a dump (possibly empty after stripping)."""
    for page in iter_pages(path):
        yield strip_markup(page.wikitext)
