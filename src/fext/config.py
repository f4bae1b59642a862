"""The run configuration: typed, frozen, validated once.

Defaults (the dataclasses below) → ``settings/configurations.json`` → ``--set key.path=value``
overrides are merged once by :func:`load_config`, validated once, and passed down as a frozen
:class:`Config`. Attribute names are the JSON keys of the seed (``training.EPOCHS``, ...).
Every problem is a :class:`~fext.errors.ConfigError` naming the key path and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fext.errors import ConfigError


def _check(allowed: str, test: typing.Callable[[Any], bool]) -> dict:
    """Field metadata: a predicate on the value and the words that describe what is allowed."""
    return {"allowed": allowed, "test": test}


def _key(default: Any, allowed: str | None = None, test: typing.Callable[[Any], bool] | None = None):
    return field(default=default, metadata=_check(allowed, test) if test else {})


@dataclass(frozen=True)
class DatasetConfig:
    SAMPLE_SIZE: float = _key(1.0, "a fraction 0 < x <= 1", lambda v: 0 < v <= 1)
    """Fraction of the dataset's images used, drawn with SEED."""
    VALIDATION_SIZE: float = _key(0.1, "a fraction 0 <= x < 1", lambda v: 0 <= v < 1)
    """Fraction of the images held out for validation."""
    IMG_AUGMENT: bool = True
    """Random flips, brightness and contrast on training batches."""
    SPLIT_SEED: int = _key(76, "an integer >= 0", lambda v: v >= 0)
    """Seed of the train/validation split (stable when images are added)."""


@dataclass(frozen=True)
class ModelConfig:
    PRESET: str = _key("base", 'one of "base", "small"', lambda v: v in ("base", "small"))
    """Architecture preset: "base" (VGG16-like, ~20M parameters) or "small" (fast demos)."""
    IMG_SIZE: int = _key(128, "a multiple of 64 between 64 and 1024", lambda v: 64 <= v <= 1024 and v % 64 == 0)
    """Input width and height in pixels."""
    JIT_COMPILE: bool = False
    """Compile the model with torch.compile, for training and for `fext encode` (slow first batch, then faster)."""
    JIT_BACKEND: str = _key(
        "inductor", 'one of "inductor", "aot_eager", "eager", "cudagraphs"',
        lambda v: v in ("inductor", "aot_eager", "eager", "cudagraphs"),
    )
    """torch.compile backend."""


@dataclass(frozen=True)
class DeviceConfig:
    DEVICE: str = _key("auto", 'one of "auto", "GPU", "CPU"', lambda v: v in ("auto", "GPU", "CPU"))
    """"auto" uses cuda:DEVICE_ID when PyTorch sees a CUDA GPU, else the CPU, and names it in the run's first log line; "GPU" asks for cuda:DEVICE_ID and warns when there is none (then runs on the CPU); "CPU" never uses a GPU."""
    DEVICE_ID: int = _key(0, "an integer >= 0", lambda v: v >= 0)
    """Index of the GPU."""
    MIXED_PRECISION: bool = False
    """Autocast: bf16 where supported, else fp16 with a grad scaler."""
    NUM_PROCESSORS: int | str = _key(
        "auto", '"auto" or an integer >= 0 (0 decodes in the main process)',
        lambda v: v == "auto" or (isinstance(v, int) and v >= 0),
    )
    """Worker processes for image decoding. "auto": the CPU cores this process may use (its affinity mask, capped by a container's cgroup CPU quota) less one for the process itself, shared between the processes of a torchrun launch, at most 16; 1 on 2 cores, 0 on one. A number above the usable cores is honoured with a warning."""


@dataclass(frozen=True)
class LRSchedulerConfig:
    INITIAL_LR: float = _key(1e-4, "a number > 0", lambda v: v > 0)
    """Learning rate during the constant phase."""
    CONSTANT_STEPS: int = _key(40000, "an integer >= 0", lambda v: v >= 0)
    """Batches at INITIAL_LR before the decay starts."""
    DECAY_STEPS: int = _key(2000, "an integer >= 1", lambda v: v >= 1)
    """Batches of linear decay down to the floor of 1e-8."""


