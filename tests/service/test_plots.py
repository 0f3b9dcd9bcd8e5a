"""The pictures a run logs, readable in MLflow's artifact preview: the weight-scaling view (paper
Fig. 5-6) at most 1,000 px wide with the symbols on both panels and the units it shows named, and
learning curves with one y axis per panel. Also the sample text's wrapping and the run names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from hypermodels import HyperLSTM
from service.io.tracking import run_name
from service.tasks.char_lm.loop import wrap
from service.worker import plots

PREVIEW_MAX_PX = 1000  # wider pictures shrink in MLflow's artifact pane until their text is unreadable


@pytest.fixture(scope="module")
def scales() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """d_h, d_x of a small HyperLSTM over 120 symbols (more than the view draws)."""
    torch.manual_seed(0)
    layer = HyperLSTM(5, 96, hyper_size=16, embed_size=4, layer_norm=True)
    with torch.no_grad():  # away from the initial constant 0.1, so the picture has content
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ids = torch.randint(0, 5, (120,))
    d_h, d_x = layer.scaling_vectors(torch.nn.functional.one_hot(ids, 5).float().unsqueeze(1))
    return d_h, d_x, ["abc_\n"[int(i)] for i in ids]


def test_scaling_view_fits_the_preview(scales, tmp_path: Path) -> None:
    d_h, d_x, symbols = scales
    path = tmp_path / "sv.png"
    plots.scaling_vectors(d_h, d_x, symbols, str(path))
    width, height = Image.open(path).size
    assert 600 <= width <= PREVIEW_MAX_PX and 400 <= height <= PREVIEW_MAX_PX, (width, height)


def test_scaling_view_labels_both_panels_and_names_its_units(scales) -> None:
    d_h, d_x, symbols = scales
    fig = plots.scaling_vectors_figure(d_h, d_x, symbols)
    try:
        fig.canvas.draw()
        top, heat = fig.axes[0], fig.axes[1]
        drawn = plots.SCALING_VIEW_STEPS
        expected = [{"\n": "⏎"}.get(s, s) for s in symbols[:drawn]]
        for ax in (top, heat):
            ticks = ax.xaxis.get_major_ticks()
            assert [t.label1.get_text() for t in ticks] == expected
            assert all(t.label1.get_visible() for t in ticks), "x tick labels hidden"
        assert "units 1-64 of 96" in heat.get_title()
        assert heat.get_ylim() == (64.5, 0.5)  # rows numbered 1..64 as the title counts them
        assert f"over {drawn} symbols" in top.get_title()
    finally:
        plots.pyplot().close(fig)


def test_scaling_view_says_when_it_shows_every_unit(scales) -> None:
    d_h, d_x, symbols = scales
    fig = plots.scaling_vectors_figure(d_h[..., :32], d_x[..., :32], symbols)
    try:
        assert "all 32 units" in fig.axes[1].get_title()
    finally:
        plots.pyplot().close(fig)


def _axes_of(path: Path, monkeypatch: pytest.MonkeyPatch, **kw) -> list:
    """The axes :func:`plots.learning_curve` drew (the figure is kept open for the test)."""
    plt = plots.pyplot()
    made = []
    real = plt.subplots

    def spy(*a, **k):
        fig, ax = real(*a, **k)
        made.append(fig)
        return fig, ax

    monkeypatch.setattr(plt, "subplots", spy)
    monkeypatch.setattr(plt, "close", lambda fig: None)
    train = [(s, 3.0 - s / 100) for s in range(0, 200, 10)]
    valid = [(s, 0.5 - s / 1000) for s in (50, 100, 150)]
    plots.learning_curve(train, valid, str(path), title="t", train_label="train loss", valid_label="valid", **kw)
    [fig] = made
    width, _ = Image.open(path).size
    assert width <= PREVIEW_MAX_PX
    return fig.axes


def test_learning_curve_of_two_units_has_a_panel_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    axes = _axes_of(tmp_path / "lc.png", monkeypatch, ylabel="nats", valid_axis="error rate")
    assert len(axes) == 2
    loss, error = axes
    box_a, box_b = loss.get_position(), error.get_position()
    assert box_a.y0 >= box_b.y1, "panels overlap: twin axes"
    assert loss.get_ylabel() == "nats" and error.get_ylabel() == "error rate"
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train loss"]
    assert [t.get_text() for t in error.get_legend().get_texts()] == ["valid"]


def test_learning_curve_of_one_unit_has_one_axis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [ax] = _axes_of(tmp_path / "lc.png", monkeypatch, ylabel="bits per character")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train loss", "valid"]


def test_sample_text_is_wrapped_at_spaces() -> None:
    sentence = "the company said it expects to report a loss for the fourth quarter " * 3
    text = wrap(f"{sentence.strip()}\nshort line\n\n{'x' * 100}")
    lines = text.split("\n")
    assert max(map(len, lines)) <= 80
    assert " ".join(lines[:-4]).split() == sentence.split()  # every word, none cut
    assert lines[-4:] == ["short line", "", "x" * 80, "x" * 20]  # line breaks kept; an overlong word cut


def test_run_name_carries_the_overrides() -> None:
    assert run_name("quickstart") == "quickstart"
    assert run_name(
        "quickstart", ["model.hyper.embed_size=16", "train.optimizer.lr = 0.01", "name=x", "storage=/s"]
    ) == ("quickstart embed_size=16 lr=0.01")
    assert len(run_name("x", ["a.b=" + "y" * 400])) == 250
