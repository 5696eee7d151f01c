"""Property-based tests of the experiment loader: any YAML document either validates or is refused
with ONE :class:`~compaudit.errors.CompauditError` whose message is a single line naming the file
and the field, never another exception type, never a traceback; and ``compaudit check FILE`` on it
exits with code 0, or with code 2 and one line on stderr."""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compaudit.cli import main
from compaudit.config import Experiment
from compaudit.errors import CompauditError
from compaudit.run.validate import experiment_from_dict, experiment_from_yaml_text
from tests.conftest import TINY

SOURCE = "exp.yaml"
SETTINGS = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

#: the experiment's own field names, so generated mappings hit the schema, not only unknown keys
FIELDS = sorted(
    set(Experiment.model_fields)
    | {"params", "root", "method", "steps", "finetune", "epochs", "lr", "sweep", "values", "param"}
    | {"select", "within", "match", "checkpoint", "train", "attacks", "attack", "eps", "splits"}
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["digits", "vgg6", "prune_unstructured", "accuracy", "~nobody/x", "a:b", "cuda:9"]),
)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8))
garbage = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


def _check(load: Any) -> Experiment | None:
    """Run ``load()``; return its experiment, or None after checking its one-line error."""
    try:
        exp = load()
    except CompauditError as exc:
        msg = str(exc)
        assert len(msg.splitlines()) == 1 and msg.strip() == msg, repr(msg)
        assert msg.startswith(f"{SOURCE}:"), msg
        return None
    assert isinstance(exp, Experiment)
    return exp


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_validates_or_is_one_line(text: str) -> None:
    _check(lambda: experiment_from_yaml_text(text, source=SOURCE))


@SETTINGS
@given(st.dictionaries(keys, garbage, max_size=6))
def test_any_mapping_validates_or_is_one_line(raw: dict[str, Any]) -> None:
    _check(lambda: experiment_from_dict(raw, source=SOURCE))
    text = yaml.safe_dump(raw, sort_keys=False)
    _check(lambda: experiment_from_yaml_text(text, source=SOURCE))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``node`` (dict keys and list indices), the node itself excluded."""
    out: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


#: a valid experiment with every kind of field: a sweep with select, fine-tuning, probe params
VALID: dict[str, Any] = {
    **copy.deepcopy(TINY),
    "variants": [
        *copy.deepcopy(TINY["variants"]),
        {
            "name": "p",
            "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.1}}],
            "sweep": {"param": "sparsity", "values": [0.2, 0.5]},
            "select": {"within": 0.05},
        },
    ],
    "probes": [
        {"name": "accuracy", "params": {"splits": ["test", "val"]}},
        {"name": "adversarial", "params": {"samples": 8, "attacks": [{"attack": "pgd", "eps": [0.1]}]}},
    ],
}
PATHS = _paths(VALID)
#: top-level fields whose validity depends on another: ``variants[i].select`` on the ``probes``
CROSS: dict[Any, tuple[str, ...]] = {"probes": ("variants",)}


def test_the_valid_experiment_is_valid() -> None:
    assert _check(lambda: experiment_from_dict(copy.deepcopy(VALID), source=SOURCE)) is not None


@SETTINGS
@given(st.sampled_from(PATHS), garbage)
def test_a_valid_experiment_with_one_field_corrupted_names_that_field(
    path: tuple[Any, ...], value: Any
) -> None:
    raw = copy.deepcopy(VALID)
    node: Any = raw
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    text = yaml.safe_dump(raw, sort_keys=False)
    for load in (
        lambda: experiment_from_dict(raw, source=SOURCE),
        lambda: experiment_from_yaml_text(text, source=SOURCE),
    ):
        try:
            load()
        except CompauditError as exc:
            msg = str(exc)
            assert len(msg.splitlines()) == 1, repr(msg)
            # the culprit: the file, then the field path under the corrupted top-level field, or
            # under a field whose constraint reads it (a sweep's select needs the accuracy splits)
            fields = {path[0], *CROSS.get(path[0], ())}
            assert any(msg.startswith(f"{SOURCE}: {f}") for f in fields), (path, msg)


def _cli_check(text: str) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SOURCE
        path.write_text(text, encoding="utf-8")
        err = io.StringIO()
        with (
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(io.StringIO()),
            pytest.raises(SystemExit) as exc,
        ):
            main(["check", str(path)])
        code = exc.value.code
        return (code if isinstance(code, int) else 0), err.getvalue()


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=100), st.dictionaries(keys, garbage, max_size=5).map(yaml.safe_dump)))
def test_compaudit_check_exits_0_or_2_with_one_line(text: str) -> None:
    code, err = _cli_check(text)
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("compaudit: error: "), err
        assert "Traceback" not in err