@dataclass(frozen=True)
class ViewsConfig:
    """The "views" recipe (see the README, Training recipes): two augmented views of every image."""

    RECONSTRUCTION_WEIGHT: float = _key(1.0, "a number >= 0", lambda v: v >= 0)
    """Weight of the MAE reconstruction of each view (the seed's loss)."""
    INVARIANCE_WEIGHT: float = _key(1.0, "a number >= 0", lambda v: v >= 0)
    """Weight of the mean squared difference between the two views' latents (same image, same vector)."""
    VARIANCE_WEIGHT: float = _key(1.0, "a number >= 0", lambda v: v >= 0)
    """Weight of the hinge keeping every latent number's standard deviation over the batch at 1 or more (no collapse)."""
    COVARIANCE_WEIGHT: float = _key(1.0, "a number >= 0", lambda v: v >= 0)
    """Weight of the squared off-diagonal latent covariances (numbers that do not repeat each other)."""
    CROP_MIN_AREA: float = _key(0.3, "a fraction 0 < x <= 1", lambda v: 0 < v <= 1)
    """Smallest fraction of an image's area a view's random resized crop keeps."""
    COLOR_JITTER: float = _key(0.4, "a number in [0, 1)", lambda v: 0 <= v < 1)
    """Brightness, contrast and saturation factors of a view are drawn from U(1 - x, 1 + x)."""
    BLUR: float = _key(0.5, "a probability 0 <= x <= 1", lambda v: 0 <= v <= 1)
    """Probability that a view is halved in resolution and scaled back up (invariance to thumbnails, recompression)."""
    MASK_RATIO: float = _key(0.0, "a fraction 0 <= x < 1", lambda v: 0 <= v < 1)
    """Fraction of a view's 8x8-pixel patches replaced by grey at the input (denoising); the clean view is the target."""
    SHARED_FLIP: bool = True
    """Both views of an image share one random horizontal flip, so the latent's left and right cells are never asked to match mirror images."""
    PROJECTOR_DIM: int = _key(1024, "an integer >= 0", lambda v: v >= 0)
    """Width of the projector, a small MLP used in training only, on whose output the invariance, variance and covariance terms act a second time (besides the latent); 0: no projector."""
    ONE_VIEW_AT_A_TIME: bool = True
    """Backpropagate the two views one after the other, so a step holds the activations of BATCH_SIZE images instead of twice as many (about half the training memory), for the same gradients and one more encoder forward pass over one view; false: both views in one pass (3–10 % faster, twice the activations). model.JIT_COMPILE runs always take both views in one pass."""


RECIPE_NAMES = {"reconstruction": "reconstruction", "seed": "reconstruction"}
"""The names of the plain reconstruction recipe, to the one FeXT uses."""


@dataclass(frozen=True)
class TrainingConfig:
    EPOCHS: int = _key(20, "an integer >= 1", lambda v: v >= 1)
    """Epochs of a run from scratch."""
    ADDITIONAL_EPOCHS: int = _key(10, "an integer >= 1", lambda v: v >= 1)
    """Epochs added by `fext train --resume`."""
    BATCH_SIZE: int = _key(25, "an integer >= 1", lambda v: v >= 1)
    """Images per batch (per process under torchrun)."""
    USE_TENSORBOARD: bool = True
    """Write TensorBoard logs into the checkpoint folder."""
    SAVE_CHECKPOINTS: bool = False
    """Keep one weights file per epoch (the last epoch is always saved)."""
    ACTIVATION_CHECKPOINTING: bool = False
    """Memory first: recompute each encoder and decoder stage in backward instead of keeping its activations, and let the CPU allocator return freed memory: about a third less training memory than the default, for one more forward pass and slower CPU steps (larger batches on small machines)."""
    LR_SCHEDULER: LRSchedulerConfig = field(default_factory=LRSchedulerConfig)
    TIME_BUDGET_MINUTES: float = _key(0.0, "a number >= 0 (0: no budget)", lambda v: v >= 0)
    """Train for about this many minutes (counted over the checkpoint's epochs, validation included) instead of EPOCHS epochs: the epoch that crosses the budget is the last, and the learning rate, fitted to the budget, stays at INITIAL_LR for its first 80 % and falls linearly to 1e-8 at its end (LR_SCHEDULER's steps are not used). A resumed run finishes the budget; a larger budget extends a finished run. 0: no budget."""
    RECIPE: str = _key("views", 'one of "views", "reconstruction" ("seed" is another name for it)',
                       lambda v: v in ("views", *RECIPE_NAMES))
    """"views": reconstruction plus latent invariance between two augmented views of each image (training.VIEWS);
    "reconstruction" (also "seed", the original project's name for it): the MAE reconstruction of IMG_AUGMENT batches, exactly as the original project trained."""
    VIEWS: ViewsConfig = field(default_factory=ViewsConfig)

    def __post_init__(self) -> None:
        # One name inside FeXT: "seed" is read as "reconstruction" (and saved so).
        object.__setattr__(self, "RECIPE", RECIPE_NAMES.get(self.RECIPE, self.RECIPE))


