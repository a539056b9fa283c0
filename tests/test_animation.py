"""The reveal animation: one frame per step and a final one, drawn after the run without touching its draws."""

import numpy as np
import pytest
import torch
from PIL import Image

import minibigr
from minibigr import BiGRPipeline
from minibigr.animation import ROWS, write_animation
from minibigr.cli import main
from minibigr.sampler import StepRecorder


@pytest.fixture(scope="module")
def pipe(tiny_parts):
    tok, model = tiny_parts(sampling=dict(num_iter=5, diffusion_steps=4, order="entropy", gumbel=0.01))
    for p in model.parameters():          # random outputs make the certainty differ from token to token
        torch.nn.init.normal_(p, std=0.2)
    return BiGRPipeline(tok, model)


def frames(path) -> list[np.ndarray]:
    with Image.open(path) as gif:
        out = []
        for k in range(gif.n_frames):
            gif.seek(k)
            out.append(np.asarray(gif.convert("RGB")))
        return out


@pytest.mark.parametrize("order", ["entropy", "random"])
def test_the_animation_has_a_frame_per_step_and_ends_on_the_run_s_images(pipe, tmp_path, order):
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    plain = pipe([0, 1, 2], generator=g(), order=order)
    animated = minibigr.animate(pipe, [0, 1, 2], tmp_path / "reveal.gif", generator=g(), order=order, zoom=2)
    assert torch.equal(animated, plain)                       # the recorder draws nothing: the same samples
    shown = frames(tmp_path / "reveal.gif")
    I = pipe.model.config.sampling.num_iter
    assert len(shown) == I + 1
    # the final frame's image row holds the run's images, pixel for pixel (zoom 2, in their grey levels)
    top, left, size = 30, 86, 32 * 2
    for b in range(3):
        panel = shown[-1][top:top + size, left + b * (size + 2):left + b * (size + 2) + size, 0]
        expected = (plain[b, 0] * 255).round().numpy().repeat(2, 0).repeat(2, 1)
        assert np.abs(panel.astype(int) - expected).max() <= 2          # GIF palette rounding
    assert len(ROWS) == 3 and shown[0].shape == (30 + 3 * (size + 2), 86 + 3 * (size + 2), 3)
    # the frames change: every step reveals tokens
    assert all(not np.array_equal(a, b) for a, b in zip(shown, shown[1:], strict=False))


def test_the_recorder_keeps_every_step_and_the_reveal_order(pipe):
    recorder = StepRecorder()
    tokens = pipe.model.generate(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0), callback=recorder)
    steps, N = recorder.steps, pipe.model.config.num_tokens
    assert [s.i for s in steps] == list(range(1, pipe.model.config.sampling.num_iter + 1))
    assert torch.equal(steps[-1].tokens, tokens) and not steps[-1].mask.any()
    first = steps[0]
    assert torch.isfinite(first.certainty).all()                         # step 1 scores every token (entropy)
    assert ((first.certainty >= 0) & (first.certainty <= 1)).all()
    assert torch.isnan(steps[1].certainty[~steps[0].mask]).all()          # revealed tokens are not scored again
    last = steps[-1].revealed_at
    assert torch.isfinite(last).all() and last.min() >= 1 and last.max() <= len(steps) and last.shape == (2, N)
    for s in steps:
        assert torch.equal(torch.isnan(s.revealed_at), s.mask)


def test_minibigr_sample_animate_writes_the_gif_of_its_own_run(tmp_path, capsys, monkeypatch, pipe):
    monkeypatch.setattr("minibigr.cli.load_pipeline", lambda args: pipe)
    args = ["sample", "--labels", "0", "2", "--per-class", "2", "--seed", "5", "--out"]
    assert main([*args, str(tmp_path / "a.png")]) == 0
    assert main([*args, str(tmp_path / "b.png"), "--animate", str(tmp_path / "b.gif")]) == 0
    assert "reveal animation" in capsys.readouterr().out
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(a["images"], b["images"])                  # the same samples with --animate
    assert len(frames(tmp_path / "b.gif")) == pipe.model.config.sampling.num_iter + 1
    with pytest.raises(SystemExit):                                      # refused before any sampling
        main([*args, str(tmp_path / "c.png"), "--animate", str(tmp_path / "c.png")])
    assert "must end in .gif" in capsys.readouterr().err


def test_write_animation_shows_the_chosen_columns(pipe, tmp_path):
    recorder = StepRecorder()
    images = pipe([0, 1, 2, 0], generator=torch.Generator().manual_seed(1), callback=recorder)
    write_animation(pipe, recorder.steps, images, tmp_path / "two.gif", pipe.model.config.sampling, columns=[0, 3],
                    zoom=1)
    assert frames(tmp_path / "two.gif")[0].shape[1] == 86 + 2 * (32 + 2)
