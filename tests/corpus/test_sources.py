"""Text sources: local formats, folders, filtering, budgets, errors, HF dispatch (offline)."""

import bz2
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ghosttrack.corpus.sources import (
    HFDatasetCorpus,
    LocalCorpus,
    WikipediaCorpus,
    open_corpus,
)
from ghosttrack.errors import GhostTrackError

ASSETS = Path(os.environ.get("GHOSTTRACK_ASSETS", ".cache/assets"))
LEE = ASSETS / "gensim/test/test_data/lee_background.cor"
WIKI_SAMPLE = ASSETS / "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

DUMP = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><siteinfo/>'
        "<page><title>A</title><ns>0</ns><revision><text>'''A''' is [[letter|a letter]].</text></revision></page>"
        "<page><title>B</title><ns>0</ns><redirect title='A'/><revision><text>#REDIRECT [[A]]</text></revision></page>"
        "</mediawiki>")


def texts(spec, **kw):
    return list(open_corpus(str(spec), **kw).get_texts())


# ---------------------------------------------------------------- local formats

def test_text_file_paragraphs_and_lines(tmp_path):
    paragraphs = tmp_path / "p.txt"
    paragraphs.write_text("\n  first doc\nline two \n\n\n second doc\n\n")
    assert texts(paragraphs, min_chars=0) == ["first doc\nline two", "second doc"]
    lines = tmp_path / "l.cor"
    lines.write_text("one\ntwo\n\nthree\n".replace("\n\n", "\n") + "   \n")  # trailing blank: still line mode
    assert texts(lines, min_chars=0) == ["one", "two", "three"]
    crlf = tmp_path / "README"  # no extension, CRLF line endings, UTF-8 BOM
    crlf.write_bytes("\ufeffa\r\n\r\nb\u00e9\r\n".encode())
    assert texts(crlf, min_chars=0) == ["a", "b\u00e9"]


def test_folder_recursive_sorted_hidden_skipped(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("from b/z")
    (tmp_path / "a-c.text").write_text("from a-c")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "y.jsonl").write_text(json.dumps({"text": "from a/y"}) + "\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden.txt").write_text("hidden")
    (tmp_path / "c.xml").write_text(DUMP)
    assert texts(tmp_path, min_chars=0) == ["from a/y", "from a-c", "from b/z", "A is a letter."]
    desc = open_corpus(str(tmp_path), min_chars=0).describe()
    assert desc["formats"] == ["jsonl", "mediawiki", "text"] and desc["files"] == 4
    assert desc["text_field"] == "text" and desc["stripper_version"] >= 1


