"""`ghosttrack extract --resume --repair` re-extracts exactly the damaged chunks, and the store comes back
byte for byte as it was written."""
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.store.reader import ActivationStore
from ghosttrack.store import format as fmt


def _args(model_dir, corpus, out, *extra):
    # --batch-size 3 does not divide the 2 sequences per chunk: repaired chunks straddle batches.
    return ["extract", "--model", str(model_dir), "--corpus", str(corpus), "--layers", "0,2", "--tokens", "640",
            "--seq-len", "32", "--batch-size", "3", "--chunk-tokens", "64", "--device", "cpu", "--out", str(out),
            *extra]


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".lock")}


def test_repair_rewrites_the_damaged_chunks_to_the_original_bytes(tiny_gpt2_dir, corpus_file, tmp_path):
    out = tmp_path / "store"
    assert CliRunner().invoke(main, _args(tiny_gpt2_dir, corpus_file, out)).exit_code == 0
    original = _files(out)
    store = ActivationStore.open(out)
    chunk = {name: lambda c, name=name: fmt.chunk_file(out, store._arrays[name], c) for name in store.array_names}
    garbage = chunk["layers/0"](2)
    garbage.write_bytes(bytes(reversed(garbage.read_bytes())))  # same size, other bytes
    chunk["tokens"](5).unlink()  # missing
    short = chunk["layers/2"](9)  # the last chunk
    short.write_bytes(short.read_bytes()[:100])  # truncated

    plain = CliRunner().invoke(main, _args(tiny_gpt2_dir, corpus_file, out, "--repair"))
    assert plain.exit_code == 2 and "pass it together with --resume" in plain.output

    result = CliRunner().invoke(main, _args(tiny_gpt2_dir, corpus_file, out, "--resume", "--repair"))
    assert result.exit_code == 0, result.output
    assert "repairing 3 damaged chunk(s)" in result.output and ": 2, 5, 9" in result.output
    assert "verifies healthy" in result.output
    assert _files(out) == original

    again = CliRunner().invoke(main, _args(tiny_gpt2_dir, corpus_file, out, "--resume", "--repair"))
    assert again.exit_code == 0 and "no damaged chunk to repair" in again.output
    assert _files(out) == original
