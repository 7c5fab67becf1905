"""The HTTP API of `fractalgm serve` through the ASGI test client, with a real (tiny, untrained) model."""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve,serve-test]'")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note that httpx will be replaced by httpx2
    from fastapi.testclient import TestClient

from fractalgm import create_model
from fractalgm.data import load_dataset
from fractalgm.serve import Limits, create_app

STEPS = [6, 4]  # few MAR steps per level keep these tests fast


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("serve") / "tiny"
    create_model("tiny_fmnist").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def client(tiny_folder):
    app = create_app([str(tiny_folder)], Limits(max_images=12, max_seeds=3, max_upload_bytes=200_000,
                                                queue_size=4, max_steps=32), device="cpu")
    with TestClient(app) as c:
        yield c


def events(client, job) -> list[tuple[str, dict]]:
    """All server-sent events of a job, in order: (name, data)."""
    out, name = [], None
    with client.stream("GET", job["events"]) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


def run(client, path="/api/generate", **body) -> tuple[dict, list]:
    r = client.post(path, json={"model": "tiny", "num_iter": STEPS, **body})
    assert r.status_code == 202, r.text
    job = r.json()
    return job, events(client, job)


def png_array(content: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(content)))


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def grid_cells(grid: np.ndarray, count: int, nrow: int, by_column: bool, size: int = 28, pad: int = 2):
    """Cut a `make_grid` PNG back into its images."""
    cells = []
    for i in range(count):
        r, c = (i % nrow, i // nrow) if by_column else (i // nrow, i % nrow)
        y, x = pad + r * (size + pad), pad + c * (size + pad)
        cells.append(grid[y:y + size, x:x + size])
    return np.stack(cells)


def test_page_assets_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/editor.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
        assert asset in page.text or asset == "/static/editor.js"
    # offline: nothing the page loads comes from another host
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert client.get("/docs").status_code == 404  # FastAPI's /docs page loads its scripts from a CDN
    spec = client.get("/openapi.json").json()
    for path in ("/api/models", "/api/generate", "/api/inpaint", "/api/jobs/{job_id}/events",
                 "/api/jobs/{job_id}/result.png", "/api/jobs/{job_id}/animation.gif"):
        assert path in spec["paths"]


def test_models_list_the_whitelist(client):
    body = client.get("/api/models").json()
    (m,) = body["models"]
    assert m["name"] == "tiny" and m["image_size"] == 28 and m["channels"] == 1 and m["num_classes"] == 10
    assert [lv["tokens"] for lv in m["levels"]] == [49, 16] and m["class_names"][9] == "Ankle boot"
    assert body["limits"]["max_images"] == 12


def test_generation_streams_frames_then_the_result(client):
    job, evs = run(client, num_images=3, label=2, seed=5)
    names = [n for n, _ in evs]
    assert names[-1] == "done" and names.count("frame") >= 2 and "frame" in names[:-2]
    frames = [d for n, d in evs if n == "frame"]
    assert [f["n"] for f in frames] == sorted(f["n"] for f in frames)  # in order, live
    assert frames[-1]["level"] == "result" and any(f["level"] in (0, 1) for f in frames)
    result = evs[-1][1]["result"]
    assert result["images"] == 3 and result["label"] == 2 and result["conditional"]
    assert len(result["bpd"]) == 3 and all(0 < b < 9 for b in result["bpd"]) and "estimate" in result["likelihood"]
    final = client.get(f"/api/jobs/{job['id']}/result.png")
    assert final.status_code == 200 and final.headers["content-type"] == "image/png"
    import base64
    last = png_array(base64.b64decode(frames[-1]["png"]))
    assert np.array_equal(last, png_array(final.content))  # the last frame streamed is the result
    assert png_array(client.get(f"/api/jobs/{job['id']}/result.png?scale=3").content).shape == \
        tuple(3 * s for s in last.shape)
    gif = client.get(f"/api/jobs/{job['id']}/animation.gif")
    assert gif.status_code == 200 and gif.content[:6] == b"GIF89a"
    assert Image.open(io.BytesIO(gif.content)).n_frames > 2


def test_same_seed_same_images_and_each_seed_column_stands_alone(client):
    one = [run(client, num_images=2, seed=s)[0]["id"] for s in (7, 8)]
    grid, _ = run(client, num_images=2, seed=7, seeds=2)
    again = run(client, num_images=2, seed=7)[0]["id"]
    singles = [png_array(client.get(f"/api/jobs/{i}/result.png").content) for i in one]
    assert np.array_equal(singles[0], png_array(client.get(f"/api/jobs/{again}/result.png").content))
    both = png_array(client.get(f"/api/jobs/{grid['id']}/result.png").content)
    columns = grid_cells(both, 4, nrow=2, by_column=True)
    for s, single in enumerate(singles):
        assert np.array_equal(columns[2 * s:2 * s + 2], grid_cells(single, 2, nrow=2, by_column=False))
    assert not np.array_equal(columns[:2], columns[2:])


def test_inpainting_keeps_known_pixels(client):
    test = load_dataset("fashion_mnist", "test")
    mask = np.zeros((28, 28), np.uint8)
    mask[5:15, 8:20] = 255  # white = generate
    params = {"model": "tiny", "source": "testset", "index": 3, "num_images": 2, "seeds": 2, "label": 1,
              "num_iter": STEPS}
    r = client.post("/api/inpaint", data={"params": json.dumps(params)}, files={"mask": ("m.png", png(mask))})
    assert r.status_code == 202, r.text
    evs = events(client, r.json())
    result = evs[-1][1]["result"]
    assert evs[-1][0] == "done" and result["known_unchanged"] and result["known_pixels"] == 784 - 120
    out = grid_cells(png_array(client.get(f"/api/jobs/{r.json()['id']}/result.png").content), 4, 2, True)
    original = test.images[3, 0].numpy()
    keep = mask == 0
    assert all(np.array_equal(o[keep], original[keep]) for o in out)
    assert any(not np.array_equal(o[~keep], original[~keep]) for o in out)
    mask_back = png_array(client.get(f"/api/jobs/{r.json()['id']}/mask.png").content)
    assert np.array_equal(mask_back, mask)


@pytest.mark.parametrize("preset, pixels, generated", [("half_bottom", 0, 14 * 28), ("outpaint", 4, 784 - 400),
                                                       ("uncrop", 10, 784 - 100)])
def test_preset_masks_and_uploaded_images(client, preset, pixels, generated):
    picture = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    params = {"model": "tiny", "source": "upload", "preset": preset, "preset_pixels": pixels, "num_iter": STEPS}
    r = client.post("/api/inpaint", data={"params": json.dumps(params)}, files={"image": ("p.png", png(picture))})
    assert r.status_code == 202, r.text
    name, data = events(client, r.json())[-1]
    assert name == "done" and data["result"]["known_unchanged"]
    assert data["result"]["known_pixels"] == 784 - generated
    out = png_array(client.get(f"/api/jobs/{r.json()['id']}/result.png").content)[2:30, 2:30]
    known = png_array(client.get(f"/api/jobs/{r.json()['id']}/mask.png").content) == 0
    assert np.array_equal(out[known], picture[known])


NAN_BODY = '{"model": "tiny", "cfg": NaN, "label": 1}'


@pytest.mark.parametrize("body, status, message", [
    ({"model": "nope"}, 404, "unknown model 'nope'; this server offers: tiny"),
    ({"model": "tiny", "label": 10}, 400, "label 10 is not a class"),
    ({"model": "tiny", "label": -1}, 422, "label"),
    ({"model": "tiny", "cfg": 2.0}, 400, "needs a label"),
    ({"model": "tiny", "temperature": 0}, 422, "temperature"),
    ({"model": "tiny", "temperature": -1.5}, 422, "temperature"),
    ({"model": "tiny", "num_images": -2}, 422, "num_images"),
    ({"model": "tiny", "num_images": 13}, 413, "the limit is 12"),
    ({"model": "tiny", "num_images": 5, "seeds": 3}, 413, "15 images"),
    ({"model": "tiny", "seeds": 4}, 413, "4 seeds"),
    ({"model": "tiny", "num_iter": [4]}, 400, "one entry per level (2)"),
    ({"model": "tiny", "num_iter": [50, 4]}, 400, "level 0 takes 1 to 32 steps"),
    ({"model": "tiny", "num_iter": [0, 4]}, 400, "level 0 takes 1 to"),
    ({"model": "tiny", "steps": 4}, 422, "steps"),
    ({"model": "tiny", "cfg_schedule": "cosine"}, 422, "cfg_schedule"),
    ({"model": "tiny", "seed": "abc"}, 422, "seed"),
    (NAN_BODY, 422, "cfg"),
    ('{"model": "tiny", "temperature": Infinity}', 422, "temperature"),
    ("{not json", 422, ""),
])
def test_bad_parameters_get_a_clear_4xx(client, body, status, message):
    if isinstance(body, str):
        r = client.post("/api/generate", content=body, headers={"content-type": "application/json"})
    else:
        r = client.post("/api/generate", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and message in detail and "Traceback" not in detail


def inpaint(client, params, **files):
    base = {"model": "tiny", "source": "upload", "preset": "half_left"}
    return client.post("/api/inpaint", data={"params": json.dumps({**base, **params})},
                       files={k: (f"{k}.png", v) for k, v in files.items()})


@pytest.mark.parametrize("params, files, status, message", [
    ({}, {}, 400, "no image file"),
    ({}, {"image": b"GIF89a nonsense"}, 415, "not a PNG or JPEG"),
    ({}, {"image": b""}, 400, "empty"),
    ({}, {"image": b"\x89PNG\r\n\x1a\n" + b"\0" * 100}, 415, "not a PNG or JPEG"),
    ({"preset": None}, {"image": png(np.zeros((28, 28), np.uint8))}, 400, "choose a preset mask"),
    ({"preset": None}, {"image": png(np.zeros((28, 28), np.uint8)), "mask": png(np.zeros((28, 28), np.uint8))},
     400, "keeps every pixel"),
    ({}, {"image": png(np.zeros((28, 28), np.uint8)), "mask": png(np.zeros((27, 28), np.uint8))}, 400,
     "the mask is 28×27 pixels; this model needs 28×28"),
    ({}, {"image": png(np.zeros((28, 28), np.uint8)), "mask": b"junk"}, 415, "mask is not a PNG"),
    ({"source": "testset"}, {}, 400, "choose a test-set image"),
    ({"source": "testset", "index": 10_000}, {}, 400, "outside the test set (0–9999)"),
    ({"source": "testset", "index": -1}, {}, 422, "index"),
    ({"preset": "everything"}, {"image": png(np.zeros((28, 28), np.uint8))}, 422, "preset"),
    ({"preset": "outpaint", "preset_pixels": 15}, {"image": png(np.zeros((28, 28), np.uint8))}, 400, "border"),
    ({"temperature": float("nan")}, {"image": png(np.zeros((28, 28), np.uint8))}, 422, "temperature"),
    ({"model": "../tiny"}, {"image": png(np.zeros((28, 28), np.uint8))}, 404, "unknown model"),
])
def test_bad_inpainting_requests_get_a_clear_4xx(client, params, files, status, message):
    r = inpaint(client, params, **files)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_oversized_uploads_are_refused_before_parsing(client):
    noise = png(np.random.default_rng(0).integers(0, 256, (600, 600), dtype=np.uint8))
    assert len(noise) > 200_000  # over the test server's limit
    r = inpaint(client, {}, image=noise)
    assert r.status_code == 413 and "limit of 200,000 bytes" in r.json()["detail"]
    r = client.post("/api/generate", content=b"x" * 300_000, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/api/models").status_code == 200  # and the server is fine


def test_decompression_bomb_upload(client):
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, format="PNG")  # 25 M pixels in a few kB
    r = inpaint(client, {}, image=buffer.getvalue())
    assert r.status_code == 413 and "5000×5000" in r.json()["detail"]


@pytest.mark.parametrize("name", ["../tiny", "tiny/..", "/tmp", "..%2F..%2Fetc%2Fpasswd", "fmnist-mar", "TINY", ""])
def test_only_whitelisted_models_can_be_named(client, name, tiny_folder):
    r = client.post("/api/generate", json={"model": name})
    assert r.status_code == 404 and "unknown model" in r.json()["detail"]
    r = client.post("/api/generate", json={"model": str(tiny_folder)})  # a real model folder, not whitelisted
    assert r.status_code == 404


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
                                  "/static/%2e%2e/%2e%2e/pyproject.toml", "/static//etc/passwd",
                                  "/api/models/..%2F..%2Ftiny/testset", "/api/jobs/..%2F..%2Fx/result.png",
                                  "/api/jobs/abc/result.png"])
