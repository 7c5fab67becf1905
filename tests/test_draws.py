"""The cross-machine sample comparison (`draws.py`) accepts exactly the differences float noise can make."""
from __future__ import annotations

import pytest
import torch

from conftest import build, gen, perturb, tiny_config
from draws import EPS, assert_same_draws, explain, run

WIDE = 0.05  # a margin so wide that every sample has borderline draws to flip


@pytest.fixture(scope="module")
def generate():
    model = perturb(build(tiny_config(("ar", "mar"), channels=3, guiding_pixel=True)))
    labels = torch.tensor([2, 5])
    return lambda: model.sample(labels, num_iter=[1, 2], cfg_scale=2.0, temperature=0.9, generator=gen(3))


def test_a_rerun_is_its_own_explanation(generate):
    out, audit = run(generate)
    assert explain(generate, out) == {}
    assert audit.calls > 1 and torch.equal(out, generate())  # auditing changes nothing


def test_a_flipped_borderline_draw_is_explained_and_only_if_it_is_borderline(generate):
    out, wide = run(generate, eps=WIDE)
    narrow = {key for key, _ in run(generate)[1].borderline}
    key, alts = next((k, a) for k, a in wide.borderline if k not in narrow)
    flipped, _ = run(generate, {key: alts[0]})
    assert not torch.equal(flipped, out)
    assert explain(generate, flipped, eps=WIDE) == {key: alts[0]}
    with pytest.raises(AssertionError, match="no borderline draw"):
        assert_same_draws(generate, flipped, "flipped", eps=EPS)


def test_a_clear_draw_flipped_is_not_explained(generate):
    out, wide = run(generate, eps=WIDE)
    borderline = {key for key, _ in wide.borderline}
    clear = ((call, 0) for call in range(wide.calls) if (call, 0) not in borderline)
    # the first clear draw whose flip shows in the pixels (a guiding pixel's often does not: argmax(p / q)
    # is stable under the small change of p it makes)
    changed = next(c for c in (run(generate, {key: v})[0] for key in clear for v in (0, 255)) if not torch.equal(c, out))
    with pytest.raises(AssertionError, match="no borderline draw"):
        assert_same_draws(generate, changed, "changed", eps=WIDE)


def test_other_pixels_are_not_explained(generate):
    out, _ = run(generate)
    shifted = out.clone()
    shifted.view(-1)[: shifted.numel() // 2] += 7  # uint8: wraps modulo 256
    with pytest.raises(AssertionError, match="no borderline draw"):
        assert_same_draws(generate, shifted, "shifted")
