"""The job queue, the upload decoder and the host check of `fractalgm serve`, without HTTP."""
from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fractalgm.cli.serve import is_local
from fractalgm.serve.jobs import CANCELLED, DONE, FAILED, Busy, Job, JobQueue
from fractalgm.serve.limits import Limits
from fractalgm.serve.uploads import UploadError, decode_image, decode_mask


def wait_for(predicate, seconds=20.0):
    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def gated_task(gate: threading.Event, frames: int = 3):
    """A task that reports frames, then waits for `gate` while still reporting (so it can be stopped)."""
    def task(job):
        for i in range(frames):
            job.frame(0, torch.full((1, 1, 2, 2), i, dtype=torch.uint8))
        while not gate.wait(0.01):
            job.frame(0, torch.zeros(1, 1, 2, 2, dtype=torch.uint8))
        return {"ok": True}
    return task


@pytest.fixture
def queue():
    q = JobQueue(queue_size=2, workers=1, keep_jobs=3, keep_seconds=600)
    yield q
    q.close()


def test_full_queue_is_busy_and_frees_up(queue):
    gate = threading.Event()
    running = queue.submit(Job("t", gated_task(gate), 60, 1 << 20))
    wait_for(lambda: running.status == "running")
    waiting = [queue.submit(Job("t", gated_task(gate), 60, 1 << 20)) for _ in range(2)]
    with pytest.raises(Busy, match="busy"):
        queue.submit(Job("t", gated_task(gate), 60, 1 << 20))
    assert queue.position(waiting[1]) == 1
    waiting[0].cancel()  # a cancelled waiting job frees its place at once
    assert waiting[0].status == CANCELLED
    queue.submit(Job("t", gated_task(gate), 60, 1 << 20))
    gate.set()
    wait_for(lambda: all(j.status in (DONE, CANCELLED) for j in queue.jobs.values()))
    assert running.status == DONE and running.result == {"ok": True}


def test_closing_the_last_stream_cancels_a_running_job(queue):
    gate = threading.Event()
    job = queue.submit(Job("t", gated_task(gate), 60, 1 << 20))
    job.attach()
    job.attach()
    wait_for(lambda: job.frame_count >= 3)
    job.detach()
    time.sleep(0.05)
    assert job.status == "running"  # one viewer left
    job.detach()
    wait_for(lambda: job.status == CANCELLED)
    assert "closed" in job.message
    gate.set()


def test_time_limit_stops_a_job(queue):
    job = queue.submit(Job("t", gated_task(threading.Event()), 0.2, 1 << 20))
    wait_for(lambda: job.status == FAILED)
    assert "limit of 0.2 s" in job.message


def test_failures_become_messages_and_the_worker_survives(queue):
    def broken(job):
        raise RuntimeError("boom")
    bad = queue.submit(Job("t", broken, 60, 1 << 20))
    wait_for(lambda: bad.status == FAILED)
    assert "RuntimeError: boom" in bad.message
    good = queue.submit(Job("t", lambda job: {"fine": 1}, 60, 1 << 20))
    wait_for(lambda: good.status == DONE)


def test_finished_jobs_are_bounded(queue):
    jobs = []
    for _ in range(8):
        jobs.append(queue.submit(Job("t", lambda job: {}, 60, 1 << 20)))
        wait_for(lambda: jobs[-1].status == DONE)
    queue.submit(Job("t", lambda job: {}, 60, 1 << 20))
    assert len(queue.jobs) <= 4  # keep_jobs finished + the new one
    assert queue.get(jobs[0].id) is None and queue.get(jobs[-1].id) is not None


@pytest.mark.parametrize("frames", [10, 333])
def test_kept_frames_are_bounded_and_ordered(frames):
    job = Job("t", None, 60, max_frame_bytes=64 * 4)
    for i in range(frames):
        job.frame(0, torch.full((1, 1, 2, 2), i))  # the bound counts elements (bytes of uint8 frames)
    assert job.frame_count == frames and len(job.frames) * 4 <= 64 * 4 + 4
    kept = [int(f[0, 0, 0, 0]) for f in job.frames]
    assert kept[0] == 0 and kept == sorted(kept)


def test_job_ids_are_unguessable():
    ids = {Job("t", None, 1, 1).id for _ in range(200)}
    assert len(ids) == 200 and all(len(i) == 16 for i in ids)


# ---------------------------------------------------------------------------- uploads
def png(array: np.ndarray, mode=None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def declared_size_png(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares width × height (a decompression bomb's header)."""
    data = bytearray(png(np.zeros((1, 1), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


LIMITS = Limits(max_image_side=1024, max_image_pixels=512 * 512, max_upload_bytes=1 << 20)


def test_images_are_cropped_and_resized_to_the_model():
    rng = np.random.default_rng(0)
    exact = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    out = decode_image(png(exact), 1, 28, LIMITS)
    assert out.shape == (1, 1, 28, 28) and out.dtype == torch.uint8 and np.array_equal(out[0, 0].numpy(), exact)
    rgb = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    assert decode_image(buffer.getvalue(), 3, 32, LIMITS).shape == (1, 3, 32, 32)
    assert decode_image(png(rgb), 1, 28, LIMITS).shape == (1, 1, 28, 28)


@pytest.mark.parametrize("data, status, message", [
    (b"", 400, "empty"),
    (b"not an image at all", 415, "not a PNG or JPEG"),
    (png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))[:2000], 400, "damaged or truncated"),
    (declared_size_png(100_000, 100_000), 413, "too many pixels"),
    (declared_size_png(5000, 10), 413, "5000×10"),
    (declared_size_png(1000, 1000), 413, "pixels in all"),
])
def test_bad_uploads_say_what_is_wrong(data, status, message):
    with pytest.raises(UploadError, match=message) as e:
        decode_image(data, 1, 28, LIMITS)
    assert e.value.status == status


def test_other_formats_are_refused():
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="BMP")
    with pytest.raises(UploadError, match="BMP") as e:
        decode_image(buffer.getvalue(), 1, 28, LIMITS)
    assert e.value.status == 415


def test_a_real_bomb_is_refused_before_decoding():
    buffer = io.BytesIO()
    Image.new("1", (2000, 2000)).save(buffer, format="PNG")  # 4 M pixels in a few kB
    assert len(buffer.getvalue()) < 20_000
    with pytest.raises(UploadError, match="2000×2000"):
        decode_image(buffer.getvalue(), 1, 28, LIMITS)


def test_masks_follow_the_white_is_generated_convention():
    m = np.zeros((28, 28), np.uint8)
    m[10:20, 5:9] = 255
    known = decode_mask(png(m), 28, LIMITS)
    assert known.shape == (1, 1, 28, 28) and known.dtype == torch.bool
    assert torch.equal(~known[0, 0], torch.from_numpy(m > 0))
    with pytest.raises(UploadError, match="30×30 pixels; this model needs 28×28"):
        decode_mask(png(np.zeros((30, 30), np.uint8)), 28, LIMITS)


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                         ("127.0.0.2", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                         ("example.com", False), ("::", False)])
def test_only_loopback_is_local(host, local):
    assert is_local(host) is local


@pytest.mark.parametrize("field", ["queue_size", "workers", "max_images", "max_seconds"])
def test_limits_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        Limits(**{field: 0})