def test_no_path_traversal(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422), (path, r.status_code)
    assert "import" not in r.text and "root:" not in r.text


def test_unknown_jobs_and_unfinished_downloads(client):
    assert client.get("/api/jobs/AAAAAAAAAAAAAAAA").status_code == 404
    r = client.post("/api/generate", json={"model": "tiny", "num_images": 2, "num_iter": STEPS})
    job = r.json()
    assert client.get(f"/api/jobs/{job['id']}/input.png").status_code == 404  # a generation has no input
    events(client, job)
    assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "done"


def test_a_full_queue_answers_busy_and_the_server_keeps_working(tiny_folder):
    app = create_app([str(tiny_folder)], Limits(queue_size=1, workers=1), device="cpu")
    heavy = {"model": "tiny", "num_images": 16, "seeds": 4}  # seconds of work for the one worker
    with TestClient(app) as c:
        answers = [c.post("/api/generate", json=heavy) for _ in range(3)]
        assert [a.status_code for a in answers[:2]] == [202, 202]
        busy = answers[2]
        assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
        assert busy.json()["detail"].startswith("busy:") and "retry" in busy.json()["detail"]
        for a in answers[:2]:
            c.post(f"/api/jobs/{a.json()['id']}/cancel")
        for a in answers[:2]:
            name, data = events(c, a.json())[-1]
            assert name == "cancelled" and data["status"] == "cancelled"
        job, evs = run(c, num_images=1)
        assert evs[-1][0] == "done"


