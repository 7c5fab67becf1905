"""The pure parts of benchmarks/paper_tables.py (its end-to-end run is too long for the suite)."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_tables.py"
spec = importlib.util.spec_from_file_location("paper_tables", SCRIPT)
paper_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paper_tables)


def test_steps_per_level_fits_the_model_depth():
    assert paper_tables.steps_per_level("16,8", 1) == [16]
    assert paper_tables.steps_per_level("16,8", 3) == [16, 8, 8]
    assert paper_tables.steps_per_level(None, 2) is None


def row(name, gflops, bpd, fid):
    return {"name": name, "gflops": gflops, "bpd": bpd, "fid": fid}


def test_levels_verdict_says_whether_the_claim_holds():
    good = [row("ablation_2level_ar", 20, 4.0, 50), row("ablation_3level_ar", 2, 3.8, 40),
            row("ablation_4level_ar", 1, 3.7, 30)]
    assert "claim holds" in paper_tables.levels_verdict(good)[0]
    bad = good[:2] + [row("ablation_4level_ar", 1, 3.9, 30)]
    line = paper_tables.levels_verdict(bad)[0]
    assert "does not fully hold" in line and "not always better in bits/dim" in line


def test_unknown_sections_are_refused():
    with pytest.raises(SystemExit):
        paper_tables.main(["--sections", "levels,tables", "--out", "/nonexistent"])
