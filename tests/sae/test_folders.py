"""The one SAE-folder finder: an SAE folder, or the layer_<i>/ SAE folders of a run in layer order; an
unfinished layer folder (no cfg.json) is refused with the fix, never skipped."""
import pytest

from ghosttrack.errors import GhostTrackError
from ghosttrack.sae.folders import layer_sae_dirs, sae_dirs


def _sae(path):
    path.mkdir(parents=True)
    (path / "cfg.json").write_text("{}")
    return path


def test_one_sae_or_the_layers_of_a_run_in_layer_order(tmp_path):
    assert sae_dirs(_sae(tmp_path / "one")) == [tmp_path / "one"]
    run = tmp_path / "run"
    for layer in (10, 2, 1):
        _sae(run / f"layer_{layer}")
    (run / "layer_notes").mkdir()
    assert sae_dirs(run) == [run / "layer_1", run / "layer_2", run / "layer_10"]
    assert list(layer_sae_dirs(run)) == [1, 2, 10]


def test_an_unfinished_layer_is_refused_and_an_empty_folder_named(tmp_path):
    run = tmp_path / "run"
    _sae(run / "layer_0")
    (run / "layer_1").mkdir()
    with pytest.raises(GhostTrackError, match="layer_1 has no cfg.json: it is not a finished SAE"):
        sae_dirs(run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GhostTrackError, match="holds no SAE"):
        sae_dirs(tmp_path / "empty")
    with pytest.raises(GhostTrackError, match="no SAE folder at"):
        layer_sae_dirs(tmp_path / "missing")
