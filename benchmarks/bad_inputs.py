"""Run every bad input of docs/reliability.md through the real CLI and print what each answers (Markdown).

    python benchmarks/bad_inputs.py > /tmp/table.md

`CASES` is also the parameter list of tests/test_reliability_inputs.py: each must exit with code 2
(1 for a run that fails after starting) and a one-line message naming the argument and the value.
"""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

T = ["train", "--preset", "tiny_fmnist", "--out", "{tmp}/run", "--val-images", "8"]
S = ["sample", "--preset", "tiny_fmnist", "--out", "{tmp}/grid.png"]
I = ["inpaint", "--preset", "tiny_fmnist", "--dataset-index", "0", "--out", "{tmp}/strips.png"]
N = ["nll", "--preset", "tiny_fmnist", "--limit", "2"]

# (argv, a text the message must contain: the flag, and the value where it has one)
CASES = [
    (T + ["--steps", "-5"], ["--steps", "-5"]),
    (T + ["--minutes", "-1"], ["--minutes", "-1"]),
    (T + ["--steps", "0"], ["--steps", "'0'"]),
    (T + ["--epochs", "0"], ["--epochs", "'0'"]),
    (T + ["--steps", "3", "--minutes", "1"], ["one budget"]),
    (T, ["budget"]),
    (T + ["--steps", "2", "--batch-size", "0"], ["--batch-size", "'0'"]),
    (T + ["--steps", "2", "--batch-size", "-3"], ["--batch-size", "'-3'"]),
    (T + ["--steps", "2", "--grad-accum", "0"], ["--grad-accum", "'0'"]),
    (T + ["--steps", "2", "--save-every", "0"], ["--save-every", "'0'"]),
    (T + ["--steps", "2", "--val-images", "0"], ["--val-images", "'0'"]),
    (T + ["--steps", "2", "--log-every", "0"], ["--log-every", "'0'"]),
    (T + ["--steps", "2", "--lr", "nan"], ["--lr", "'nan'"]),
    (T + ["--steps", "2", "--lr", "-0.001"], ["--lr", "'-0.001'"]),
    (T + ["--steps", "2", "--warmup", "1"], ["--warmup", "[0, 1)"]),
    (T + ["--steps", "2", "--ema-decay", "1"], ["--ema-decay", "[0, 1)"]),
    (T + ["--steps", "2", "--ema-decay", "inf"], ["--ema-decay", "'inf'"]),
    (T + ["--steps", "2", "--betas", "1,0.9"], ["--betas", "'1,0.9'"]),
    (T + ["--steps", "2", "--grad-clip", "0"], ["--grad-clip", "'0'"]),
    (T + ["--steps", "2", "--seed", "-1"], ["--seed", "'-1'"]),
    (T + ["--steps", "2", "--amp", "fp8"], ["--amp", "'fp8'"]),
    (T + ["--steps", "2", "--device", "cuda:7"], ["--device", "cuda:7"]),
    (T + ["--steps", "2", "--device", "tpu"], ["--device", "'tpu'"]),
    (T + ["--steps", "2", "--label-drop", "1.5"], ["--label-drop", "'1.5'"]),
    (T + ["--steps", "2", "--preset", "nope"], ["--preset", "'nope'"]),
    (T + ["--steps", "2", "--resume"], ["nothing to resume"]),
    (T + ["--steps", "2", "--resume", "--overwrite"], ["--resume and --overwrite"]),
    (S + ["--per-label", "0", "--labels", "0"], ["--per-label", "'0'"]),
    (S + ["--num-images", "0"], ["--num-images", "'0'"]),
    (S + ["--labels", "0", "--cfg", "nan"], ["--cfg", "'nan'"]),
    (S + ["--labels", "0", "--cfg", "-2"], ["--cfg", "'-2'"]),
    (S + ["--cfg", "3"], ["--cfg 3", "labels"]),
    (S + ["--labels", "0", "--temperature", "nan"], ["--temperature", "'nan'"]),
    (S + ["--labels", "0", "--temperature", "0"], ["--temperature", "'0'"]),
    (S + ["--labels", "0", "--filter-threshold", "2"], ["--filter-threshold", "'2'"]),
    (S + ["--labels", "0", "--num-iter", "0"], ["--num-iter", "'0'"]),
    (S + ["--labels", "0", "--num-iter", "4,4,4"], ["--num-iter", "4,4,4"]),
    (S + ["--labels", "0", "--scale", "0"], ["--scale", "'0'"]),
    (S + ["--labels", "0", "--fps", "0"], ["--fps", "'0'"]),
    (S + ["--labels", "12"], ["--labels", "'12'", "[0, 10)"]),
    (S + ["--labels", "a,b"], ["--labels", "'a,b'"]),
    (S + ["--device", "cuda"], ["--device", "'cuda'"]),
    (["sample", "--preset", "tiny_fmnist", "--out", "{tmp}/grid_noext"], ["--out", "no file extension", "grid_noext.png"]),
    (["sample", "--preset", "tiny_fmnist", "--out", "{tmp}/a_file/x.png"], ["--out", "a_file is a file"]),
    (S + ["--labels", "0", "--animate", "{tmp}/a.avi"], ["--animate", "a.avi"]),
    (I + ["--half", "top", "--num-samples", "0"], ["--num-samples", "'0'"]),
    (I + ["--box", "1,2,3"], ["--box", "'1,2,3'"]),
    (I + ["--box", "30,0,4,4"], ["--box", "30,0,4,4", "28×28"]),
    (I + ["--outpaint", "20"], ["--outpaint 20", "[0, 14]"]),
    (I + ["--uncrop", "30"], ["--uncrop 30", "[0, 28]"]),
    (I + ["--mask", "{tmp}/black.png"], ["nothing to generate"]),
    (I + ["--half", "top", "--label", "99"], ["--label", "'99'"]),
    (["inpaint", "--preset", "tiny_fmnist", "--dataset-index", "99999", "--half", "top", "--out", "{tmp}/s.png"],
     ["--dataset-index", "99999"]),
    (["inpaint", "--preset", "tiny_fmnist", "--image", "{tmp}/a_file", "--half", "top", "--out", "{tmp}/s.png"],
     ["cannot read image"]),
    (N[:-2] + ["--limit", "0"], ["--limit", "'0'"]),
    (N + ["--batch-size", "0"], ["--batch-size", "'0'"]),
    (N + ["--passes", "0"], ["--passes", "'0'"]),
    (N + ["--json", "{tmp}/a_file/r.json"], ["--json", "a_file is a file"]),
    (N + ["--split", "nope"], ["--split", "'nope'"]),
    (["nll", "--model", "{tmp}/nan_model", "--limit", "2"], ["non-finite", "NaN"]),
    (["nll", "--model", "{tmp}/missing"], ["no checkpoint folder"]),
    (["info", "--preset", "nope"], ["--preset", "'nope'"]),
]


def prepare(tmp: Path):
    """The files some cases point at: a plain file, an all-black mask, a model folder with NaN weights."""
    import numpy as np
    import torch
    from PIL import Image

    from fractalgm import FractalGen, get_preset

    (tmp / "a_file").write_text("not an image")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp / "black.png")
    model = FractalGen(get_preset("tiny_fmnist"))
    with torch.no_grad():
        model.fake_latent.fill_(float("nan"))
    model.save_pretrained(tmp / "nan_model")


def answer(argv: list[str], tmp: Path) -> tuple[int, str]:
    """(exit code, the error text) of `fractalgm argv`, run in-process."""
    from fractalgm.cli import main

    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    lines = [line for line in err.getvalue().splitlines() if "error" in line or "Traceback" in line]
    return code, lines[-1] if lines else err.getvalue().strip()[-300:]


def main():
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        prepare(tmp)
        print("| command | exit | answer |\n|---|---|---|")
        for argv, _ in CASES:
            code, text = answer(argv, tmp)
            shown = " ".join(argv).replace("{tmp}/", "")
            text = text.replace(str(tmp) + "/", "").replace("|", "\\|")
            print(f"| `fractalgm {shown}` | {code} | {text} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
