"""`--dtype auto`: bf16 where the hardware computes it natively (a GPU that supports it), fp32 on a CPU
without native bf16, and a warning when bf16 is asked for on such a CPU."""
import pytest
import torch

from ghosttrack import precision
from ghosttrack.train.config import TrainerConfig

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ARM_V9 = "processor\t: 0\nFeatures\t: fp asimd sve sve2 bf16 i8mm\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert not precision.cpu_has_native_bf16(AVX2_ONLY)
    assert precision.cpu_has_native_bf16(SAPPHIRE_RAPIDS)
    assert precision.cpu_has_native_bf16(ARM_V9)
    assert not precision.cpu_has_native_bf16("")


@pytest.mark.parametrize("native", [False, True])
def test_auto_on_the_cpu_is_fp32_and_bf16_warns_without_native_support(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    assert precision.resolve_dtype("auto", "cpu") == ("fp32", None)
    dtype, warning = precision.resolve_dtype("bf16", "cpu")
    assert dtype == "bf16"
    assert (warning is None) == native
    if not native:
        assert "no native bf16" in warning and "--dtype fp32" in warning
    assert precision.resolve_dtype("fp16", "cpu") == ("fp16", None)


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_gpu_is_bf16_where_supported(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert precision.resolve_dtype("auto", "cuda") == (expected, None)
    assert precision.resolve_dtype("auto", "cuda:1") == (expected, None)


def test_trainer_config_resolves_auto_once(monkeypatch):
    assert TrainerConfig(device="cpu").dtype == "float32"  # auto is the default
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert TrainerConfig(device="cuda", dtype="auto").dtype == "bfloat16"
    assert TrainerConfig(device="cuda", dtype="fp32").dtype == "float32"
    # A saved config holds the resolved dtype, so a resume compares what was computed.
    assert TrainerConfig.from_dict(TrainerConfig(device="cuda").to_dict()).dtype == "bfloat16"


def test_training_in_bf16_on_a_cpu_without_it_warns(monkeypatch):
    from ghosttrack.train.runtime import make_accelerator

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    with pytest.warns(UserWarning, match="no native bf16.*--dtype fp32 or auto"):
        make_accelerator(TrainerConfig(device="cpu", dtype="bf16"))
