"""``--help`` of every verb (and of every verb under a verb) prints its page and exits 0."""

from __future__ import annotations

import argparse

import pytest

from automl_vision.cli import build_parser


def _verbs(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found += _verbs(sub, (*prefix, name))
    return found


VERBS = _verbs(build_parser())


def test_every_verb_is_listed():
    assert {("run",), ("train",), ("preview",), ("data",), ("data", "validate"), ("katib-config",)} <= set(VERBS)


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_help_of_every_verb_exits_0(verb, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([*verb, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: automl-vision " + " ".join(verb))


def test_a_percent_sign_in_a_help_text_is_shown_as_written(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "+/-50% during training" in " ".join(capsys.readouterr().out.split())