def test_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "alpha", "body": "x"}, {"text": None, "body": "y"}, {"text": "beta", "body": "z"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert texts(path, min_chars=0) == ["alpha", "beta"]
    assert texts(path, min_chars=0, text_field="body") == ["x", "y", "z"]
    with pytest.raises(GhostTrackError, match="line 1 .* no field 'content'; pass --text-field"):
        texts(path, text_field="content")
    path.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(GhostTrackError, match="line 2 .* not valid JSON"):
        texts(path, min_chars=0)
    path.write_text('{"text": 3}\n')
    with pytest.raises(GhostTrackError, match="is int, not text"):
        texts(path, min_chars=0)


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    n = 2500  # more than one record batch
    pq.write_table(pa.table({"text": [f"doc {i}" if i % 7 else None for i in range(n)],
                             "n": list(range(n))}), path, row_group_size=1000)
    got = texts(path, min_chars=0)
    assert got == [f"doc {i}" for i in range(n) if i % 7]
    with pytest.raises(GhostTrackError, match="no column 'body' .*columns: text, n"):
        texts(path, text_field="body")
    with pytest.raises(GhostTrackError, match="not text"):
        texts(path, text_field="n")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(GhostTrackError, match="not a readable parquet file"):
        texts(bad)


def test_mediawiki_dump_names(tmp_path):
    """Wikimedia names dump parts '...articles1.xml-p10p30302.bz2': recognised by content."""
    for name in ("w.xml", "w.xml.bz2", "enwiki-pages-articles1.xml-p1p2.bz2"):
        path = tmp_path / name
        path.write_bytes(bz2.compress(DUMP.encode()) if name.endswith(".bz2") else DUMP.encode())
        assert texts(path, min_chars=0) == ["A is a letter."]
    for name, content in [("notes.bz2", bz2.compress(b"plain text")), ("feed.xml", b"<rss><page/></rss>")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(GhostTrackError, match="unsupported corpus file"):
            open_corpus(str(tmp_path / name))


# ---------------------------------------------------------------- errors on bad files

@pytest.mark.parametrize("name, content, message", [
    ("nul.txt", b"text\x00more", "NUL byte"),
    ("latin1", "caf\u00e9 au lait".encode("latin-1"), "not a UTF-8 text file"),
    ("image.png", b"\x89PNG\r\n", "unsupported corpus file"),
    ("data.csv", b"a,b\n1,2\n", "unsupported corpus file"),
])
def test_binary_or_unsupported_file_refused(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(GhostTrackError, match=message):
        open_corpus(str(tmp_path / name))
    with pytest.raises(GhostTrackError, match=message):  # inside a folder too, up front
        LocalCorpus(tmp_path)


def test_bad_utf8_after_the_sniffed_head(tmp_path):
    path = tmp_path / "late.txt"
    path.write_bytes(b"x" * 70_000 + b"\n\xff\xfe\n")
    source = open_corpus(str(path), min_chars=0)
    with pytest.raises(GhostTrackError, match="not UTF-8 text .*convert it to UTF-8"):
        list(source.get_texts())


def test_no_document_after_filtering(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("tiny\nsmall\n")
    with pytest.raises(GhostTrackError, match="no document of at least 200 characters; lower --min-chars"):
        texts(path)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(GhostTrackError, match="lower --min-chars"):
        texts(empty, min_chars=0)
    (tmp_path / "sub").mkdir()
    with pytest.raises(GhostTrackError, match="holds no corpus file"):
        open_corpus(str(tmp_path / "sub"))


# ---------------------------------------------------------------- filtering, budgets, batches

@pytest.fixture()
def lines_file(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(f"  document number {i:03d} " + "x" * (i % 5) for i in range(40)))
    return path


def test_filter_strip_and_min_chars(lines_file):
    got = texts(lines_file, min_chars=22)
    assert got == [f"document number {i:03d} " + "x" * (i % 5) for i in range(40) if i % 5 >= 2]


def test_max_texts_max_tokens_and_reiteration(lines_file):
    source = open_corpus(str(lines_file), min_chars=0)
    assert list(source.get_texts(max_texts=3)) == list(source.get_texts())[:3]
    assert list(source.get_texts(max_texts=0)) == []
    assert list(source.get_texts()) == list(source.get_texts())  # each call restarts, same order
    # Each document is 20-24 chars = 5-6 estimated tokens; stop once 30 are spent.
    budget = open_corpus(str(lines_file), min_chars=0, max_tokens=30)
    docs = list(budget.get_texts())
    estimates = [-(-len(d) // 4) for d in docs]
    assert sum(estimates[:-1]) < 30 <= sum(estimates)
    assert budget.describe()["max_tokens"] == 30


def test_get_text_batches(lines_file):
    source = open_corpus(str(lines_file), min_chars=0)
    batches = list(source.get_text_batches(7))
    assert [len(b) for b in batches] == [7] * 5 + [5]
    assert sum(batches, []) == list(source.get_texts())
    assert len(list(source.get_text_batches(7, max_batches=2))) == 2
    with pytest.raises(GhostTrackError):
        list(source.get_text_batches(0))


def test_describe_is_json_and_tracks_content(lines_file):
    first = open_corpus(str(lines_file)).describe()
    assert json.loads(json.dumps(first)) == first == open_corpus(str(lines_file)).describe()
    assert first["source"] == "local" and first["path"] == str(lines_file.resolve())
    lines_file.write_text(lines_file.read_text() + "\none more line")
    assert open_corpus(str(lines_file)).describe()["bytes"] != first["bytes"]


# ---------------------------------------------------------------- dispatch and the hub

def test_open_corpus_dispatch(tmp_path):
    wiki = open_corpus("wikipedia", wiki_language="fr", wiki_date="20220301", min_chars=50)
    assert isinstance(wiki, WikipediaCorpus)
    assert wiki.describe() == {"source": "huggingface", "dataset": "wikimedia/wikipedia", "config": "20220301.fr",
                               "split": "train", "text_field": "text", "min_chars": 50, "max_tokens": None}
    hub = open_corpus("roneneldan/TinyStories:default", text_field="story")
    assert isinstance(hub, HFDatasetCorpus) and (hub.dataset, hub.config, hub.text_field) == (
        "roneneldan/TinyStories", "default", "story")
    assert open_corpus("owner/name").config is None
    with pytest.raises(GhostTrackError, match="no such file or folder"):
        open_corpus(str(tmp_path / "missing" / "wiki.xml.bz2"))
    with pytest.raises(GhostTrackError, match="no such file or folder"):
        open_corpus("not a corpus")
    with pytest.raises(GhostTrackError, match="min_chars must be >= 0"):
        open_corpus("wikipedia", min_chars=-1)


def test_wikipedia_defaults():
    wiki = WikipediaCorpus()
    assert (wiki.dataset, wiki.config, wiki.max_tokens, wiki.min_chars) == (
        "wikimedia/wikipedia", "20231101.en", 100_000_000, 200)


def test_hub_unreachable_offline_is_a_clear_error():
    # conftest sets HF_HUB_OFFLINE=1: the hub is never contacted.
    with pytest.raises(GhostTrackError, match="cannot open HF dataset 'wikimedia/wikipedia:20231101.en'.*--corpus"):
        WikipediaCorpus().load()
    with pytest.raises(GhostTrackError, match="pass a local file or folder with --corpus"):
        list(open_corpus("someone/missing-dataset").get_texts())


def test_hub_stream_is_filtered(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config, *, split, streaming, cache_dir):
        calls.append((name, config, split, streaming, cache_dir))
        return [{"text": "  long enough document  ", "id": 1}, {"text": "short", "id": 2},
                {"text": None, "id": 3}, {"text": "another long document", "id": 4}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    wiki = WikipediaCorpus(language="de", min_chars=10, cache_dir="/tmp/c").load()
    assert list(wiki.get_texts()) == ["long enough document", "another long document"]
    assert calls == [("wikimedia/wikipedia", "20231101.de", "train", True, "/tmp/c")]
    with pytest.raises(GhostTrackError, match="no field 'body' .*fields: text, id.*--text-field"):
        list(open_corpus("o/n", text_field="body").get_texts())


# ---------------------------------------------------------------- real assets

def test_lee_background_one_document_per_line():
    if not LEE.exists():
        pytest.skip(f"offline asset missing: {LEE} (run `make assets`)")
    docs = texts(LEE, min_chars=0)
    assert len(docs) == 300
    assert docs[0].startswith("Hundreds of people have been forced to vacate their homes")
    assert len(texts(LEE)) == sum(len(d) >= 200 for d in docs)


def test_wikipedia_dump_sample_as_corpus():
    if not WIKI_SAMPLE.exists():
        pytest.skip(f"offline asset missing: {WIKI_SAMPLE} (run `make assets`)")
    source = open_corpus(str(WIKI_SAMPLE))
    first = list(source.get_texts(max_texts=3))
    assert first[0].startswith("Anarchism is a political philosophy")
    assert all(len(d) >= 200 for d in first)
    assert source.describe()["formats"] == ["mediawiki"]
