"""Export to JSON, CSV and Parquet and read back the same table; ``compaudit list`` filters."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from compaudit import Experiment, Metric, ProbeResult, Store, run_experiment
from compaudit.cli import export_rows as cli_export_rows
from compaudit.export import FORMATS, Format, export_frame, export_rows, load_export, rows_frame, write_export
from compaudit.records import CORE_COLUMNS, HEAD_COLUMNS
from compaudit.results import VariantId
from tests.conftest import assert_one_line_error, run_cli, tiny_config

SUFFIX = {"csv": ".csv", "json": ".json", "parquet": ".parquet"}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny experiment: baseline + one pruned variant x accuracy and efficiency (~3 s)."""
    cfg = tiny_config(
        variants=[
            {"name": "pruned50", "steps": [{"method": "prune_unstructured", "params": {"sparsity": 0.5}}]}
        ]
    )
    out = tmp_path_factory.mktemp("export") / "real"
    summary = run_experiment(Experiment.from_dict(cfg), out)
    assert not summary.failed
    return out


#: params of every awkward kind: a key that is an int for one probe and a str for another, ints and
#: floats in one key, bools, None, lists, a reserved name, text that looks like nothing special
MIXED_METRICS: list[tuple[str, str, float, dict[str, Any]]] = [
    ("base", "adv", 0.5, {"attack": "pgd", "eps": 8, "layer": 3, "flag": True, "note": None}),
    ("base", "adv", math.nan, {"attack": "fgsm", "eps": 0.25, "layer": "fc", "flag": False}),
    ("base", "emb", 1.0, {"layer": 2, "sizes": [1, 8], "value": "clash", "label": 'a,b "q"'}),
    ("small", "emb", -3.0, {"layer": True, "count": 7}),
    ("small", "adv", 2.0, {}),
]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder written straight into the store, with params of mixed types and a NaN value."""
    out = tmp_path_factory.mktemp("export") / "mixed"
    plan = []
    with Store(out, create=True) as store:
        for i, (variant, probe, value, params) in enumerate(MIXED_METRICS):
            key = f"k{i}"
            res = ProbeResult([Metric(f"m{i}", value, params, "u" if i % 2 else "", noisy=i == 3)])
            store.put_result(
                key, variant_key=variant, variant=variant, probe=probe, spec={}, result=res, seconds=0.0
            )
            plan.append({"variant": variant, "probe": probe, "key": key, "variant_key": variant})
        store.set_meta(name="mixed", status="complete", plan=plan)
    return out


@pytest.fixture(params=["real_run", "mixed_run"])
def run_dir(request: pytest.FixtureRequest) -> Path:
    path: Path = request.getfixturevalue(request.param)
    return path


def test_export_rows_is_reexported_by_the_cli() -> None:
    assert cli_export_rows is export_rows


def test_frame_has_one_column_per_key_in_order(real_run: Path) -> None:
    rows = export_rows(real_run)
    frame = export_frame(real_run)
    assert len(frame) == len(rows)
    assert list(frame.columns[:7]) == [
        "variant",
        "variant_source",
        "variant_seed",
        "variant_name",
        "probe",
        "metric",
        "value",
    ]
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    assert list(frame.columns) == keys
    assert {"split", "batch_size", "threads", "unit", "noisy"} <= set(frame.columns)
    assert str(frame["value"].dtype) == "float64" and str(frame["noisy"].dtype) == "bool"
    assert str(frame["variant"].dtype) == "string" and str(frame["split"].dtype) == "string"
    assert str(frame["variant_seed"].dtype) == "Int64" and frame["variant_seed"].isna().all()
    assert (frame["variant_name"] == frame["variant"]).all() and (frame["variant_source"] == "").all()
    assert str(frame["batch_size"].dtype) == "Int64"
    latency = frame[frame["metric"] == "latency"]
    assert latency["split"].isna().all() and latency["noisy"].all()
    assert frame[frame["metric"] == "accuracy"]["batch_size"].isna().all()
    assert frame["value"].tolist() == [r["value"] for r in rows]


def test_mixed_types_follow_the_documented_normalisation(mixed_run: Path) -> None:
    frame = export_frame(mixed_run)
    dtypes = {c: str(t) for c, t in frame.dtypes.items()}
    assert dtypes == {
        "variant": "string",
        "variant_source": "string",
        "variant_seed": "Int64",
        "variant_name": "string",
        "probe": "string",
        "metric": "string",
        "value": "float64",
        "attack": "string",
        "eps": "Float64",  # int and float: one float column
        "layer": "string",  # int, str and bool: text, non-strings as JSON
        "flag": "boolean",
        "note": "string",  # None everywhere
        "unit": "string",
        "noisy": "bool",
        "sizes": "string",  # a list: JSON
        "param_value": "string",  # a param may not overwrite a column of the table
        "label": "string",
        "count": "Int64",
    }
    assert frame["layer"].tolist() == ["3", "fc", "2", "true", pd.NA]
    assert frame["eps"].tolist() == [8.0, 0.25, pd.NA, pd.NA, pd.NA]
    assert frame["sizes"].tolist()[2] == "[1, 8]"
    assert math.isnan(frame["value"][1])
    assert frame["note"].isna().all()
    assert frame["unit"].tolist() == ["", "u", "", "u", ""]


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_then_load_gives_the_same_table(
    run_dir: Path, fmt: Format, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sub" / f"table{SUFFIX[fmt]}"
    code, out, err = run_cli(["export", str(run_dir), "--format", fmt, "--out", str(path)], capsys)
    assert code == 0, err
    assert out.strip() == str(path)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    back = load_export(str(path))
    pd.testing.assert_frame_equal(back, export_frame(run_dir), check_exact=True)
    assert back.equals(export_frame(str(run_dir)))  # what the README promises


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_finds_the_format_without_a_suffix(mixed_run: Path, fmt: Format, tmp_path: Path) -> None:
    path = tmp_path / "table"
    write_export(mixed_run, path, fmt)
    pd.testing.assert_frame_equal(load_export(path), export_frame(mixed_run))
    pd.testing.assert_frame_equal(load_export(path, format=fmt), export_frame(mixed_run))


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_file_holds_what_export_prints(
    mixed_run: Path, fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, printed, _ = run_cli(["export", str(mixed_run), "--format", fmt], capsys)
    assert code == 0
    path = tmp_path / f"t.{fmt}"
    run_cli(["export", str(mixed_run), "--format", fmt, "--out", str(path)], capsys)
    assert path.read_text() == printed
    if fmt == "json":  # unchanged: the records as the store gives them, types kept
        assert json.loads(printed) == json.loads(json.dumps(export_rows(mixed_run)))


def test_parquet_without_out_is_one_line(real_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["export", str(real_run), "--format", "parquet"], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, "parquet is binary: give --out FILE")


def test_unknown_format_is_one_line_and_writes_nothing(
    real_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["export", str(real_run), "-f", "xlsx", "-o", str(tmp_path / "t.xlsx")], capsys)
    assert code == 2
    assert_one_line_error(err, "'xlsx'", "csv, json, parquet")
    assert list(tmp_path.iterdir()) == []


def test_empty_run_round_trips(tmp_path: Path) -> None:
    run = tmp_path / "empty"
    Store(run, create=True).close()
    want = export_frame(run)
    assert list(want.columns) == list(CORE_COLUMNS) and want.empty
    for fmt in FORMATS:
        write_export(run, tmp_path / f"t{SUFFIX[fmt]}", fmt)
        pd.testing.assert_frame_equal(load_export(tmp_path / f"t{SUFFIX[fmt]}"), want)


def test_load_export_errors(tmp_path: Path) -> None:
    from compaudit import CompauditError

    with pytest.raises(CompauditError, match="does not exist"):
        load_export(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(CompauditError, match="malformed JSON"):
        load_export(bad)
    bad.write_text('{"a": 1}')
    with pytest.raises(CompauditError, match="list of records"):
        load_export(bad)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(CompauditError, match="Parquet"):
        load_export(broken)


def test_rows_frame_of_plain_records() -> None:
    rows = [
        {"variant": "a", "probe": "p", "metric": "m", "value": None, "k": 1, "unit": "", "noisy": False},
        {"variant": "b", "probe": "p", "metric": "m", "value": 2, "k": "x", "unit": "s", "noisy": True},
    ]
    frame = rows_frame(rows)
    assert frame["k"].tolist() == ["1", "x"]
    assert math.isnan(frame["value"][0]) and frame["value"][1] == 2.0


#: text params that look like something else: digits' class names, a bool, nothing, a number, a list
LOOKALIKES = ["0", "7", "True", "", "nan", "0.5", "[1]", "-", " 1", 'say "hi", then\nleave\r\n']


@pytest.fixture(scope="module")
def lookalike_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per-class accuracies whose class names are text that looks like numbers, under variants with
    and without an identity (a source and a seed), and a metric with no value."""
    out = tmp_path_factory.mktemp("export") / "lookalike"
    plan = []
    with Store(out, create=True) as store:
        for vkey, ident in (("v0", VariantId("int8", "amazon", 0)), ("v1", None)):
            label = ident.label if ident else "baseline"
            store.put_variant(vkey, name=label, parent=None, spec={}, lineage=[], info={}, identity=ident)
            metrics = [
                Metric("recall", i / 10, {"class": c, "split": "test"}, "fraction")
                for i, c in enumerate(LOOKALIKES)
            ]
            metrics.append(Metric("nll", math.nan, {"split": "test"}, "nats"))
            key = f"k-{vkey}"
            store.put_result(
                key,
                variant_key=vkey,
                variant=label,
                probe="classes",
                spec={},
                result=ProbeResult(metrics),
                seconds=0.0,
            )
            plan.append({"variant": label, "probe": "classes", "key": key, "variant_key": vkey})
        store.set_meta(name="lookalike", status="complete", plan=plan)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_that_looks_like_a_number_survives_every_format(
    lookalike_run: Path, fmt: Format, tmp_path: Path
) -> None:
    """The digits' class names "0"..."9" came back from CSV as integers (issue 15): each column now
    comes back as the type the export declares."""
    path = tmp_path / f"t{SUFFIX[fmt]}"
    write_export(lookalike_run, path, fmt)
    want = export_frame(lookalike_run)
    back = load_export(path)
    pd.testing.assert_frame_equal(back, want, check_exact=True)
    assert str(back["class"].dtype) == "string"
    assert back["class"].tolist()[: len(LOOKALIKES)] == LOOKALIKES
    assert back["class"].isna().tolist()[len(LOOKALIKES)] is True  # the nll row has no class: missing, not ""
    assert back["variant_seed"].tolist()[0] == 0 and back["variant_seed"].isna().tolist()[-1] is True
    assert back["variant_source"].tolist()[0] == "amazon" and back["variant_name"].tolist()[0] == "int8"
    assert math.isnan(back["value"].tolist()[len(LOOKALIKES)])


