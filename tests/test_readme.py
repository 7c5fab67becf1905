"""The README's Python block is the API contract: run it exactly as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_block_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    images, nll = namespace["images"], namespace["nll"]
    assert images.shape == (4, 1, 28, 28) and images.dtype.is_floating_point is False
    assert nll.stderr is None and (nll.bpd > 0).all()  # the shipped default is AR: exact, no estimate
