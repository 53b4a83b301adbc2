"""The benchmark harness (fastnst/bench/): interleaved timing, per-round speed-up ratios,
JSON/markdown output, case discovery by name, and one tiny real run."""

import json
import math
import os

import pytest
import torch

from fastnst import bench, cli
from fastnst.bench import harness

CPU = torch.device("cpu")


class FakeClock:
    """A clock that only the providers advance: each call adds its provider's cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _recording(log, clock, name, costs):
    """A provider call that logs its name and advances the clock by its next cost."""
    it = iter(costs)

    def call():
        log.append(name)
        clock.now += next(it)

    return call


def _case(providers, warmup=2, repeat=4, **kw):
    return bench.Case("fake", "fake case", (2, 3), "fwd", providers, flops=1e9, warmup=warmup,
                      repeat=repeat, memory="none", **kw)


def test_time_interleaved_calls_providers_in_rounds():
    log, clock = [], FakeClock()
    calls = {n: _recording(log, clock, n, [1.0] * 10) for n in ("A", "B", "C")}
    times = bench.time_interleaved(calls, CPU, warmup=2, repeat=3, clock=clock)
    assert log == ["A", "B", "C"] * 5  # 2 warm-up rounds, then 3 timed rounds, interleaved
    assert {n: len(t) for n, t in times.items()} == {"A": 3, "B": 3, "C": 3}


def test_pair_speedup_is_median_of_per_round_ratios():
    # Round-by-round the system slows down 1x, 5x, 1x, 5x, 1x: the ratio stays 2 in every
    # round, while the ratio of medians of interleaved-but-unpaired data would not.
    slow = [1, 5, 1, 5, 1]
    ref = [2.0 * s for s in slow]
    fast = [1.0 * s for s in slow]
    assert bench.pair_speedup(ref, fast) == pytest.approx(2.0)
    assert bench.pair_speedup([10, 10, 10], [1, 2, 10]) == pytest.approx(5.0)  # ratios 10, 5, 1
    assert bench.pair_speedup([4, 8], [2, 2]) == pytest.approx(3.0)  # even count: mean of middle two
    assert math.isnan(bench.pair_speedup([], []))


def test_run_case_interleaves_and_reports_pairwise_speedups():
    log, clock = [], FakeClock()
    # reference: 4 s, 40 s, 4 s, 40 s (a noisy minute every other round); fastnst 2, 20, 2, 20;
    # "other" 8, 8, 8, 80 s. Warm-up costs 0.
    ref = _recording(log, clock, "reference", [0, 0, 4, 40, 4, 40])
    fast = _recording(log, clock, "fastnst-x", [0, 0, 2, 20, 2, 20])
    other = _recording(log, clock, "other", [0, 0, 8, 8, 8, 80])
    case = _case([bench.Provider("fastnst-x", fast), bench.Provider("reference", ref),
                  bench.Provider("other", other), bench.Provider("absent", None, note="not here")])
    results = harness.run_case(case, CPU, clock=clock)
    assert log == ["fastnst-x", "reference", "other"] * 6
    by = {r.provider: r for r in results}
    assert [r.provider for r in results] == ["fastnst-x", "reference", "other", "absent"]
    assert by["fastnst-x"].speedup == pytest.approx(2.0)
    assert by["reference"].speedup == pytest.approx(1.0)
    # other vs reference: ratios 0.5, 5, 0.5, 0.5 -> median 0.5 (the medians alone: 22/8 = 2.75)
    assert by["other"].speedup == pytest.approx(0.5)
    assert by["fastnst-x"].median_ms == pytest.approx(11_000.0)
    assert by["fastnst-x"].p20_ms == pytest.approx(2000.0) and by["fastnst-x"].p80_ms == pytest.approx(20_000.0)
    assert by["fastnst-x"].gflops == pytest.approx(1e9 / 11.0 / 1e9)
    assert math.isnan(by["absent"].median_ms) and by["absent"].note == "not here"
    assert math.isnan(by["fastnst-x"].peak_mem_mb)  # memory="none"


def test_provider_filter_and_missing_baseline():
    clock = FakeClock()
    a = _recording([], clock, "a", [1.0] * 10)
    case = _case([bench.Provider("a", a), bench.Provider("reference", _recording([], clock, "r", [1.0] * 10))],
                 warmup=0, repeat=2)
    results = harness.run_case(case, CPU, only=["a"], clock=clock)
    assert [r.provider for r in results] == ["a"]
    assert math.isnan(results[0].speedup)  # no reference in the run: no speed-up


def _fake_results():
    def r(provider, mode, ms, sp, vs_compile=None):
        res = bench.Result("fake", "case 1", (1, 2, 3), mode, provider, 1e9, median_ms=ms, p20_ms=ms * 0.9,
                           p80_ms=ms * 1.1, gflops=1e9 / (ms * 1e-3) / 1e9, peak_mem_mb=1.5, speedup=sp)
        res.pair_speedups = {"reference": sp}
        if vs_compile is not None:
            res.pair_speedups["reference-compile"] = vs_compile
        return res

    return [r("fastnst-cpu", "fwd", 1.0, 4.0, 2.0), r("reference", "fwd", 4.0, 1.0),
            r("reference-compile", "fwd", 2.0, 2.0),
            bench.Result("fake", "case 1", (1, 2, 3), "fwd", "fastnst-cuda", 1e9, note="no GPU")]


def test_write_results_json_and_markdown(tmp_path):
    results = _fake_results()
    env = bench.environment("cpu")
    for key in ("fastnst", "torch", "triton", "python", "platform", "threads", "cpu", "cpu_kernels",
                "cpu_model", "cpu_isa", "device", "dtype", "timing"):
        assert key in env, key
    assert env["dtype"] == "float32" and isinstance(env["cpu_isa"], list)
    js, md = bench.write_results(results, env, str(tmp_path), "fake_cpu", "Fake table")
    payload = json.loads(open(js).read())
    assert set(payload) == {"environment", "results", "summary"}
    assert set(payload["results"][0]) == {"op", "name", "shape", "mode", "provider", "flops", "median_ms",
                                          "p20_ms", "p80_ms", "gflops", "peak_mem_mb", "speedup", "note",
                                          "unit", "precision", "cpu"}
    assert payload["summary"] == [
        "fwd: fastnst-cpu 4.00x the eager reference (geometric mean)",
        "fwd: reference-compile 2.00x the eager reference (geometric mean)",
        "fwd: fastnst-cpu 2.00x torch.compile(reference) (geometric mean; slowest case 2.00x)"]
    text = open(md).read()
    assert text.startswith("### Fake table\n\nSetup: ")
    assert "| case | shape | mode | provider | median ms (p20-p80) | GFLOP/s | peak MB | vs reference |" in text
    assert "| case 1 | 1x2x3 | fwd | fastnst-cpu | 1.00 (0.90-1.10) | 1000 | 1.5 | 4.00x |" in text
    assert "fastnst-cuda |" not in text and "Not run: fastnst-cuda: no GPU" in text
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_every_case_module_registers_a_benchmark():
    names = bench.list_cases()
    assert {"gram", "norm", "style_swap", "gatys"} <= set(names)
    for name, what in names.items():
        assert what, f"fastnst/bench/cases/{name}.py needs a docstring (the --op help)"
        tables = bench.benchmarks(name)
        assert tables and all(t.name == name for t in tables)
    assert [t.stem for t in bench.benchmarks("norm")] == ["norm_{device}", "transformer_cpu"]
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        bench.benchmarks("nope")


def test_cli_finds_benchmarks_by_name():
    p = cli.build_parser()
    for name in bench.list_cases():
        assert p.parse_args(["bench", "--op", name]).op == name
    assert p.parse_args(["bench"]).op == "gram"


def test_registered_benchmark_runs_by_name(tmp_path):
    """A benchmark registered under a new name runs through bench.run like the shipped ones."""
    def cases(opts):
        x = torch.randn(4, 8)
        impls = {"fastnst-cpu": lambda: x * 2, "reference": lambda: x + x, "fastnst-cuda": "no GPU"}
        yield bench.Case("toy", "toy 4x8", (4, 8), "fwd", bench.providers(impls, lambda fn: fn),
                         flops=32.0, warmup=1, repeat=opts.repeat)

    name = "toy_test_bench"
    bench.register(bench.Benchmark(name, "Toy", name + "_{device}", cases))
    try:
        text = bench.run(name, repeat=3, out_dir=str(tmp_path), log=None)
    finally:
        harness.REGISTRY.pop(name)
    assert "### Toy" in text and "| toy 4x8 | 4x8 | fwd | fastnst-cpu |" in text
    payload = json.load(open(tmp_path / f"{name}_cpu.json"))
    assert [r["provider"] for r in payload["results"]] == ["fastnst-cpu", "reference", "fastnst-cuda"]
    assert payload["results"][1]["speedup"] == 1.0


def test_gatys_case_reads_the_method_defaults():
    import ast

    from fastnst.bench.cases import gatys as gatys_case
    from fastnst.methods import gatys

    tree = ast.parse(open(gatys_case.__file__).read())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef)) and ast.get_docstring(n) is not None}
    consts = {(type(n.value), n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docs}
    for literal in (5.0, 100.0, 1e-3, "relu4_2", "relu1_1", "relu5_1"):  # Gatys' defaults
        assert (type(literal), literal) not in consts, literal
    assert gatys.DEFAULTS.content_layers == gatys.CONTENT_LAYERS
    import inspect

    sig = inspect.signature(gatys.stylize).parameters
    for field in ("content_weight", "style_weight", "tv_weight", "content_layers", "style_layers", "steps", "size"):
        assert sig[field].default == getattr(gatys.DEFAULTS, field), field


def test_gram_smoke_run(tmp_path):
    """One real case, minimal repeats: the quick Gram at one shape, fastnst-cpu and the eager
    reference (torch.compile left out: compiling takes seconds)."""
    from fastnst.bench.cases import gram

    name, shape = gram.QUICK_SHAPES[-1]
    opts = bench.Options(repeat=2)
    case = gram.make_case(name, shape, "fwd", opts)
    case.warmup = 1
    results = harness.run_case(case, CPU, only=["fastnst-cpu", "reference", "fastnst-cuda"])
    by = {r.provider: r for r in results}
    assert by["reference"].speedup == 1.0 and by["reference"].median_ms > 0
    assert by["reference"].peak_mem_mb >= 0
    assert by["fastnst-cuda"].note  # absent here (no GPU), with its reason
    if "fastnst-cpu" in by and not by["fastnst-cpu"].note:
        assert by["fastnst-cpu"].speedup > 0 and by["fastnst-cpu"].gflops > 0
    text = bench.markdown(results, bench.environment("cpu"), "Gram smoke")
    assert f"| {name} | 1x512x16x16 | fwd | reference |" in text


def test_precision_axis_runs_each_precision_and_records_the_cpu(tmp_path):
    """--precision: an op table runs once per precision, in that dtype, into <stem>_<precision>;
    every result row names its precision and the CPU (model, fastnst's ISA level, flags); a
    table without the precision is skipped with a line saying so."""
    seen = []

    def cases(opts):
        x = torch.randn(4, 8, dtype=opts.dtype)
        seen.append(opts.dtype)
        impls = {"fastnst-cpu": lambda: x * 2, "reference": lambda: x + x}
        yield bench.Case("toy", "toy 4x8", (4, 8), "fwd", bench.providers(impls, lambda fn: fn),
                         flops=32.0, warmup=1, repeat=opts.repeat)

    name, fixed = "toy_precision", "toy_fp32_only"
    bench.register(bench.Benchmark(name, "Toy", name + "_{device}", cases, precisions=("fp32", "bf16")))
    bench.register(bench.Benchmark(fixed, "Fixed", fixed + "_{device}", cases))
    logged = []
    try:
        text = bench.run(name, repeat=2, out_dir=str(tmp_path), log=None, precisions=["fp32", "bf16"])
        assert bench.run(fixed, repeat=2, out_dir=str(tmp_path), log=logged.append, precisions=["bf16"]) == ""
    finally:
        harness.REGISTRY.pop(name)
        harness.REGISTRY.pop(fixed)
    assert seen == [torch.float32, torch.bfloat16]
    assert "### Toy\n" in text and "### Toy (bf16)\n" in text
    model, _ = harness.cpu_info()
    for stem, prec in ((f"{name}_cpu", "fp32"), (f"{name}_cpu_bf16", "bf16")):
        payload = json.load(open(tmp_path / f"{stem}.json"))
        assert payload["environment"]["precision"] == prec
        for row in payload["results"]:
            assert row["precision"] == prec
            assert row["cpu"].startswith(model + "; fastnst level ")
    assert logged == [f"{fixed}_cpu: runs fp32 only (no precision axis: any low-precision rows are its "
                      "providers), not bf16"]
    assert not (tmp_path / f"{fixed}_cpu_bf16.json").exists()


def test_precision_the_cpu_cannot_run_is_an_error_naming_what_it_has():
    from fastnst.engine import precision

    flags = precision.cpu_flags()
    if flags & {"avx512_fp16", "amx_fp16"}:
        pytest.skip("this CPU runs fp16")
    with pytest.raises(ValueError, match=r"precision fp16 needs a CPU with AVX512-FP16 or AMX-FP16 \(this one has "
                       r"neither; its matrix ISA: .*\)"):
        bench.run("gram", quick=True, repeat=1, out_dir=None, log=None, precisions=["fp16"])
    from fastnst import cli

    assert cli.main(["bench", "--op", "gram", "--quick", "--precision", "fp16"]) == 2
