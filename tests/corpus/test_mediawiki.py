"""MediaWiki dumps: markup stripping construct by construct, streaming page selection, errors, memory."""

import bz2
import os
import tracemalloc
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from ghosttrack.errors import GhostTrackError
from ghosttrack.corpus.mediawiki import iter_dump_texts, iter_pages, strip_markup

ASSETS = Path(os.environ.get("GHOSTTRACK_ASSETS", ".cache/assets"))
WIKI_SAMPLE = ASSETS / "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


# ---------------------------------------------------------------- strip_markup

@pytest.mark.parametrize("wikitext, expected", [
    ("A {{cite web|url=x|title={{lang|fr|y}}}} B.", "A B."),
    ("A{{outer|{{inner|{{deepest}}}}}}B", "AB"),
    ("Before\n{| class=wikitable\n|-\n| cell {{x}} || cell\n{|\n| nested\n|}\n|}\nAfter", "Before\n\nAfter"),
    ("Fact.<ref>Smith, {{cite book|t=T}} p. 3</ref> Next.<ref name=\"a\" /> End.", "Fact. Next. End."),
    ("Fact.<ref name=x/> End.<REF group=n>note</REF>", "Fact. End."),
    ("Text<!-- hidden [[Link]] {{t}} -->more", "Textmore"),
    ("[[File:X.jpg|thumb|A [[cat]] on [[Mat|a mat]] [above]]]Cats purr.", "Cats purr."),
    ("[[Image:Y.png|left|100px]]Dogs bark.[[Category:Dogs]]", "Dogs bark."),
    ("The [[political philosophy|philosophy]] of [[Laozi]]s.", "The philosophy of Laozis."),
    ("See [[Mad Max: Fury Road]] and [[:Category:Films]].", "See Mad Max: Fury Road and Category:Films."),
    ("A [[Paris (band)|]] gig.", "A Paris gig."),
    ("Text.\n[[de:Anarchismus]]\n[[fr:Anarchisme]]", "Text."),
    ("Read [http://example.org/a the article] or [http://example.org/b].", "Read the article or."),
    ("'''Bold''' and ''italic'' and '''''both''''' rock 'n' roll.", "Bold and italic and both rock 'n' roll."),
    ("Intro.\n\n== History ==\nOld.\n=== Early ===\nEarlier.", "Intro.\n\nHistory\nOld.\nEarly\nEarlier."),
    ("Body.\n== See also ==\n* [[Other]]\n=== Sub ===\nx\n== References ==\n{{reflist}}\n== Later ==\nKept.",
     "Body.\nLater\nKept."),
    ("Body.\n== Empty ==\n{{only a template}}\n== Full ==\nText.", "Body.\n\nFull\nText."),
    ("Items:\n* one\n** two\n# three\n: indented\n; term : def", "Items:\none\ntwo\nthree\nindented\nterm: def"),
    ("H<sub>2</sub>O is <span style=\"x\">water</span>.<br />Next line", "H2O is water.\nNext line"),
    ("Area <math>\\pi r^2</math> here.", "Area here."),
    ("A&nbsp;B &amp; C &ndash; D &lt;tag&gt;", "A B & C – D <tag>"),
    ("__NOTOC__Text.\n----\nMore.", "Text.\nMore."),
    ("Born (born {{birth date|1900|1|1}}) and ({{lang|fr|x}}; {{IPA|y}}).", "Born (born) and."),
    ("Stray }} and unclosed {{tmpl keep this", "Stray }} and unclosed {{tmpl keep this"),
    ("{{Infobox\n| name = X\n| born = {{date|1}}\n}}\n'''X''' was a poet.", "X was a poet."),
])
def test_strip_markup_constructs(wikitext, expected):
    assert strip_markup(wikitext) == expected


def test_strip_markup_links_with_brackets_inside():
    text = "[[File:C4.png|thumb|Bicyclo[1.1.0]butane and [[isobutane]].]]Alkanes [[n-butane|''n''-butane]]."
    assert strip_markup(text) == "Alkanes n-butane."
    assert strip_markup("[[File:x.png|A [[b]]]]Text [[c]]] [[[d]]").strip() == "Text c] [d"


def test_strip_markup_table_remnants_and_blank_runs():
    text = "{{table start}}\n|-\n| a || b\n! header\n|}\nProse one.\n\n\n\nProse two."
    assert strip_markup(text) == "Prose one.\n\nProse two."


# ---------------------------------------------------------------- dump reading

def _page(title, ns, text, *, redirect=False, extra_revisions=()):
    revisions = "".join(f"<revision><id>1</id><text>{escape(t)}</text></revision>" for t in extra_revisions)
    redirect_el = f'<redirect title="{escape(text)}" />' if redirect else ""
    return (f"<page><title>{escape(title)}</title><ns>{ns}</ns><id>7</id>{redirect_el}{revisions}"
            f"<revision><id>2</id><text xml:space=\"preserve\">{escape(text)}</text></revision></page>")


