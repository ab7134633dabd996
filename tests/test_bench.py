"""`nqtool bench` (the nqformat.bench package): the harness, its baselines and its JSON object.

No timing is asserted here (times belong to the benchmark's own output, as ratios); these tests
check that the baselines really are the same model in another container, that eviction and the
target logic behave, and that the quick run produces every key with sane values.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import nqformat
from nqformat.bench import baselines, cases, markdown, pagecache, process, registry, summary
from nqformat.torch import close, convert_model, load

PACKAGE = pathlib.Path(nqformat.__file__).resolve().parent


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 5, 1),
        nn.Flatten(),
        nn.Linear(5 * 6 * 6, 7),
    ).eval()


@pytest.mark.parametrize(("n", "h"), [(8, 6), (6, 4), (8, 3)])
def test_baseline_safetensors_models_equal_the_nq_runtime_bit_for_bit(
    tmp_path: pathlib.Path, n: int, h: int
) -> None:
    nq = tmp_path / "tiny.nq"
    convert_model(_tiny(), nq, n=n, h=h)
    intn, inth = baselines.write_baselines(nq, tmp_path)
    for mode, path, width in (("full", intn, n), ("part", inth, h)):
        from_nq = load(nq, mode, module=_tiny())
        from_base = baselines.load_baseline(_tiny(), path, width)
        assert baselines.states_equal(from_nq, from_base), mode
        # and the baseline really replaced the float weights
        assert not baselines.states_equal(from_base, _tiny())
        close(from_nq)


def test_baseline_files_hold_packed_codes_of_the_stated_width(tmp_path: pathlib.Path) -> None:
    from safetensors.numpy import load_file

    nq = tmp_path / "tiny.nq"
    convert_model(_tiny(), nq, n=6, h=4)
    intn, inth = baselines.write_baselines(nq, tmp_path)
    codes6 = load_file(str(intn))["0.weight.__codes"]
    codes4 = load_file(str(inth))["0.weight.__codes"]
    elements = 8 * 3 * 3 * 3
    assert codes6.nbytes == math.ceil(elements * 6 / 8)
    assert codes4.nbytes == math.ceil(elements * 4 / 8)


def test_states_equal_notices_one_changed_element() -> None:
    a, b = _tiny(), _tiny()
    assert baselines.states_equal(a, b)
    with torch.no_grad():
        b[0].weight[0, 0, 0, 0] += 1.0
    assert not baselines.states_equal(a, b)


def test_evict_leaves_no_page_of_the_file_cached(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 4096)
    path.read_bytes()
    method = pagecache.page_cache_method()["method"]
    if method is None:
        pytest.skip("this machine cannot evict a file from the page cache")
    pagecache.evict(path, method)
    assert pagecache.resident_fraction(path) <= cases.MAX_RESIDENT_AFTER_EVICT
    path.read_bytes()
    assert pagecache.resident_fraction(path) > 0.5


def test_resident_fraction_of_an_empty_range_is_zero(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 10000)
    assert pagecache.resident_fraction(path, 5000, 5000) == 0.0


@pytest.mark.parametrize(
    ("key", "value", "met"),
    [
        ("size_vs_ideal", 1.004, True),
        ("size_vs_ideal", 1.006, False),
        ("unpack_elements_per_s", 2e9, True),
        ("unpack_elements_per_s", 5e8, False),
        ("upgrade_vs_int8_load", float("nan"), None),
    ],
)
def test_targets_compare_in_the_stated_direction(key: str, value: float, met: bool) -> None:
    result = {key: value, "convert_model": "resnet101"}
    assert summary.evaluate_targets(result)[key]["met"] is met


def test_convert_target_is_not_judged_on_another_model() -> None:
    result = {"convert_seconds": 1.0, "convert_model": "resnet18"}
    entry = summary.evaluate_targets(result)["convert_seconds"]
    assert entry["met"] is None
    assert "resnet101" in entry["note"]


def test_rss_child_does_not_inherit_the_parents_peak(tmp_path: pathlib.Path) -> None:
    import resource
    import subprocess

    ballast = bytearray(400 << 20)  # make this process's peak RSS large
    ballast[::4096] = b"x" * len(ballast[::4096])
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 > 350
    probe = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", probe]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert float(out) < 200
    del ballast


def test_markdown_rewrite_keeps_the_hand_written_notes(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text(f"old\n{markdown.NOTES_BEGIN}\nwhy upgrade is slow\n{markdown.NOTES_END}\n")
    assert markdown.read_notes(path).strip() == "why upgrade is slow"
    assert markdown.read_notes(tmp_path / "missing.md") == ""


def _package_outside_checkout(root: pathlib.Path) -> dict[str, str]:
    """A copy of the nqformat package alone (no tools/, tests/ or docs/ beside it), first on
    the path: the environment of an installed package, not of this source checkout."""
    site = root / "site"
    shutil.copytree(PACKAGE, site / "nqformat", ignore=shutil.ignore_patterns("__pycache__"))
    return {**os.environ, "PYTHONPATH": str(site)}


NQTOOL = [sys.executable, "-c", "from nqformat.cli import main; main()"]


def test_bench_package_is_part_of_the_installed_package(tmp_path: pathlib.Path) -> None:
    files = {p.name for p in importlib.resources.files("nqformat.bench").iterdir()}
    assert {"__init__.py", "__main__.py", "run.py", "registry.py"} <= files
    env = _package_outside_checkout(tmp_path)
    probe = "import nqformat.bench, nqformat.bench.run; print(nqformat.bench.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert pathlib.Path(out.stdout.strip()).is_relative_to(tmp_path / "site")


def test_no_module_of_the_package_loads_code_by_path_from_the_checkout() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "spec_from_file_location" not in text, path
        assert '"tools"' not in text, path


def test_child_processes_import_the_same_nqformat_as_the_parent() -> None:
    env = process.child_env()
    first = env["PYTHONPATH"].split(os.pathsep)[0]
    assert pathlib.Path(first) == PACKAGE.parent
    cmd = process.bench_child("no-such-entry")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_registered_measurements_have_distinct_keys_and_headlines() -> None:
    # every registered measurement has a distinct key that is not one of the row's own fields
    keys = [m.key for m in (*registry.CASE_MEASUREMENTS, *registry.RUN_MEASUREMENTS)]
    assert len(keys) == len(set(keys))
    assert {"sizes", "timings", "rss", "codes", "unpack", "convert", "fused"} == set(keys)
    result = {"unpack": {"unpack_vs_memcpy": 2.0, "unpack_elements_per_s": 3e9}}
    top = registry.RUN_MEASUREMENTS[0].headline(result)
    assert top == {"unpack_vs_memcpy": 2.0, "unpack_elements_per_s": 3e9}


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # run as a user would after `pip install "nqformat[torch]"`: from another directory, with
    # the package alone on the path
    out = tmp_path_factory.mktemp("bench")
    env = _package_outside_checkout(out)
    json_path, md_path = out / "bench.json", out / "bench.md"
    args = ["bench", "--quick", "-q", "--json", str(json_path), "--markdown", str(md_path)]
    proc = subprocess.run([*NQTOOL, *args], cwd=out, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "size_vs_ideal" in proc.stdout
    data = json.loads(json_path.read_text())
    data["_markdown"] = md_path.read_text()
    return data


@pytest.mark.slow
def test_quick_bench_json_has_every_key_with_sane_values(quick_result: dict) -> None:
    for key in cases.REQUIRED_KEYS:
        assert key in quick_result, key
    ratios = (
        "size_vs_ideal",
        "size_vs_diverse",
        "part_load_vs_int8_load",
        "upgrade_vs_int8_load",
        "downgrade_vs_inth_load",
        "unpack_vs_memcpy",
    )
    for key in ratios:
        assert isinstance(quick_result[key], float), key
        assert quick_result[key] > 0, key
    assert 1.0 <= quick_result["size_vs_ideal"] < 1.1
    assert 0.3 < quick_result["size_vs_diverse"] < 1.0
    assert quick_result["unpack_elements_per_s"] > 0
    assert quick_result["convert_seconds"] > 0
    assert quick_result["convert_model"] == "resnet18"
    for key in ("peak_rss_part_mb", "peak_rss_full_mb", "fp32_rss_mb"):
        # a ready ResNet-18 holds at least its 44.6 MiB of float32 weights beyond the imports
        assert quick_result[key] > quick_result["rss_after_import_mb"], key
    machine = quick_result["machine"]
    assert machine["cores_usable"] >= 1
    assert {"python", "torch", "numpy"} <= machine.keys()


@pytest.mark.slow
def test_quick_bench_reports_every_target_with_value_and_verdict(quick_result: dict) -> None:
    targets = quick_result["targets"]
    assert set(targets) == {t.key for t in cases.TARGETS}
    for key, entry in targets.items():
        assert {"value", "target", "op", "met"} <= entry.keys(), key
        assert entry["met"] in (True, False, None)
    assert targets["convert_seconds"]["met"] is None  # quick mode converts resnet18


@pytest.mark.slow
def test_quick_bench_baselines_are_the_same_models(quick_result: dict) -> None:
    models = [c["model"] for c in quick_result["cases"]]
    assert models == ["resnet18", "tf_efficientnet_lite0"]
    for case in quick_result["cases"]:
        assert case["timings"]["baseline_equal_full"], case["label"]
        assert case["timings"]["baseline_equal_part"], case["label"]
        paged = case["timings"]["switch_report"]["upgrade"]["bytes_paged_in"]
        assert paged == case["sizes"]["report"]["low_section"]


CODES_KEYS = (
    "codes_part_load_vs_int8_load",
    "codes_upgrade_vs_int8_load",
    "codes_weight_mb_part_vs_fp32",
    "codes_weight_mb_full_vs_fp32",
    "codes_forward_vs_float_b1",
    "codes_forward_vs_float_b32",
    "fused_dequant_vs_memcpy",
)


@pytest.mark.slow
def test_the_v01_switching_keys_still_measure_the_float_runtime(quick_result: dict) -> None:
    """part_load_vs_int8_load and friends keep their meaning (the float runtime, which
    dequantizes every weight at load) now that load() defaults to the codes runtime."""
    assert quick_result["cases"]
    for case in quick_result["cases"]:
        assert case["timings"]["resident"] == "float", case["label"]


@pytest.mark.slow
def test_quick_bench_has_the_codes_runtime_keys_finite_with_medians(quick_result: dict) -> None:
    import math

    for key in CODES_KEYS:
        value = quick_result[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, key
        median = quick_result["across_cases"][key]["median"]
        assert math.isfinite(median) and 0 < median <= value, key
        assert quick_result["targets"][key]["met"] in (True, False), key
        assert f"| `{key}` |" in quick_result["_markdown"], key
    assert quick_result["codes_bit_identical"] is True
    for case in quick_result["cases"]:
        rss = case["codes"]["rss"]
        # the denominator holds the float32 weights: at least 4 bytes per parameter of the
        # float runtime's module, which the mapped-file reading need not
        assert rss["fp32"]["weights_mb"] >= 0.9 * rss["float-part"]["weights_mb"], case["label"]
        assert rss["codes-part"]["weights_mb"] < rss["codes-full"]["weights_mb"], case["label"]
        # each way of loading ran once on the warm-up model first: the window pages in no
        # library code (without the warm-up: 0.7 MB codes, 1.8 MB FP32 on Lite0)
        for mode, row in rss.items():
            if mode != "fp32-mapped":  # that one's weights are the mapped file's pages
                assert row["weights_file_backed_mb"] < 0.5, (case["label"], mode)


def test_codes_headline_is_the_worst_case_with_the_median_beside_it() -> None:
    from nqformat.bench import codes

    def row(label: str, load: float, fwd: list[float] | None) -> dict:
        c = {
            "load": {"codes_part_load_vs_int8_load": load, "codes_upgrade_vs_int8_load": 0.1},
            "weight_mb_part_vs_fp32": 0.2,
            "weight_mb_full_vs_fp32": 0.3,
            "bit_identical": True,
        }
        if fwd is not None:
            c["forward"] = {"part_b1": {"ratio": fwd[0]}, "full_b1": {"ratio": fwd[1]}}
            c["forward"] |= {"part_b32": {"ratio": 1.0}, "full_b32": {"ratio": 1.0}}
        return {"label": label, "codes": c}

    result = {
        "cases": [row("a", 0.3, [1.1, 1.4]), row("b", 0.6, None), row("c", 0.4, [1.0, 1.2])],
        "headline_cases": {},
        "across_cases": {},
    }
    top = codes.MEASUREMENT.headline(result)
    assert top["codes_part_load_vs_int8_load"] == 0.6
    assert top["headline_cases"]["codes_part_load_vs_int8_load"] == "b"
    assert top["across_cases"]["codes_part_load_vs_int8_load"]["median"] == 0.4
    # forward ratios pool part and full of the cases that have them
    assert top["codes_forward_vs_float_b1"] == 1.4
    assert top["across_cases"]["codes_forward_vs_float_b1"]["median"] == pytest.approx(1.15)
    assert top["codes_bit_identical"] is True


@pytest.mark.slow
def test_quick_bench_markdown_sets_our_table_9_beside_the_papers(quick_result: dict) -> None:
    md = quick_result["_markdown"]
    assert "Paper Tables 9 and 10" in md
    assert "| resnet18 | 8,6 |" in md
    assert "13.4" in md  # the paper's ResNet-18 INT(8|6) size, next to ours
