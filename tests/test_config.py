"""The experiment file: YAML in, a validated Experiment out; every error names its field path."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

import compaudit
from compaudit.compress import METHODS
from compaudit.config import Experiment, MlflowSpec, format_validation_error
from compaudit.data import DATASETS
from compaudit.errors import ConfigError
from compaudit.models import MODELS
from compaudit.probes import PROBES
from compaudit.run.validate import experiment_from_yaml_text, load_experiment, validate
from tests.conftest import TINY, tiny_config, write_yaml


def parse(cfg: dict[str, Any]) -> Experiment:
    """``cfg`` as YAML, read and fully validated (schema and plugins)."""
    return experiment_from_yaml_text(yaml.safe_dump(cfg, sort_keys=False), source="exp.yaml")


def error_of(cfg: dict[str, Any] | None = None, *, text: str | None = None) -> str:
    """The one-line message of the ConfigError that ``cfg`` (or raw YAML ``text``) raises."""
    if text is None:
        text = yaml.safe_dump(cfg, sort_keys=False)
    with pytest.raises(ConfigError) as info:
        experiment_from_yaml_text(text, source="exp.yaml")
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith("exp.yaml"), msg
    return msg


# ---------------------------------------------------------------- valid files


def test_tiny_parses_into_the_written_values() -> None:
    exp = parse(TINY)
    assert exp.name == TINY["name"] and exp.seed == TINY["seed"] and exp.device == TINY["device"]
    assert exp.data.name == TINY["data"]["name"] and exp.data.params == TINY["data"]["params"]
    assert exp.model.name == TINY["model"]["name"]
    assert exp.model.params == TINY["model"].get("params", {})
    for field, value in TINY["model"]["train"].items():
        assert getattr(exp.model.train, field) == value, field
    assert [v.name for v in exp.variants] == [v["name"] for v in TINY["variants"]]
    for v, raw in zip(exp.variants, TINY["variants"], strict=True):
        assert [(s.method, s.params) for s in v.steps] == [(s["method"], s["params"]) for s in raw["steps"]]
        if "finetune" in raw:
            assert v.finetune is not None
            for field, value in raw["finetune"].items():
                assert getattr(v.finetune, field) == value, field
        else:
            assert v.finetune is None
    assert [(p.name, p.params) for p in exp.probes] == [
        (p["name"], p.get("params", {})) for p in TINY["probes"]
    ]


def test_round_trip_through_to_yaml_is_identical() -> None:
    exp = parse(TINY)
    again = Experiment.from_yaml_text(exp.to_yaml())
    assert again == exp
    assert again.to_yaml() == exp.to_yaml()


def test_from_yaml_and_load_experiment_agree(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "exp.yaml", TINY)
    assert Experiment.from_yaml(path) == load_experiment(path) == load_experiment(str(path))
    assert compaudit.load_experiment is load_experiment
    assert load_experiment(path).model_dump(exclude={"data", "model"}) == parse(TINY).model_dump(
        exclude={"data", "model"}
    )


def test_defaults_fill_omitted_fields() -> None:
    exp = Experiment.from_yaml_text("name: minimal\n")
    assert [p.name for p in exp.probes] == ["accuracy", "efficiency"]
    assert exp.variants == []
    assert exp.data.name in DATASETS and exp.model.name in MODELS


def test_relative_paths_resolve_against_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "experiments" / "sub"
    folder.mkdir(parents=True)
    cfg = tiny_config()
    cfg["data"]["root"] = "data/digits"
    cfg["model"]["checkpoint"] = "../weights/base.pt"
    path = write_yaml(folder / "exp.yaml", cfg)
    monkeypatch.chdir(tmp_path)  # the working folder must not matter
    exp = load_experiment(Path("experiments/sub/exp.yaml"))
    assert exp.data.root is not None and exp.model.checkpoint is not None
    assert exp.data.root.resolve() == (folder / "data" / "digits").resolve()
    assert exp.model.checkpoint.resolve() == (tmp_path / "experiments" / "weights" / "base.pt").resolve()
    assert exp.data.root.is_absolute() and exp.model.checkpoint.is_absolute()
    # an absolute path is kept as written
    cfg["data"]["root"] = str(tmp_path / "elsewhere")
    write_yaml(path, cfg)
    assert load_experiment(path).data.root == tmp_path / "elsewhere"


def test_user_model_factory_by_import_path_passes_validation() -> None:
    cfg = tiny_config(model={"name": "mypackage.models:build_net", "params": {"depth": 3}})
    exp = parse(cfg)
    assert exp.model.name == "mypackage.models:build_net"


# ---------------------------------------------------------------- errors


def test_malformed_yaml_names_the_line() -> None:
    msg = error_of(text="name: tiny\nseed: 0\nvariants: [a, b\nprobes: []\n")
    assert "malformed YAML" in msg
    assert "line 4" in msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert "top level must be a mapping" in error_of(text=text)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file_says_so(text: str) -> None:
    assert "the experiment file is empty" in error_of(text=text)


def _set(cfg: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set ``value`` at a dotted path; integer parts index lists."""
    parts = path.split(".")
    node: Any = cfg
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return cfg