def test_serve_refuses_a_public_host_without_the_flag(capsys):
    from fractalgm.cli import main

    with pytest.raises(SystemExit, match="--allow-remote"):
        main(["serve", "--host", "0.0.0.0", "--port", "8123"])


def test_a_model_of_another_shape_has_no_picker_but_takes_uploads(tmp_path):
    from conftest import build, tiny_config

    folder = tmp_path / "rgb8"
    build(tiny_config(("mar", "mar"), channels=3)).save_pretrained(folder)  # 8×8 RGB, 10 classes
    with TestClient(create_app([str(folder)], Limits(), device="cpu")) as c:
        (m,) = c.get("/api/models").json()["models"]
        assert m["name"] == "rgb8" and m["testset"] is None and m["class_names"][:2] == ["0", "1"]
        r = c.get("/api/models/rgb8/testset")
        assert r.status_code == 404 and "upload an image instead" in r.json()["detail"]
        picture = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
        r = c.post("/api/inpaint", data={"params": json.dumps({"model": "rgb8", "source": "upload",
                                                                "preset": "half_right", "num_images": 2})},
                   files={"image": ("p.png", png(picture))})
        assert r.status_code == 202, r.text
        name, data = events(c, r.json())[-1]
        assert name == "done" and data["result"]["known_unchanged"] and data["result"]["known_pixels"] == 8 * 4 * 3


def test_a_fast_server_samples_on_the_fast_path(tiny_folder, client):
    """`serve --fast`: the same seed gives the same images again, other ones than the exact server's."""
    def images(c):
        job, evs = run(c, num_images=2, label=1, seed=3)
        assert evs[-1][0] == "done"
        return png_array(c.get(f"/api/jobs/{job['id']}/result.png").content)

    with TestClient(create_app([str(tiny_folder)], Limits(max_steps=32), device="cpu", fast=True)) as fast:
        first, again = images(fast), images(fast)
    assert np.array_equal(first, again) and not np.array_equal(first, images(client))
