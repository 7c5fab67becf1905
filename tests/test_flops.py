"""Per-level parameters and FLOPs (meta device, FlopCounterMode) against the reference and the paper."""
from __future__ import annotations

import pytest

from fractalgm import FractalConfig, LevelConfig, PixelHeadConfig, get_preset
from fractalgm.evaluate.flops import PAPER_TABLE1_GFLOPS, format_info, level_table, total_params

PARAMS = {
    "fractalar_in64": 442068224,
    "fractalmar_in64": 431995648,
    "fractalmar_base_in256": 186300224,
    "fractalmar_large_in256": 437000064,
    "fractalmar_huge_in256": 849586240,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_params_and_levels(name):
    cfg = get_preset(name)
    assert total_params(cfg) == PARAMS[name]
    rows = level_table(cfg)
    assert sum(r["params"] for r in rows) == PARAMS[name]
    assert all(r["gflops"] > 0 for r in rows)
    assert all(r["gflops_paper"] > 0 for r in rows if r["kind"] != "guide")
    kinds = [r["kind"] for r in rows]
    assert kinds[-1] == "pixel" and kinds.count("guide") == (2 if cfg.guiding_pixel else 0)
    assert [r["rows"] for r in rows if r["kind"] in ("ar", "mar", "pixel")] == \
        ([1, 256, 4096] if cfg.image_size == 64 else [1, 256, 4096, 65536])
    text = format_info(cfg, name)
    assert f"total parameters: {PARAMS[name]}" in text.splitlines()
    assert ("Table1" in text) == (name in PAPER_TABLE1_GFLOPS)


def test_reference_per_level_params():
    # official-param-counts.json: transformer_blocks + embeddings_norms_other (+ class table at level 0)
    rows = {r["name"]: r["params"] for r in level_table(get_preset("fractalmar_large_in256"))}
    assert rows == {"g1": 403079168 + 2109440 + 1025024, "g2": 25219072 + 565760, "g2.guide": 825600,
                    "g3": 3159040 + 140288, "g3.guide": 760064, "g4": 116608}


@pytest.mark.parametrize("name", sorted(PAPER_TABLE1_GFLOPS))
def test_paper_convention_matches_table1(name):
    rows = [r for r in level_table(get_preset(name), name=name) if r["kind"] != "guide"]
    ref = PAPER_TABLE1_GFLOPS[name]
    assert [r["table1"] for r in rows] == list(ref)
    for r, want in zip(rows, ref):
        tol = 0.05 if r["kind"] != "pixel" or name == "fractalmar_in64" else 0.15
        assert r["gflops_paper"] == pytest.approx(want, rel=tol), r["name"]


def test_flops_scale_with_batch_and_analytic_block_count():
    cfg = get_preset("fractalmar_in64")
    one, four = level_table(cfg), level_table(cfg, batch=4)
    for a, b in zip(one, four):
        assert b["rows"] == 4 * a["rows"]
        assert b["gflops"] == pytest.approx(4 * a["gflops"])
    # level 0, paper convention: 32 blocks × (24·L·D² linear + 4·L²·D attention) FLOPs
    L, D, N = 256, 1024, 32
    assert one[0]["gflops_paper"] * 1e9 == pytest.approx(N * (24 * L * D * D + 4 * L * L * D))
    # our forward also runs the 5 condition tokens
    assert one[0]["tokens"] == 261 and one[0]["gflops"] > one[0]["gflops_paper"]


def test_small_grayscale_config():
    cfg = FractalConfig(levels=(LevelConfig(8, 2, 32, 1, 2, "mar"), LevelConfig(2, 1, 32, 1, 2, "ar")),
                        head=PixelHeadConfig(16, 1, 2), channels=1, num_classes=0)
    rows = level_table(cfg)
    assert [r["kind"] for r in rows] == ["mar", "ar", "pixel"]
    assert sum(r["params"] for r in rows) == total_params(cfg)
    assert rows[-1]["rows"] == 64 and rows[-1]["seq_len"] == 1
    assert "Table1" not in format_info(cfg)