CASES: list[tuple[str, Any, list[str]]] = [
    # (dotted path to set, value, fragments the message must contain)
    ("seed", "abc", ["seed:", "valid integer", "'abc'"]),
    ("seed", -1, ["seed:", "greater than or equal to 0"]),
    ("epochs", 3, ["epochs: unknown field"]),
    ("model.train.epoch", 3, ["model.train.epoch: unknown field"]),
    ("model.train.optimizer", "rmsprop", ["model.train.optimizer:", "'rmsprop'"]),
    ("data.name", "imagenet", ["data.name:", "unknown data set 'imagenet'", ", ".join(DATASETS.names())]),
    ("data.params.size", 2, ["data.params.size:", "greater than or equal to 8"]),
    ("data.params.colour", True, ["data.params.colour: unknown field"]),
    ("model.name", "vgg99", ["model.name:", "unknown model 'vgg99'", ", ".join(MODELS.names())]),
    (
        "variants.0.steps.0.method",
        "quantise",
        ["variants[0].steps[0].method:", "unknown method 'quantise'", ", ".join(METHODS.names())],
    ),
    ("variants.0.steps.0.params.sparsity", 1.5, ["variants[0].steps[0].params.sparsity:", "1.5"]),
    ("variants.1.steps.0.params.scope", "row", ["variants[1].steps[0].params.scope:", "'row'"]),
    ("variants.0.steps.0.params.amount", 0.3, ["variants[0].steps[0].params.amount: unknown field"]),
    ("variants.1.finetune.epochs", -1, ["variants[1].finetune.epochs:"]),
    (
        "probes.0.name",
        "robustness",
        ["probes[0].name:", "unknown probe 'robustness'", ", ".join(PROBES.names())],
    ),
    ("probes.1.params.repeats", 0, ["probes[1].params.repeats:", "greater than or equal to 1"]),
    ("probes.1.params.warmups", 2, ["probes[1].params.warmups: unknown field"]),
    ("variants.1.name", "pruned50", ["variants[1].name:", "duplicate variant name 'pruned50'"]),
    ("variants.0.name", "baseline", ["variants[0].name:", "reserved"]),
    ("variants.0.name", "has space", ["variants[0].name:", "letters, digits"]),
    ("variants.0.steps", [], ["variants[0].steps:", "at least 1 item"]),
    ("device", "gpu", ["device:", "cpu, cuda", "'gpu'"]),
    ("device", "cuda:x", ["device:", "'cuda:x'"]),
    ("probes", [], ["probes:", "at least 1 item"]),
]


