"""The experiment file's schema: YAML in, a typed :class:`Experiment` out.

This module is a leaf of the types layer: it imports no plugin registry and no integration, so
training and compression can import :class:`TrainSpec` and :class:`PGDSpec` from it without
pulling in the plugins. It checks what the schema alone can check (types, ranges, unknown fields,
duplicate names, paths resolved against the file's folder). What needs the plugins (that every
named data set, model, method, probe and attack exists, that each plugin's parameters validate
against its ``Params`` model, the probes' ``check_experiment`` hooks, optional dependencies being
installed) is checked one layer up, by :mod:`compaudit.run.validate`, whose
:func:`~compaudit.run.validate.load_experiment` is what the command line and the API use.

Every error names the field path (``variants[1].steps[0].params.sparsity``) and the problem on
one line.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compaudit.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

#: a tracking URI's scheme (``file:``, ``sqlite:``, ``http:``...); a value without one is a folder
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
#: tracking stores MLflow names without a scheme
_NAMED_STORES = frozenset({"databricks", "databricks-uc", "uc"})


def is_uri(text: str) -> bool:
    """Whether ``text`` names an MLflow tracking store by URI (``scheme:...``) or by name
    (``databricks``) rather than by a folder. Part of the schema because a folder is resolved
    against the experiment file's folder when the file is read."""
    return bool(_URI_SCHEME.match(text)) or text in _NAMED_STORES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    """Which data set, where its files are, and its options."""

    name: str = "digits"
    root: Path | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class DomainSpec(DataSpec):
    """A data set with the same classes as the source: a target domain of the ``shift`` probe, or
    one source of a multi-source experiment (seed 001: Office-31's amazon, webcam and dslr).

    ``split`` says which images of it a probe evaluates: ``all`` (seed 001 tests on the entire
    target domain) or one split (``test`` for a styled copy of the source's own data set, whose
    other splits hold the training images)."""

    split: Literal["all", "train", "val", "test"] = "all"


class PGDSpec(_Strict):
    """The PGD attack used by adversarial training and fine-tuning (seed 002: L-inf, 20 steps,
    step 0.01, eps 0.1 on Fashion-MNIST and 8/255 on CIFAR-10)."""

    eps: float = Field(default=8 / 255, gt=0.0, le=1.0)
    step_size: float = Field(default=0.01, gt=0.0, le=1.0)
    steps: int = Field(default=20, ge=1, le=1000)
    random_start: bool = True


