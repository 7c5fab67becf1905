"""Animations of the generation process: frames, GIF writing, and the CLI's --animate / inpaint."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import build, gen, tiny_config
from PIL import Image

from fractalgm import masks
from fractalgm.viz.animate import MAX_FPS, Recorder, save_animation
from fractalgm.cli import main

HAS_FFMPEG = importlib.util.find_spec("imageio_ffmpeg") is not None


def gif_frames(path) -> list[tuple[np.ndarray, int]]:
    out = []
    with Image.open(path) as im:
        for i in range(im.n_frames):
            im.seek(i)
            out.append((np.array(im.convert("L")), im.info["duration"]))
    return out


def distinct(frames):
    return 1 + sum(not torch.equal(a, b) for a, b in zip(frames, frames[1:]))


def test_gif_has_one_frame_per_distinct_step(tmp_path):
    model = build(tiny_config(("mar", "mar"), channels=1))
    rec = Recorder()
    out = model.sample(num_images=4, generator=gen(0), record=rec)
    assert len(rec) == 1 + 16 * (4 + 1)  # start + 16 level-0 steps, each after its 4 level-1 steps
    frames = rec.frames()
    info = save_animation(frames, tmp_path / "a.gif", fps=10, nrow=2, scale=3)
    written = gif_frames(tmp_path / "a.gif")
    # a level-0 step ends on the frame its last level-1 step drew: merged, so 1 + 16·4 frames
    assert info["frames"] == len(written) == distinct(frames) == 1 + 16 * 4
    assert written[0][0].shape == (3 * (2 + 2 * 10), 3 * (2 + 2 * 10))  # 2×2 grid of 8 px + padding, ×3
    assert [d for _, d in written[:-1]] == [100] * (len(written) - 1) and written[-1][1] == 100 + 1500
    last = written[-1][0][3 * 2:3 * 10:3, 3 * 2:3 * 10:3]  # the first image of the grid, downscaled
    assert np.array_equal(last, out[0, 0].numpy())
    assert (written[0][0][6:30, 6:30] == 128).all()  # unknown pixels in neutral grey


def test_long_generations_are_shortened_to_about_the_requested_length(tmp_path):
    frames = [torch.full((1, 1, 4, 4), i % 256, dtype=torch.uint8) for i in range(2000)]
    info = save_animation(frames, tmp_path / "long.gif", seconds=10, scale=1)
    assert info["fps"] == MAX_FPS and info["frames"] == len(gif_frames(tmp_path / "long.gif")) == 500
    assert gif_frames(tmp_path / "long.gif")[-1][0][2, 2] == 1999 % 256  # the last frame is kept
    info = save_animation(frames[:100], tmp_path / "short.gif", seconds=10, scale=1)
    assert info["fps"] == 10 and info["frames"] == 100


def test_animation_formats(tmp_path):
    frames = [torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.ones(1, 3, 4, 4, dtype=torch.uint8)]
    with pytest.raises(ValueError, match=".gif or .mp4"):
        save_animation(frames, tmp_path / "a.png")
    with pytest.raises(ValueError, match="no frames"):
        save_animation([], tmp_path / "a.gif")
    if HAS_FFMPEG:
        save_animation(frames, tmp_path / "a.mp4", fps=5)
        assert (tmp_path / "a.mp4").stat().st_size > 0
    else:
        with pytest.raises(ValueError, match="imageio-ffmpeg"):
            save_animation(frames, tmp_path / "a.mp4")


# ---------------------------------------------------------------------------- command line
def test_cli_sample_animate(tmp_path, capsys):
    main(["sample", "--preset", "fractalmar_fmnist", "--labels", "3", "--per-label", "2", "--num-iter", "2,2",
          "--out", str(tmp_path / "s.png"), "--animate", str(tmp_path / "s.gif"), "--fps", "4"])
    assert "5 frames at 4 fps" in capsys.readouterr().out
    written = gif_frames(tmp_path / "s.gif")
    assert len(written) == 1 + 2 * 2  # start, then 2 level-0 steps of 2 level-1 steps (each 2nd frame merged)
    assert written[0][0].shape == (4 * (2 + 2 * 30), 4 * 32)  # as the PNG: one column per label, ×4
    with pytest.raises(SystemExit):
        main(["sample", "--preset", "fractalmar_fmnist", "--out", str(tmp_path / "x.png"),
              "--animate", str(tmp_path / "x.avi")])
    assert not (tmp_path / "x.png").exists()  # refused before sampling


def test_cli_inpaint_writes_strips(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / name)
    masks.to_png(masks.box(28, 4, 6, 10, 12), tmp_path / "mask.png")
    main(["inpaint", "--preset", "fractalmar_fmnist", "--image", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
          "--mask", str(tmp_path / "mask.png"), "--label", "2", "--num-samples", "3", "--num-iter", "3,2",
          "--scale", "1", "--out", str(tmp_path / "strip.png"), "--animate", str(tmp_path / "strip.gif")])
    assert "2 strip(s)" in capsys.readouterr().out
    strip = np.array(Image.open(tmp_path / "strip.png").convert("L"))
    assert strip.shape == (2 + 2 * 30, 2 + 5 * 30)  # 2 rows: original | masked | 3 completions
    original = np.array(Image.open(tmp_path / "a.png"))
    assert np.array_equal(strip[2:30, 2:30], original)
    masked = strip[2:30, 32:60]
    assert (masked[4:14, 6:18] == 128).all() and np.array_equal(masked[14:], original[14:])
    for k in range(3):  # every completion keeps the known pixels
        done = strip[2:30, 62 + 30 * k:90 + 30 * k]
        assert np.array_equal(done[14:], original[14:]) and np.array_equal(done[:, :6], original[:, :6])
    assert Image.open(tmp_path / "strip.gif").n_frames > 1
    main(["inpaint", "--preset", "fractalmar_fmnist", "--image", str(tmp_path / "a.png"), "--half", "left",
          "--num-samples", "1", "--num-iter", "2,2", "--out", str(tmp_path / "half.png")])
    with pytest.raises(SystemExit):
        main(["inpaint", "--preset", "fractalmar_fmnist", "--image", str(tmp_path / "a.png"), "--box", "1,2,3",
              "--out", str(tmp_path / "bad.png")])