def test_the_csv_declares_its_column_types_on_its_first_line(lookalike_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    write_export(lookalike_run, path, "csv")
    text = path.read_bytes().decode("utf-8")
    first, header = text.split("\n")[:2]
    assert first.startswith("# compaudit-export types: ")
    types = json.loads(first.removeprefix("# compaudit-export types: "))
    assert types == {
        **{
            c: t
            for c, t in zip(
                HEAD_COLUMNS, ["string"] * 2 + ["Int64"] + ["string"] * 3 + ["float64"], strict=True
            )
        },
        "class": "string",
        "split": "string",
        "unit": "string",
        "noisy": "bool",
    }
    assert header == ",".join(types)
    assert "\r\n" in text  # a line break inside a value is written as it is
    # a plain CSV reader that skips the first line reads the table as it is written
    plain = pd.read_csv(path, skiprows=1, keep_default_na=False, dtype=str)
    assert list(plain.columns) == list(types) and len(plain) == len(export_frame(lookalike_run))
    assert plain["class"].tolist()[: len(LOOKALIKES)] == LOOKALIKES


def test_a_csv_without_the_types_line_is_read_as_it_looks(tmp_path: Path) -> None:
    """CSV files written before the types line existed read as they did: each cell as it looks."""
    old = tmp_path / "old.csv"
    old.write_text(
        "variant,probe,metric,value,class,flag,unit,noisy\nb,classes,recall,0.5,0,True,fraction,False\n"
    )
    back = load_export(old)
    assert str(back["class"].dtype) == "Int64" and back["class"].tolist() == [0]
    assert str(back["flag"].dtype) == "boolean" and back["value"].tolist() == [0.5]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("# compaudit-export types: {oops\nvariant\n", "malformed column types on line 1"),
        ('# compaudit-export types: {"variant": "text"}\nvariant\n', "unknown column type 'text'"),
        ('# compaudit-export types: {"variant": "string"}\nmetric\n', "does not name the columns"),
        ('# compaudit-export types: {"a": "string", "b": "Int64"}\na,b\nx\n', "record 3 has 1 fields, not 2"),
        (
            '# compaudit-export types: {"a": "string", "b": "Int64"}\na,b\nx,1.5\n',
            "record 3: invalid literal",
        ),
        ('# compaudit-export types: {"a": "string", "b": "bool"}\na,b\nx,\n', "record 3: an empty cell"),
        ('# compaudit-export types: {"a": "string", "b": "boolean"}\na,b\nx,yes\n', "not True or False"),
        ('# compaudit-export types: {"a": "string"}\na\n"open\n', "malformed CSV on line 3"),
    ],
)
def test_a_malformed_typed_csv_is_one_error_naming_the_line(tmp_path: Path, text: str, needle: str) -> None:
    from compaudit import CompauditError

    bad = tmp_path / "bad.csv"
    bad.write_bytes(text.encode())
    with pytest.raises(CompauditError, match=re.escape(needle)):
        load_export(bad)