class TrainSpec(_Strict):
    """Hyper-parameters of the one training loop."""

    epochs: int = Field(default=10, ge=0, le=10_000)
    batch_size: int = Field(default=64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=5e-4, ge=0.0)
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    milestones: list[int] = Field(default_factory=list, description="epochs where the step schedule decays")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: standard (cross-entropy) or adversarial (PGD, seed 002: a robust model, or adversarial
    #: fine-tuning)
    objective: Literal["standard", "adversarial"] = "standard"
    pgd: PGDSpec = Field(default_factory=PGDSpec)


class ModelSpec(_Strict):
    """The base model: a registered name or ``package.module:function``, and its weights."""

    name: str = "vgg6"
    checkpoint: Path | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    train: TrainSpec = Field(default_factory=TrainSpec)


class FinetuneSpec(TrainSpec):
    """Recovery fine-tuning: ``standard`` (cross-entropy) or ``adversarial`` (PGD, seed 002)."""

    epochs: int = Field(default=1, ge=0, le=10_000)
    lr: float = Field(default=0.01, gt=0.0)


class StepSpec(_Strict):
    """One compression step: a registered method, its parameters, optional fine-tuning after it."""

    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    finetune: FinetuneSpec | None = None


class SweepSpec(_Strict):
    """Expand a variant into one variant per level of one step parameter (seed 002, Figure 1).

    ``{step: 0, param: sparsity, values: [0.1, 0.5, 0.9]}`` makes ``NAME@0.1``, ``NAME@0.5``, ...
    """

    step: int = Field(default=0, ge=0)
    param: str
    values: list[float | int | str] = Field(min_length=1)
    #: which end of ``values`` compresses more; default: lower for parameters named ``bits``
    compress_more: Literal["higher", "lower"] | None = None

    @property
    def direction(self) -> str:
        if self.compress_more is not None:
            return self.compress_more
        return "lower" if "bits" in self.param else "higher"


class SelectSpec(_Strict):
    """Pick the most compressed level of a sweep whose accuracy stays within ``within`` (a share,
    0.05 = 5 points) of the baseline's: seed 000's 5% rule, seed 002's matched levels. Chosen on the
    validation split by default, so the test split stays unseen."""

    within: float = Field(default=0.05, ge=0.0, le=1.0)
    split: Literal["val", "test"] = "val"
    #: compare with this variant's accuracy instead of the baseline's (seed 002 matches the pruning
    #: level to the INT8 variant's accuracy)
    match: str | None = None


class VariantSpec(_Strict):
    """A variant: the base model, a chain of compression steps, optional fine-tuning."""

    name: str
    steps: list[StepSpec] = Field(min_length=1)
    finetune: FinetuneSpec | None = None
    sweep: SweepSpec | None = None
    select: SelectSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> VariantSpec:
        if self.finetune is not None and self.steps[-1].finetune is not None:
            raise ValueError("finetune: give it once, either for the variant or for its last step")
        if self.sweep is not None and self.sweep.step >= len(self.steps):
            raise ValueError(f"sweep.step: {self.sweep.step} but the variant has {len(self.steps)} step(s)")
        if self.select is not None and self.sweep is None:
            raise ValueError("select: needs a sweep to select from")
        return self

    def chain(self) -> list[StepSpec]:
        """The steps, with the variant-level fine-tuning attached to the last one."""
        if self.finetune is None:
            return list(self.steps)
        last = self.steps[-1].model_copy(update={"finetune": self.finetune})
        return [*self.steps[:-1], last]

    def expand(self) -> list[VariantSpec]:
        """One variant per sweep level (or just this one)."""
        if self.sweep is None:
            return [self]
        out: list[VariantSpec] = []
        for value in self.sweep.values:
            steps = list(self.steps)
            st = steps[self.sweep.step]
            steps[self.sweep.step] = st.model_copy(update={"params": {**st.params, self.sweep.param: value}})
            out.append(
                self.model_copy(update={"name": f"{self.name}@{value}", "steps": steps, "sweep": None})
            )
        return out

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("use letters, digits and _ . + - only, starting with a letter or digit")
        if v == "baseline":
            raise ValueError("'baseline' is reserved for the uncompressed model")
        return v


class ProbeSpec(_Strict):
    """A probe to run on every variant, with its parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


#: the one-line error of logging to MLflow without the ``mlflow`` extra installed
MLFLOW_EXTRA = "MLflow logging needs the mlflow extra: pip install 'compaudit[mlflow]'"


class MlflowSpec(_Strict):
    """Log the run to MLflow when ``compaudit run`` finishes (needs the ``mlflow`` extra; see
    :mod:`compaudit.integrations.mlflow`). ``mlflow: true`` is ``mlflow: {}``: every default.

    Where and how a run is logged changes no result, so no result key depends on it."""

    #: tracking URI (``file:...``, ``sqlite:///...``, ``http://...``) or a folder, taken as a file
    #: store relative to the experiment file; default ``MLFLOW_TRACKING_URI``, else ``./mlruns``
    tracking_uri: str | None = Field(default=None, min_length=1)
    #: the MLflow experiment; default the experiment's ``name``
    experiment: str | None = Field(default=None, min_length=1, max_length=500)


class RaySpec(_Strict):
    """Where and how ``executor: ray`` runs its tasks (see :mod:`compaudit.run.ray`). Like
    ``mlflow``, it changes no result, so no result key depends on it."""

    #: an existing cluster (``ray://HOST:10001``, ``HOST:6379`` or ``auto``); default: start a local
    #: one for the run and stop it afterwards
    address: str | None = Field(default=None, min_length=1)
    #: CPUs of the local cluster started for the run; default: every CPU of this machine
    num_cpus: int | None = Field(default=None, ge=1)
    #: CPUs each task asks for (and the torch threads it uses)
    cpus_per_task: int = Field(default=1, ge=1)
    #: GPUs each task asks for (fractions share a GPU); set ``device: cuda`` to use them
    gpus_per_task: float = Field(default=0.0, ge=0.0)


@dataclass(frozen=True)
class CellSpec:
    """One single-source, single-seed experiment of a file (see :meth:`Experiment.cell_specs`):
    the ``source`` domain its variants train on (``""`` unless the file has several sources) and
    the ``seed`` of its run (``None`` unless the file has several seeds); together with a variant's
    name they are its :class:`~compaudit.results.VariantId`."""

    source: str
    seed: int | None
    experiment: Experiment

    @property
    def prefix(self) -> str:
        """What precedes the names of the cell's variants: ``""``, ``"amazon/"``, ``"seed1/"`` or
        ``"amazon/seed1/"`` (the :attr:`~compaudit.results.VariantId.label` of its variants)."""
        parts = [p for p in (self.source, None if self.seed is None else f"seed{self.seed}") if p]
        return "".join(f"{p}/" for p in parts)


def _default_probes() -> list[ProbeSpec]:
    return [ProbeSpec(name="accuracy"), ProbeSpec(name="efficiency")]


class Experiment(_Strict):
    """A whole experiment, as written in the YAML file."""

    name: str = "experiment"
    description: str = ""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    #: repeat the whole experiment once per seed (seed 002 reports mean ± std over 3 runs): one
    #: baseline and one set of variants per seed, named ``seedN/VARIANT``; replaces ``seed``
    seeds: list[int] | None = Field(default=None, min_length=1)
    device: str = "cpu"
    output: Path | None = None
    data: DataSpec = Field(default_factory=DataSpec)
    #: other data sets with the source's classes, by name (targets of the ``shift`` probe)
    domains: dict[str, DomainSpec] = Field(default_factory=dict)
    #: train and compress on each of these domains in turn (one baseline and one set of variants
    #: per source, named ``SOURCE/VARIANT``); replaces ``data``. Seed 001's six Office-31 pairs are
    #: ``sources: [amazon, webcam, dslr]`` with the shift probe's default targets.
    sources: list[str] | None = Field(default=None, min_length=1)
    model: ModelSpec = Field(default_factory=ModelSpec)
    variants: list[VariantSpec] = Field(default_factory=list)
    probes: list[ProbeSpec] = Field(default_factory=_default_probes, min_length=1)
    #: log the run to MLflow after ``compaudit run`` (``true`` or a mapping; default: do not)
    mlflow: MlflowSpec | None = None
    #: run variants and probes in this process (``local``) or as Ray tasks (``ray``)
    executor: Literal["local", "ray"] = "local"
    ray: RaySpec = Field(default_factory=RaySpec)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("use letters, digits and _ . + - only, starting with a letter or digit")
        return v

    @field_validator("mlflow", mode="before")
    @classmethod
    def _mlflow(cls, v: Any) -> Any:
        if v is True:
            return {}
        if v is False:
            return None
        if v is not None and not isinstance(v, dict | MlflowSpec):
            raise ValueError("give true, false, or a mapping with tracking_uri and experiment")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.match(r"^(cpu|cuda(:\d+)?|mps|auto)$", v):
            raise ValueError("use cpu, cuda, cuda:N, mps or auto")
        return v

    @model_validator(mode="after")
    def _unique(self) -> Experiment:
        for d in self.domains:
            if not NAME_RE.match(d) or d == "baseline":
                raise ValueError(
                    f"domains.{d}: use letters, digits and _ . + - only, starting with a letter or digit"
                )
        if self.sources is not None:
            if "data" in self.model_fields_set:
                raise ValueError("sources: give either data or sources (each source is one of the domains)")
            for i, src in enumerate(self.sources):
                if src not in self.domains:
                    known = ", ".join(self.domains) or "none are defined"
                    raise ValueError(f"sources[{i}]: {src!r} is not one of the domains ({known})")
            if len(set(self.sources)) != len(self.sources):
                raise ValueError("sources: a domain is listed twice")
        if self.seeds is not None:
            if "seed" in self.model_fields_set:
                raise ValueError("seeds: give either seed or seeds")
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError("seeds: a seed is listed twice")
            if any(not 0 <= x <= 2**31 - 1 for x in self.seeds):
                raise ValueError("seeds: each seed is an integer from 0 to 2**31 - 1")
        seen: set[str] = set()
        for i, v in enumerate(self.variants):
            for e in v.expand():
                if e.name in seen:
                    raise ValueError(f"variants[{i}].name: duplicate variant name {e.name!r}")
                seen.add(e.name)
        seen.clear()
        for i, p in enumerate(self.probes):
            if p.name in seen:
                raise ValueError(f"probes[{i}].name: probe {p.name!r} is listed twice")
            seen.add(p.name)
        return self

    def concrete_variants(self) -> list[VariantSpec]:
        """Every variant to build, sweeps expanded, in the order of the file."""
        return [e for v in self.variants for e in v.expand()]

    @property
    def source(self) -> str | None:
        """The name of the domain this (single-source) experiment trains on, if it is one."""
        return self.sources[0] if self.sources is not None and len(self.sources) == 1 else None

    def cell_specs(self) -> list[CellSpec]:
        """The single-source, single-seed experiments this file stands for, each with who its
        variants are: one cell; or one per source (``source`` set when there are several) and one
        per seed (``seed`` set when there are several)."""
        sources: list[tuple[str, Experiment]]
        if self.sources is None:
            sources = [("", self)]
        else:
            sources = []
            for src in self.sources:
                d = self.domains[src]
                data = DataSpec(name=d.name, root=d.root, params=d.params)
                cell = self.model_copy(update={"data": data, "sources": [src]})
                sources.append((src if len(self.sources) > 1 else "", cell))
        if self.seeds is None:
            return [CellSpec(src, None, cell) for src, cell in sources]
        many = len(self.seeds) > 1
        return [
            CellSpec(src, s if many else None, cell.model_copy(update={"seed": s, "seeds": None}))
            for src, cell in sources
            for s in self.seeds
        ]

    def cells(self) -> list[tuple[str, Experiment]]:
        """:meth:`cell_specs` as ``(prefix of the variant names, experiment)``: ``[("", self)]``, or
        one ``("SOURCE/", ...)`` per source and one ``("seedN/", ...)`` per seed
        (``"SOURCE/seedN/"`` with both)."""
        return [(c.prefix, c.experiment) for c in self.cell_specs()]

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "experiment", base_dir: Path | None = None) -> Experiment:
        """Check a parsed YAML document against the schema; relative paths resolve against
        ``base_dir``. The plugins are not consulted: :func:`compaudit.run.validate.validate`
        checks the result against them."""
        if raw is None:
            raise ConfigError(f"{source}: the experiment file is empty")
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{source}: the top level must be a mapping of fields, got {type(raw).__name__}"
            )
        try:
            exp = cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {format_validation_error(exc)}") from None
        return exp._resolve_paths(base_dir)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Experiment:
        """Read an experiment file and check it against the schema (see :meth:`from_dict`)."""
        p = Path(path)
        return cls.from_yaml_text(read_experiment_text(p), source=str(p), base_dir=p.resolve().parent)

    @classmethod
    def from_yaml_text(
        cls, text: str, *, source: str = "experiment", base_dir: Path | None = None
    ) -> Experiment:
        """Parse YAML ``text`` and check it against the schema (see :meth:`from_dict`)."""
        return cls.from_dict(parse_yaml(text, source=source), source=source, base_dir=base_dir)

    def _resolve_paths(self, base_dir: Path | None) -> Experiment:
        if base_dir is None:
            return self

        def fix(p: Path | None) -> Path | None:
            return None if p is None else resolve_path(p, base_dir)

        data = self.data.model_copy(update={"root": fix(self.data.root)})
        model = self.model.model_copy(update={"checkpoint": fix(self.model.checkpoint)})
        domains = {n: d.model_copy(update={"root": fix(d.root)}) for n, d in self.domains.items()}
        update: dict[str, Any] = {"data": data, "model": model, "domains": domains}
        uri = self.mlflow.tracking_uri if self.mlflow is not None else None
        if self.mlflow is not None and uri is not None and not is_uri(uri):  # a folder
            update["mlflow"] = self.mlflow.model_copy(update={"tracking_uri": str(fix(Path(uri)))})
        return self.model_copy(update=update)

    def to_yaml(self) -> str:
        # without `mlflow: null` (and the executor and its Ray settings where left at their
        # defaults), the file of a run reads as it did before these fields existed (``compaudit
        # compare`` diffs these files)
        exclude: set[str] = {"mlflow"} if self.mlflow is None else set()
        exclude.add("seeds" if self.seeds is None else "seed")
        if self.executor == "local":
            exclude.add("executor")
        if self.ray == RaySpec():
            exclude.add("ray")
        return str(yaml.safe_dump(self.model_dump(mode="json", exclude=exclude or None), sort_keys=False))


def resolve_path(path: Path, base_dir: Path) -> Path:
    """``path`` as written in an experiment file: ``~`` expanded, relative to the file's folder."""
    with contextlib.suppress(RuntimeError):  # ~user of an unknown user: kept, named when opened
        path = path.expanduser()
    return path if path.is_absolute() else base_dir / path


def read_experiment_text(path: Path) -> str:
    """The text of experiment file ``path``; a one-line :class:`ConfigError` if it cannot be read."""
    if path.is_dir():
        raise ConfigError(f"experiment file {str(path)!r} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"experiment file {str(path)!r} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"experiment file {str(path)!r} is not UTF-8 text: {exc.reason}") from None


def parse_yaml(text: str, *, source: str = "experiment") -> Any:
    """The YAML document in ``text``; a one-line :class:`ConfigError` naming the line if malformed."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["unreadable"])[0]
        raise ConfigError(f"{source}:{where}: malformed YAML: {' '.join(str(problem).split())}") from None


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line: the path of the first failing field (under ``prefix``) and the problem."""
    err = exc.errors()[0]
    loc = prefix
    for part in err["loc"]:
        if isinstance(part, int):
            loc += f"[{part}]"
        else:
            loc += ("." if loc else "") + str(part)
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    if err["type"] == "missing":
        msg = "field required"
    inp = err.get("input")
    if err["type"] not in ("missing", "extra_forbidden") and isinstance(inp, str | int | float | bool):
        msg += f" (got {inp!r})"
    n = len(exc.errors())
    more = f" (and {n - 1} more problem{'s' if n > 2 else ''})" if n > 1 else ""
    line = f"{msg}{more}" if not loc else f"{loc}: {msg}{more}"
    return " ".join(line.splitlines())  # a key or a validator's message may hold a line break
