"""Run from the repo root, no folder of ours shadows an installed package: kernels/ and store/ are
top-level folders (the design card's layout) that install as ghosttrack.kernels / ghosttrack.store,
but `python -m` and `python -m pytest` put the root on sys.path, where Python also finds them as
`kernels` and `store`. transformers imports the PyPI package `kernels`."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_from_root(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*args], cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def fake_installed(tmp_path):
    """Stand-ins for the PyPI `kernels` and `store`, installed where the root cannot shadow them."""
    site = tmp_path / "site"
    for name in ("kernels", "store"):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"WHO = 'installed {name}'\n")
        (site / name / "extra.py").write_text("VALUE = 42\n")
    return site


def test_installed_packages_win_over_our_folders_from_the_root(fake_installed):
    # PYTHONPATH comes after the script's folder ('' for -c, the root here) on sys.path.
    code = textwrap.dedent("""
        import kernels, store, kernels.extra
        from ghosttrack.kernels import reference
        from ghosttrack.store import format
        print(kernels.WHO, '|', store.WHO, '|', kernels.extra.VALUE, '|', reference.__name__, format.__name__)
    """)
    run = run_from_root(sys.executable, "-c", code, env={"PYTHONPATH": str(fake_installed)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("|") == ["installed kernels ", " installed store ", " 42 ",
                                     " ghosttrack.kernels.reference ghosttrack.store.format\n"]


def test_without_an_installed_package_the_name_is_missing_not_ours():
    code = ("import importlib, sys\n"
            "try:\n"
            "    module = importlib.import_module(sys.argv[1])\n"
            "except ModuleNotFoundError as e:\n"
            "    print('missing', e.name)\n"
            "else:\n"
            "    print(module.__file__)\n")
    # No PyPI `store` is installed; `kernels` is (transformers needs it), so -S hides site-packages.
    # (store/ hands over through ghosttrack.kernels, which needs the installed ghosttrack: no -S there.)
    for flags, name in (([], "store"), (["-S"], "kernels")):
        run = run_from_root(sys.executable, *flags, "-c", code, name, env={"PYTHONPATH": ""})
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == f"missing {name}", run.stdout


def test_transformers_and_ghosttrack_import_from_the_root():
    code = "import kernels, transformers.activations, ghosttrack.kernels; print(kernels.__file__)"
    run = run_from_root(sys.executable, "-c", code)
    assert run.returncode == 0, run.stderr[-2000:]
    # (A venv inside the checkout, as `make` makes, is under ROOT too: compare with our folder itself.)
    assert not Path(run.stdout.strip()).is_relative_to(ROOT / "kernels"), "the repo's kernels/ was imported as `kernels`"


def test_the_cli_extracts_from_the_root(tiny_gpt2_dir, corpus_file, tmp_path):
    """`python -m ghosttrack.cli extract` loads the model through transformers, which imports `kernels`."""
    run = run_from_root(sys.executable, "-m", "ghosttrack.cli", "extract", "--model", str(tiny_gpt2_dir),
                        "--corpus", str(corpus_file), "--layers", "0", "--tokens", "256", "--seq-len", "32",
                        "--device", "cpu", "--out", str(tmp_path / "store"))
    assert run.returncode == 0, run.stderr[-3000:]


def test_pytest_collects_from_the_root():
    run = run_from_root(sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "tests/sae/test_saelens.py")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
# `accelerate launch -m ghosttrack.cli` from the root: tests/launch.py starts every launch there
# (tests/extract/test_extract_launch.py, tests/train/test_ddp.py).
