"""What `spdsim exec run` shows (executor.console): the progress bar on stderr, the summary on stdout, and the one
line with a stack log that ends a stalled run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from executor_tiny import prompts, tiny_model

from executor.console import end_stalled_run, print_summary, prompt_bar
from executor.schedules import run_method


class _Tokenizer:
    def decode(self, tokens: list[int]) -> str:
        return " ".join(map(str, tokens))


def test_a_disabled_bar_hands_the_schedules_no_callback(capsys) -> None:
    with prompt_bar("spd", enabled=False) as progress:
        assert progress is None
    assert capsys.readouterr() == ("", "")


def test_the_bar_draws_one_row_per_phase_on_stderr(capsys) -> None:
    with prompt_bar("spd") as progress:
        assert progress is not None
        for done in range(3):
            progress("warm-up", done, 2)
        for done in range(4):
            progress("timed", done, 3)
    out, err = capsys.readouterr()
    assert out == ""
    assert "spd: warm-up prompts" in err and "2/2" in err
    assert "spd: timed prompts" in err and "3/3" in err


def test_the_summary_puts_realised_beside_nominal_alpha_on_stdout(capsys) -> None:
    model = tiny_model(layers=4)
    result = run_method(
        "spd", model, prompts(2, vocab=model.cfg.vocab_size), max_new_tokens=24, stages=2, synthetic_alpha=0.8
    )
    print_summary(result, _Tokenizer())
    out, err = capsys.readouterr()
    assert err == "" and "spd on cpu" in out
    for row in (
        "nominal_alpha",
        "realised_alpha",
        "realised alpha, state saturated",
        "phase verify [all] median us",
    ):
        assert row in out, row
    assert f"{result.prompts[0].prompt_id}:" in out


def test_a_stalled_run_ends_in_one_line_naming_its_stack_log(tmp_path: Path, monkeypatch, capsys) -> None:
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setenv("SPDSIM_LOG_DIR", str(tmp_path))
    with pytest.raises(SystemExit):
        end_stalled_run(30.0, 31.4)
    err = capsys.readouterr().err.strip().splitlines()
    (log,) = tmp_path.iterdir()
    assert exits == [1] and len(err) == 1
    assert err[0].startswith("error: the device did not finish the decode work: one read of it waited 31 s")
    assert str(log) in err[0] and "nothing was written" in err[0]
    assert "test_a_stalled_run_ends_in_one_line_naming_its_stack_log" in log.read_text()
