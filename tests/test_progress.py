"""Progress: bars on a terminal, sparse log lines elsewhere (CI), and the long loops wired to it."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest
import torch

from compaudit import progress as progress_module
from compaudit.data.base import ArrayDataset, DataBundle
from compaudit.progress import LOG_EVERY, progress, stage


class _Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class _Pipe(io.StringIO):
    """A stream that says it is not a terminal (CI)."""

    def isatty(self) -> bool:
        return False


def _fake_clock(monkeypatch: pytest.MonkeyPatch, step: float) -> list[float]:
    """Replace the progress clock by one that advances ``step`` seconds per call."""
    now = [1000.0]

    def clock() -> float:
        now[0] += step
        return now[0]

    monkeypatch.setattr(progress_module, "clock", clock)
    return now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "compaudit"]


@pytest.fixture
def ci(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """stderr is not a terminal; INFO lines of the ``compaudit`` logger are captured."""
    monkeypatch.setattr(sys, "stderr", _Pipe())
    caplog.set_level(logging.INFO, logger="compaudit")
    return caplog


def test_every_item_once_in_order(ci: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_clock(monkeypatch, 3.0)
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in range(25):
            pulled.append(i)
            yield i

    got = []
    for item in progress(source(), desc="step"):
        # the wrapper pulls an item only when the loop asks for it
        assert pulled == list(range(item + 1))
        got.append(item)
    assert got == list(range(25))
    assert list(progress(iter([]), desc="empty")) == []
    assert list(progress(range(5), desc="off", enabled=False)) == list(range(5))


def test_ci_logs_periodic_lines_and_a_final_one(
    ci: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4 s per clock call: start at 4; item n is checked at 4 (n + 1) s
    _fake_clock(monkeypatch, 4.0)
    assert list(progress(range(7), desc="vgg6: pgd eps=0.1", total=7)) == list(range(7))
    lines = _lines(ci)
    # a line whenever LOG_EVERY (10 s) passed since the last one: after items 3 (12 s) and 6 (24 s)
    assert lines[:-1] == ["vgg6: pgd eps=0.1: 3/7 (12s)", "vgg6: pgd eps=0.1: 6/7 (24s)"]
    assert lines[-1] == "vgg6: pgd eps=0.1: 7/7 done in 32s"
    assert all(r.levelno == logging.INFO for r in ci.records)


def test_ci_final_line_without_total(ci: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_clock(monkeypatch, 11.0)
    list(progress((i for i in range(2)), desc="loop"))
    assert _lines(ci) == ["loop: 1 (11s)", "loop: 2 (22s)", "loop: 2/2 done in 33s"]


def test_ci_fast_loop_logs_nothing(ci: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_clock(monkeypatch, 0.01)
    assert list(progress(range(100), desc="fast", total=100)) == list(range(100))
    assert _lines(ci) == []
    # the real clock: a quick loop logs nothing either
    monkeypatch.setattr(progress_module, "clock", progress_module.time.monotonic)
    assert sum(progress(range(1000), desc="quick")) == sum(range(1000))
    assert _lines(ci) == []


def test_ci_loop_left_early_logs_no_final_line(
    ci: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_clock(monkeypatch, 11.0)
    for i in progress(range(10), desc="left", total=10):
        if i == 1:
            break
    assert _lines(ci) == ["left: 1/10 (11s)"]


def test_interval_is_a_module_constant(ci: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    assert LOG_EVERY == 10.0
    monkeypatch.setattr(progress_module, "LOG_EVERY", 100.0)
    _fake_clock(monkeypatch, 11.0)
    list(progress(range(5), desc="slow", total=5))
    assert _lines(ci) == []


def test_terminal_shows_a_tqdm_bar(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    caplog.set_level(logging.INFO, logger="compaudit")
    _fake_clock(monkeypatch, 11.0)  # would log on every item off a terminal
    assert list(progress(range(4), desc="my-bar", total=4)) == list(range(4))
    text = term.getvalue()
    assert "my-bar:" in text and "/4 [" in text  # tqdm's bar (refreshed at most every 0.1 s)
    assert _lines(caplog) == []  # a bar, no log lines


def test_stage(ci: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_clock(monkeypatch, 1.0)
    with stage("short"):
        pass
    assert _lines(ci) == []
    _fake_clock(monkeypatch, 12.0)
    with stage("vgg6: penultimate t-SNE clean"):
        pass
    assert _lines(ci) == ["vgg6: penultimate t-SNE clean: done in 12s"]
    with pytest.raises(RuntimeError), stage("fails"):
        raise RuntimeError("boom")
    assert len(_lines(ci)) == 1  # a failed stage logs no "done"


def test_stage_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with stage("fitting t-SNE"):
        pass
    assert "fitting t-SNE" in term.getvalue()


# ---------------------------------------------------------------- the long loops are wired


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))


def test_predict_reports_progress(ci: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from compaudit.inference import predict

    data = ArrayDataset(torch.rand(10, 1, 2, 2), torch.arange(10) % 3)
    model = _tiny_model()
    quiet = predict(model, data, batch_size=4)
    assert _lines(ci) == []
    _fake_clock(monkeypatch, 11.0)
    pred = predict(model, data, batch_size=4, desc="tiny: predict test")
    assert _lines(ci) == [
        "tiny: predict test: 1/3 (11s)",
        "tiny: predict test: 2/3 (22s)",
        "tiny: predict test: 3/3 done in 44s",
    ]
    # progress changes nothing in the numbers
    assert torch.equal(pred.logits, quiet.logits) and torch.equal(pred.labels, quiet.labels)


def test_probe_predictions_name_the_variant_and_split(
    ci: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compaudit.probes.base import ProbeContext
    from compaudit.variant import Variant

    split = ArrayDataset(torch.rand(6, 1, 2, 2), torch.arange(6) % 3)
    data = _bundle(split)
    base = Variant("tiny-base", "k0", _tiny_model())
    ctx = ProbeContext(data=data, baseline=base, device=torch.device("cpu"), seed=0)
    _fake_clock(monkeypatch, 11.0)
    ctx.predictions(base, "test")
    assert _lines(ci)[-1] == "tiny-base: predict test: 1/1 done in 22s"


def test_calibration_reports_progress(ci: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from compaudit.compress.fakequant import ActivationQuantizer, calibrate_activations

    split = ArrayDataset(torch.rand(20, 1, 2, 2), torch.arange(20) % 3)
    data = _bundle(split)
    model = torch.nn.Sequential(torch.nn.Flatten(), ActivationQuantizer(8), torch.nn.Linear(4, 3))
    _fake_clock(monkeypatch, 11.0)
    used = calibrate_activations(
        model, data, num_batches=3, batch_size=4, seed=0, device=torch.device("cpu"), desc="tiny: calibration"
    )
    assert used == 3
    assert _lines(ci)[-1] == "tiny: calibration: 3/3 done in 44s"


def _bundle(split: ArrayDataset) -> DataBundle:
    """A data bundle whose three splits are ``split`` (3 classes of 1x2x2 images)."""
    return DataBundle("tiny", split, split, split, ("a", "b", "c"), (1, 2, 2))
