"""`ghosttrack verify`: exit 0 and a one-line summary on a healthy store, exit 2 naming every damaged chunk."""
import zarr
from click.testing import CliRunner

from ghosttrack.cli import main
from ghosttrack.store import format as fmt
from ghosttrack.store.synthetic import write_synthetic_store


def _verify(path):
    return CliRunner().invoke(main, ["verify", "--no-progress", str(path)], catch_exceptions=False)


def test_verify_healthy_and_damaged(tmp_path):
    path = write_synthetic_store(tmp_path / "s", layers=[0, 3], d_model=8, n_tokens=5 * 16 + 3, chunk_tokens=16)
    result = _verify(path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(": healthy") and "6 chunks x 5 arrays" in result.stdout

    g = zarr.open_group(path, mode="r")
    fmt.chunk_file(path, g["layers/3"], 2).unlink()
    f = fmt.chunk_file(path, g["tokens"], 5)
    raw = bytearray(f.read_bytes())
    raw[0] ^= 1
    f.write_bytes(bytes(raw))
    result = _verify(path)
    assert result.exit_code == 2
    assert "  layers/3 chunk 2: is missing" in result.stdout
    assert "  tokens chunk 5: fails its CRC-32C checksum" in result.stdout
    assert result.stderr.strip() == (f"error: store {path} has 2 damaged chunk file(s) in chunk(s) 2, 5; "
                                     "re-extract them with ghosttrack extract ... --resume --repair")


def test_verify_not_a_store(tmp_path):
    result = _verify(tmp_path / "nothing")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: no activation store at {tmp_path / 'nothing'}")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "zarr.json").write_text("{}")
    (tmp_path / "s" / "notes.txt").write_text("x")
    result = _verify(tmp_path / "s")
    assert result.exit_code == 2 and "not a GhostTrack activation store" in result.stderr