@pytest.mark.parametrize(("path", "value", "fragments"), CASES, ids=[f"{c[0]}={c[1]!r}" for c in CASES])
def test_invalid_field_names_its_path_and_problem(path: str, value: Any, fragments: list[str]) -> None:
    msg = error_of(_set(tiny_config(), path, value))
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_missing_required_field_is_named() -> None:
    cfg = tiny_config()
    del cfg["variants"][0]["steps"][0]["method"]
    msg = error_of(cfg)
    assert "variants[0].steps[0].method: field required" in msg


def test_probe_listed_twice_is_refused() -> None:
    cfg = tiny_config(probes=[{"name": "accuracy"}, {"name": "accuracy"}])
    assert "probes[1].name: probe 'accuracy' is listed twice" in error_of(cfg)


def test_the_valid_values_next_to_each_bad_one_are_accepted() -> None:
    """The same edits with valid values pass: the errors above come from the values, not the edits."""
    for path, value in [
        ("seed", 7),
        ("device", "cuda:1"),
        ("device", "auto"),
        ("variants.0.steps.0.params.sparsity", 0.99),
        ("variants.1.steps.0.params.scope", "global"),
        ("probes.1.params.repeats", 1),
        ("variants.0.name", "baseline-2"),
    ]:
        parse(_set(tiny_config(), path, value))


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    for load in (load_experiment, Experiment.from_yaml):
        with pytest.raises(ConfigError, match="does not exist") as info:
            load(missing)
        assert str(missing) in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    cfg = tiny_config(seed="abc")
    path = write_yaml(tmp_path / "bad.yaml", cfg)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert str(info.value).startswith(str(path))
    assert "seed:" in str(info.value)


def test_format_validation_error_is_one_line_with_a_count() -> None:
    cfg = copy.deepcopy(TINY)
    cfg["seed"] = "abc"
    cfg["name"] = "two\nlines"
    cfg["bogus"] = 1
    with pytest.raises(ValidationError) as info:
        Experiment.model_validate(cfg)
    n = len(info.value.errors())
    assert n >= 3
    line = format_validation_error(info.value)
    assert "\n" not in line
    assert line.endswith(f"(and {n - 1} more problems)")
    assert line.startswith(str(info.value.errors()[0]["loc"][0]) + ":")


def test_format_validation_error_single_problem_has_no_count() -> None:
    with pytest.raises(ValidationError) as info:
        Experiment.model_validate({"name": "multi\nline\nname"})
    line = format_validation_error(info.value)
    assert "\n" not in line
    assert line.startswith("name: ")
    assert "more problem" not in line


# ---------------------------------------------------------------- mlflow: (logging, not results)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, MlflowSpec()),
        (False, None),
        (None, None),
        ({}, MlflowSpec()),
        (
            {"tracking_uri": "http://localhost:5000", "experiment": "e"},
            MlflowSpec(tracking_uri="http://localhost:5000", experiment="e"),
        ),
        ({"tracking_uri": "sqlite:///mlflow.db"}, MlflowSpec(tracking_uri="sqlite:///mlflow.db")),
    ],
)
def test_mlflow_key_parses_and_round_trips(value: Any, expected: MlflowSpec | None) -> None:
    exp = parse(tiny_config(mlflow=value))
    assert exp.mlflow == expected
    again = Experiment.from_yaml_text(exp.to_yaml())
    assert again == exp and again.to_yaml() == exp.to_yaml()
    # a run that logs nowhere stores the file as it read before the field existed
    assert ("mlflow:" in exp.to_yaml()) == (expected is not None)


