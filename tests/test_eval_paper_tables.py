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


def test_channels_verdict_weighs_each_gap_against_the_noise():
    rows = [{"name": "RGB", "bpd": 4.00, "bpd_stderr": 0.01, "fid": 30.0, "precision": 0.5},
            {"name": "GRB", "bpd": 4.10, "bpd_stderr": 0.01, "fid": 20.0, "precision": 0.0},
            {"name": "BGR", "bpd": 4.01, "bpd_stderr": 0.01, "fid": 40.0, "precision": 0.0}]
    lines = paper_tables.channels_verdict(rows)
    assert len(lines) == 1  # one order's samples reach the real manifold: no warning
    line = lines[0]
    assert line.startswith("* Lowest bits/dim: RGB;")
    assert "0.100 bits/dim below GRB (more than 2 standard errors" in line
    assert "0.010 bits/dim below BGR (less than 2 standard errors" in line
    assert line.endswith("Lowest FID: GRB.")
    unconverged = paper_tables.channels_verdict([{**r, "precision": 0.0} for r in rows])
    assert "precision 0 for every order" in unconverged[1]


def test_unknown_sections_are_refused():
    with pytest.raises(SystemExit):
        paper_tables.main(["--sections", "levels,tables", "--out", "/nonexistent"])


def test_the_header_reports_the_threads_the_models_were_trained_with(tmp_path):
    assert paper_tables.training_threads(tmp_path) == "unrecorded"
    for name, threads in (("a", 2), ("b", 2), ("c", 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "done.json").write_text(f'{{"steps": 1, "torch_threads": {threads}}}')
    assert paper_tables.training_threads(tmp_path) == "1/2"