@dataclass(frozen=True)
class AnalysisConfig:
    """Thresholds of `fext analyze`'s problem flags (see the README)."""

    DARK_MEAN: float = _key(30.0, "a number in [0, 255]", lambda v: 0 <= v <= 255)
    """Flag images whose mean grayscale value is below this."""
    BRIGHT_MEAN: float = _key(225.0, "a number in [0, 255]", lambda v: 0 <= v <= 255)
    """Flag images whose mean grayscale value is above this."""
    LOW_ENTROPY: float = _key(3.0, "a number in [0, 8]", lambda v: 0 <= v <= 8)
    """Flag images whose grayscale entropy (bits, 0 to 8) is below this: flat or posterised images."""
    BLUR_RATIO: float = _key(0.1, "a number > 0", lambda v: v > 0)
    """Flag images whose variance of the Laplacian is below this fraction of the dataset's median (blurry)."""
    NEAR_DUPLICATE_DISTANCE: int = _key(6, "an integer in [0, 64]", lambda v: 0 <= v <= 64)
    """Near duplicates: at most this many of the 64 bits of two images' difference hashes (dHash) differ."""
    MIN_SIDE: int = _key(64, "an integer >= 1", lambda v: v >= 1)
    """Flag images whose shorter side is below this many pixels."""
    MAX_ASPECT_RATIO: float = _key(3.0, "a number >= 1", lambda v: v >= 1)
    """Flag images whose long/short side ratio is above this."""
    GRAYSCALE_TOLERANCE: float = _key(2.0, "a number >= 0", lambda v: v >= 0)
    """Images stored as colour whose channels differ by at most this on average (max of mean |R-G|, mean |G-B|)
    are flagged as grayscale stored as RGB."""


@dataclass(frozen=True)
class Config:
    SEED: int = _key(42, "an integer >= 0", lambda v: v >= 0)
    """Global seed: sampling, initialisation, augmentation, dropout."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)


def config_to_dict(cfg: Any) -> dict:
    """The nested JSON-ready dict of a config (or of one of its sections)."""
    return dataclasses.asdict(cfg)


def _type_name(tp: Any) -> str:
    if isinstance(tp, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(path: str, tp: Any, value: Any, allowed: str | None = None) -> Any:
    """Check ``value`` against the field type; ints are accepted where numbers are.

    A union (``int | str``: a count or "auto") takes a value of any of its types, the first that fits;
    a value of none is reported with ``allowed``, the field's own words, rather than the bare types.
    """
    if isinstance(tp, types.UnionType):
        for member in typing.get_args(tp):
            try:
                return _coerce(path, member, value)
            except ConfigError:
                pass
        raise ConfigError(f"{path}: expected {allowed or _type_name(tp)}, got {json.dumps(value)}")
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {json.dumps(value)}")
    return float(value) if tp is float else value


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'configuration'}: expected an object of keys, got {json.dumps(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key; allowed keys here are {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        path, tp = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{path}.")
            continue
        meta = fields[name].metadata
        value = _coerce(path, tp, value, meta.get("allowed"))
        if meta and not meta["test"](value):
            raise ConfigError(f"{path}: {json.dumps(value)} is not allowed; expected {meta['allowed']}")
        kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Validate a (possibly partial) nested dict and fill the rest with defaults."""
    return _build(Config, data)


def _merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key.path=value``; the value is JSON when it parses as JSON, else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key.path=value, e.g. --set training.EPOCHS=5")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def overrides_to_dict(overrides: Iterable[str | tuple[str, Any]]) -> dict:
    """Turn ``["training.EPOCHS=5", ("SEED", 1)]`` into a nested dict."""
    nested: dict = {}
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        *parents, leaf = key.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p} is not a section")
        node[leaf] = value
    return nested


def with_overrides(cfg: Config, overrides: Iterable[str | tuple[str, Any]] | Mapping[str, Any]) -> Config:
    """A new validated config with ``overrides`` applied (``{"training.EPOCHS": 5}`` or ``["SEED=1"]``)."""
    if isinstance(overrides, Mapping):
        overrides = list(overrides.items())
    return config_from_dict(_merge(config_to_dict(cfg), overrides_to_dict(overrides)))


def read_config_file(path: Path) -> dict:
    """Read a configuration file as a dict; malformed JSON is reported with its line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file ({e.strerror}); run `fext init` to write one") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; fix the file or delete it and run `fext init`"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of configuration sections")
    return data


def load_config(path: Path | None = None, overrides: Iterable[str | tuple[str, Any]] = ()) -> Config:
    """Defaults ← the file at ``path`` (when given and present) ← ``overrides``, validated once."""
    data = read_config_file(path) if path is not None and Path(path).exists() else {}
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return with_overrides(cfg, overrides)


def default_config_text() -> str:
    """The default configuration file, as `fext init` writes it."""
    return json.dumps(config_to_dict(Config()), indent=4) + "\n"


def describe_keys() -> list[tuple[str, str, str, str]]:
    """(key path, default, allowed, meaning) for every key: used by the README and `fext config`."""
    rows = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        docs = _field_docs(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
                continue
            default = f.default
            allowed = f.metadata.get("allowed") or _type_name(tp)
            rows.append((f"{prefix}{f.name}", json.dumps(default), allowed, docs.get(f.name, "")))

    walk(Config, "")
    return rows


def _field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under each field (read from the source)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = " ".join(str(b.value.value).split())
    return docs
