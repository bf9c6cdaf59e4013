"""Every GPU tile config of the fused SAE kernels, run by the Triton interpreter on shapes
where every tile shape leaves partial tiles, against the reference: values and every
gradient. (The autotuner runs a single config under the interpreter; `FORCED` makes each
launch use the config under test, as the GPU's autotuner would after picking it.)"""

import os

import pytest
import torch

from ghosttrack.kernels import fused, reference

pytest.importorskip("triton")
if not fused.interpreting():
    pytest.skip("these tests run the kernels through TRITON_INTERPRET=1", allow_module_level=True)

from ghosttrack.kernels import fused_tiles  # noqa: E402  (imports triton)

from fused_sae_cases import TOL, close, make_params, run_both  # noqa: E402

# B = 150, D = 70, H = 300: no tile size divides them; K loops end on partial steps; split-K
# of 4 over H = 300 leaves its last split empty for BLOCK_K = 64.
B, D, H = 150, 70, 300
DTYPES = {"16bit": (torch.bfloat16, torch.float16), "tf32": (torch.float32,), "ieee": (torch.float32,)}


# `make test-full` runs every config; `make test` the first, middle and last of each family (both
# epilogue variants among them), keeping the suite under 10 minutes on 2 cores.
FULL = os.environ.get("GHOSTTRACK_FULL_TESTS") == "1"


def cases(full: bool = True):
    """(family, i): the i-th gemm and splitk configs of the family (cycling the shorter list)."""
    for family in fused_tiles.FAMILIES:
        n = max(len(fused_tiles.family_configs(role, family)) for role in fused_tiles.ROLES)
        yield from ((family, i) for i in (range(n) if full else sorted({0, n // 2, n - 1})))


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(fused_tiles, "POISON", True)


@pytest.mark.parametrize("family,i", list(cases(FULL)), ids=lambda v: str(v))
def test_every_config_matches_reference(family, i, monkeypatch):
    forced = {role: fused_tiles.family_configs(role, family) for role in fused_tiles.ROLES}
    forced = {role: cfgs[i % len(cfgs)] for role, cfgs in forced.items()}
    monkeypatch.setattr(fused_tiles, "FORCED", forced)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest" if family == "ieee" else "high")
    dtypes = DTYPES[family]
    dtype = dtypes[i % len(dtypes)]
    use_threshold = i % 2 == 0  # both epilogue variants in every family
    p = make_params(B, D, H, dtype, use_threshold, seed=100 + i)
    got, want, fp, rp = run_both(p, dtype, l1_coeff=0.3, l0_coeff=0.05, bandwidth=0.1)
    assert fused_tiles.dot_precision(torch.float32) == ("ieee" if family == "ieee" else "tf32")
    desc = {role: cfg.kwargs for role, cfg in forced.items()}
    for field in reference.SAEOutput._fields:
        close(getattr(got, field), getattr(want, field), TOL[dtype], f"{desc} {field}")
    for name in p:
        close(fp[name].grad, rp[name].grad, TOL[dtype], f"{desc} grad {name}")


def test_the_default_sample_covers_every_family_and_both_epilogues():
    sample = list(cases(full=False))
    for family in fused_tiles.FAMILIES:
        assert {i % 2 for f, i in sample if f == family} == {0, 1}, family


def test_cases_cover_every_config():
    seen = {role: set() for role in fused_tiles.ROLES}
    for family, i in cases():
        for role in fused_tiles.ROLES:
            cfgs = fused_tiles.family_configs(role, family)
            seen[role].add(cfgs[i % len(cfgs)])
    for role in fused_tiles.ROLES:
        assert seen[role] == set(fused_tiles.GPU_CONFIGS[role])
    assert {c.kwargs["SPLIT_K"] for c in fused_tiles.GPU_CONFIGS["splitk"]} == {1, 2, 4}


def test_partial_sum_buffers_hold_every_configs_tiles():
    """Buffers are sized before the autotuner picks: from the smallest tile of all configs."""
    for M, N in ((150, 300), (4096, 24576), (1, 1), (33, 7)):
        rows, cols = fused_tiles.max_tiles(M, N)
        for cfg in [c for cs in fused_tiles.GPU_CONFIGS.values() for c in cs] + [
                fused_tiles.triton.Config({"BLOCK_M": fused_tiles.REDUCE_BLOCK_M,
                                           "BLOCK_N": fused_tiles.REDUCE_BLOCK_N})]:
            used = fused_tiles.tiles(M, N, cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"])
            assert used[0] <= rows and used[0] * used[1] <= rows * cols, (cfg, M, N)


def test_pruning_picks_the_family_and_respects_shared_memory():
    cfgs = fused_tiles.GPU_CONFIGS["gemm"]
    bf16, fp32 = torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1)
    assert fused_tiles.prune_configs(cfgs, {"a": bf16}, PRECISION="tf32") == \
        fused_tiles.family_configs("gemm", "16bit")
    assert fused_tiles.prune_configs(cfgs, {"a": fp32}, PRECISION="tf32") == fused_tiles.family_configs("gemm", "tf32")
    assert fused_tiles.prune_configs(cfgs, {"a": fp32}, PRECISION="ieee") == fused_tiles.family_configs("gemm", "ieee")
    small = fused_tiles.fitting_configs(cfgs, "16bit", 2, fused_tiles.SHARED_MEMORY_LIMIT[86])
    assert small and all(fused_tiles.shared_bytes_estimate(c, 2) <= 101376 for c in small)
    assert len(small) < len(fused_tiles.family_configs("gemm", "16bit"))
