"""When the fused path can run, the error when it cannot, and triton staying optional."""

import os
import subprocess
import sys

import pytest
import torch

from ghosttrack.kernels import fused


def test_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not fused.is_available()
    with pytest.raises(RuntimeError, match="--fused needs a CUDA GPU with Triton, or TRITON_INTERPRET=1"):
        fused.require_available()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fused.sae_forward(torch.randn(2, 16), torch.randn(16, 16), torch.randn(16), torch.randn(16, 16),
                          torch.randn(16), l1_coeff=0.1)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert fused.is_available() == (fused.importlib.util.find_spec("triton") is not None)


def test_needs_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(fused.importlib.util, "find_spec", lambda name: None)
    assert not fused.is_available()


def test_importing_the_kernels_does_not_import_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import sys, ghosttrack.kernels, ghosttrack.kernels.fused, ghosttrack.kernels.topk; "
            "assert 'triton' not in sys.modules, 'triton imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