# ---------------------------------------------------------------- compaudit list


def _ts(day: str, hour: int = 12) -> float:
    return dt.datetime.fromisoformat(f"{day}T{hour:02d}:00").timestamp()


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Three run folders with given names, statuses and times (no models trained)."""
    metas: dict[str, dict[str, Any]] = {
        "a": {
            "name": "cifar-prune",
            "status": "complete",
            "started": _ts("2026-01-10"),
            "finished": _ts("2026-01-11"),
        },
        "b": {"name": "cifar-quant", "status": "failed", "started": _ts("2026-02-01")},
        "c": {"name": "mnist-prune", "status": "running", "started": _ts("2026-03-05", 0)},
    }
    for folder, meta in metas.items():
        with Store(tmp_path / folder, create=True) as s:
            s.set_meta(**meta)
    (tmp_path / "not-a-run").mkdir()
    return tmp_path


def listed(out: str) -> list[str]:
    lines = out.splitlines()
    assert lines and lines[0].startswith("run ")
    return [Path(ln.split()[0]).name for ln in lines[1:]]


@pytest.mark.parametrize(
    ("args", "want"),
    [
        ([], ["a", "b", "c"]),
        (["--name", "cifar-*"], ["a", "b"]),
        (["--name", "*prune"], ["a", "c"]),
        (["--name", "cifar-prune"], ["a"]),
        (["--status", "failed"], ["b"]),
        (["--status", "complete", "--name", "*prune"], ["a"]),
        (["--since", "2026-01-11"], ["a", "b", "c"]),  # a finished that day
        (["--since", "2026-01-12"], ["b", "c"]),
        (["--since", "2026-03-05"], ["c"]),  # started at midnight: on the date counts
        (["--since", "2026-02-01", "--status", "running"], ["c"]),
    ],
)
def test_list_filters(
    runs: Path, args: list[str], want: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["list", str(runs), *args], capsys)
    assert code == 0, err
    assert listed(out) == want


def test_list_filters_a_single_run_folder(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert listed(run_cli(["list", str(runs / "b"), "--status", "failed"], capsys)[1]) == ["b"]
    code, out, _ = run_cli(["list", str(runs / "b"), "--status", "complete"], capsys)
    assert code == 0 and out.strip() == f"no runs under {runs / 'b'} match the filters"


def test_list_with_nothing_matching(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["list", str(runs), "--name", "imagenet*"], capsys)
    assert code == 0 and out.strip() == f"no runs under {runs} match the filters"
    code, out, _ = run_cli(["list", str(runs / "not-a-run")], capsys)
    assert code == 0 and out.strip() == f"no runs under {runs / 'not-a-run'}"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--status", "done"], ("--status", "'done'", "complete, failed, running")),
        (["--since", "2026-13-01"], ("--since", "'2026-13-01'", "YYYY-MM-DD")),
        (["--since", "yesterday"], ("--since", "YYYY-MM-DD")),
        (["--since", "20260101"], ("--since", "YYYY-MM-DD")),
    ],
)
def test_list_bad_filters_are_one_line(
    runs: Path, args: list[str], needles: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["list", str(runs), *args], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, *needles)