def write_dump(path: Path, pages: list[str], xmlns='xmlns="http://www.mediawiki.org/xml/export-0.11/"'):
    body = (f'<mediawiki {xmlns} version="0.11" xml:lang="en"><siteinfo><sitename>W</sitename>'
            '<namespaces><namespace key="0" /><namespace key="4">Wikipedia</namespace></namespaces>'
            f'</siteinfo>{"".join(pages)}</mediawiki>').encode()
    if path.name.endswith(".bz2"):
        path.write_bytes(bz2.compress(body))
    else:
        path.write_bytes(body)
    return path


PAGES = [
    _page("Alpha", 0, "'''Alpha''' is the [[first letter|first]] letter.{{stub}}"),
    _page("Redirected", 0, "Alpha", redirect=True),
    _page("Old redirect", 0, "#REDIRECT [[Alpha]]"),
    _page("Wikipedia:About", 4, "Project page text."),
    _page("Empty", 0, "   "),
    _page("Beta", 0, "Beta is second.", extra_revisions=["An older revision."]),
]


@pytest.mark.parametrize("name", ["dump.xml", "dump.xml.bz2"])
@pytest.mark.parametrize("xmlns", ['xmlns="http://www.mediawiki.org/xml/export-0.11/"',
                                   'xmlns="http://www.mediawiki.org/xml/export-0.10/"', ""])
def test_iter_pages_selects_articles(tmp_path, name, xmlns):
    dump = write_dump(tmp_path / name, PAGES, xmlns)
    pages = list(iter_pages(dump))
    assert [p.title for p in pages] == ["Alpha", "Beta"]
    assert pages[1].wikitext == "Beta is second."  # the last revision wins
    assert list(iter_dump_texts(dump)) == ["Alpha is the first letter.", "Beta is second."]


def test_iter_pages_without_ns_element_uses_title_prefix(tmp_path):
    pages = ["<page><title>Wikipedia:About</title><revision><text>p</text></revision></page>",
             "<page><title>Gamma: A Story</title><revision><text>g</text></revision></page>"]
    dump = write_dump(tmp_path / "old.xml", pages)
    assert [p.title for p in iter_pages(dump)] == ["Gamma: A Story"]


def test_iter_pages_errors(tmp_path):
    other = tmp_path / "other.xml"
    other.write_text("<rss><page/></rss>")
    with pytest.raises(GhostTrackError, match="not a MediaWiki dump"):
        list(iter_pages(other))
    broken = tmp_path / "broken.xml"
    broken.write_text("<mediawiki><page><title>x</title></mediawiki>")
    with pytest.raises(GhostTrackError, match="not a well-formed"):
        list(iter_pages(broken))
    good = write_dump(tmp_path / "good.xml.bz2", PAGES * 50)
    truncated = tmp_path / "truncated.xml.bz2"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(GhostTrackError, match="truncated or corrupt"):
        list(iter_pages(truncated))


def test_iter_pages_memory_is_constant(tmp_path):
    """Peak memory while streaming stays far below the dump's size: finished pages are freed."""
    text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40  # ~2.3 kB per page
    dump = write_dump(tmp_path / "big.xml", [_page(f"P{i}", 0, text) for i in range(3000)])
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_pages(dump))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 3000
    assert dump.stat().st_size > 6_000_000
    assert peak < 1_500_000, f"peak {peak} bytes while streaming a {dump.stat().st_size} byte dump"


# ---------------------------------------------------------------- the real dump sample

@pytest.fixture(scope="module")
def sample_texts():
    if not WIKI_SAMPLE.exists():
        pytest.skip(f"offline asset missing: {WIKI_SAMPLE} (run `make assets`)")
    return {page.title: strip_markup(page.wikitext) for page in iter_pages(WIKI_SAMPLE)}


def test_real_dump_yields_the_articles(sample_texts):
    # 206 pages: 100 redirects and 1 project page (ns 4) are skipped.
    assert len(sample_texts) == 105 + 1
    assert "Wikipedia:Sandbox" not in sample_texts
    assert sample_texts["Anarchism"].startswith(
        "Anarchism is a political philosophy that advocates self-governed societies based on voluntary institutions."
    )


def test_real_dump_output_is_prose(sample_texts):
    for title, text in sample_texts.items():
        for residue in ("{{", "}}", "[[", "]]", "{|", "<ref", "</", "thumb|", "&nbsp;", "&amp;", "'''"):
            assert residue not in text, (title, residue)
        lines = text.split("\n")
        assert "References" not in lines and "External links" not in lines, title
        letters = sum(ch.isalpha() or ch.isspace() for ch in text)
        assert letters / len(text) > 0.85, title