def test_mlflow_folder_resolves_against_the_files_folder(tmp_path: Path) -> None:
    exp = load_experiment(write_yaml(tmp_path / "exp.yaml", tiny_config(mlflow={"tracking_uri": "ml/runs"})))
    assert exp.mlflow is not None and exp.mlflow.tracking_uri == str(tmp_path / "ml" / "runs")
    uri = (tmp_path / "s").as_uri()
    exp = load_experiment(write_yaml(tmp_path / "exp.yaml", tiny_config(mlflow={"tracking_uri": uri})))
    assert exp.mlflow is not None and exp.mlflow.tracking_uri == uri


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        ("yes please", ["mlflow:", "true, false, or a mapping"]),
        ({"uri": "x"}, ["mlflow.uri", "unknown field"]),
        ({"experiment": ""}, ["mlflow.experiment"]),
    ],
)
def test_invalid_mlflow_key_names_its_path(value: Any, fragments: list[str]) -> None:
    msg = error_of(tiny_config(mlflow=value))
    for f in fragments:
        assert f in msg, msg


def test_mlflow_key_changes_no_result_key() -> None:
    from compaudit.run.plan import make_plans

    def keys(exp: Experiment) -> list[str]:
        plans = make_plans(exp)
        return [v.key for p in plans for v in p.all_variants] + [j.key for p in plans for j in p.jobs]

    logged = parse(tiny_config(mlflow={"tracking_uri": "x", "experiment": "y"}))
    assert keys(logged) == keys(parse(tiny_config()))


# ---------------------------------------------------------------- the schema is a leaf


def test_the_schema_checks_no_plugin_and_validation_does() -> None:
    """``Experiment.from_dict`` is the schema alone (config imports no registry); a plugin name it
    cannot know is refused by :func:`compaudit.run.validate.validate`, and by every run."""
    cfg = _set(tiny_config(), "variants.0.steps.0.method", "quantise")
    exp = Experiment.from_dict(cfg)  # the schema accepts any method name
    with pytest.raises(ConfigError, match=r"^audit\.yaml: variants\[0\]\.steps\[0\]\.method: unknown method"):
        validate(exp, source="audit.yaml")


def test_config_imports_no_plugin_and_no_integration() -> None:
    """The schema is a leaf: of compaudit it imports the errors only, at the top or anywhere else
    (a deferred import would hide a circle, as the registries' imports inside functions did)."""
    import ast

    import compaudit.config

    tree = ast.parse(Path(compaudit.config.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    ours = {m for m in imported if m.split(".")[0] == "compaudit"}
    assert ours == {"compaudit.errors"}, ours
    assert not {m for m in imported if m.split(".")[0] in ("torch", "ray", "mlflow")}


@pytest.mark.parametrize("module", ["ray", "mlflow"])
def test_a_missing_optional_package_is_refused_when_the_file_is_validated(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = {"ray": {"executor": "ray"}, "mlflow": {"mlflow": True}}[module]
    exp = Experiment.from_dict(tiny_config(**extra))
    validate(exp, mlflow=True)  # installed here
    monkeypatch.setitem(sys.modules, module, None)  # `import MODULE` raises ImportError
    with pytest.raises(ConfigError) as info:
        validate(exp, source="exp.yaml", mlflow=True)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("exp.yaml: ")
    assert f"pip install 'compaudit[{module}]'" in msg
    if module == "mlflow":  # a run logs nothing to MLflow itself: it does not need the package
        validate(exp)


def test_an_attack_whose_package_is_missing_is_refused_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from compaudit.attacks import ATTACKS

    needy = [n for n in ATTACKS.names() if "torchattacks" in ATTACKS.requirements(n)]
    assert needy, "the torchattacks-backed attacks declare their extra"
    cfg = tiny_config(
        probes=[
            {"name": "adversarial", "params": {"samples": 8, "attacks": [{"attack": needy[0], "eps": [0.1]}]}}
        ]
    )
    exp = Experiment.from_dict(cfg)
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(ConfigError) as info:
        validate(exp, source="exp.yaml")
    msg = str(info.value)
    assert msg.startswith("exp.yaml: probes[0].params.attacks[0].attack: "), msg
    assert "attacks" in msg and "\n" not in msg
