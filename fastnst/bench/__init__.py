"""Benchmarks: ``fastnst bench --op <name>`` and ``benchmarks/bench_<name>.py``.

The harness (``fastnst.bench.harness``: cases, the interleaved timing loop, memory peaks, the
environment record, JSON and markdown output, the provider helpers) is shared; every
benchmark is one module in ``fastnst/bench/cases/``, found by its file name, that only
defines its cases (shapes, inputs, providers, flop or byte counts). Adding a benchmark is
adding a file there; see ``fastnst/bench/cases/__init__.py``.

    from fastnst import bench
    bench.list_cases()                      # {"gatys": "...", "gram": "...", ...}
    print(bench.run("gram", quick=True))    # markdown; JSON and .md in bench_results/
"""

from fastnst.bench.harness import (
    BASELINE,
    COMPILED,
    Benchmark,
    Case,
    Options,
    Provider,
    Result,
    benchmarks,
    compiled,
    environment,
    geomean,
    kernel_providers,
    list_cases,
    markdown,
    op_implementations,
    pair_speedup,
    peak_memory_mb,
    peak_rss_mb,
    percentile,
    providers,
    pytest_benchmark,
    register,
    run,
    run_case,
    run_table,
    script_main,
    summary,
    sync,
    time_interleaved,
    write_results,
)

__all__ = [
    "BASELINE", "COMPILED", "Benchmark", "Case", "Options", "Provider", "Result", "benchmarks",
    "compiled", "environment", "geomean", "kernel_providers", "list_cases", "markdown",
    "op_implementations", "pair_speedup", "peak_memory_mb", "peak_rss_mb", "percentile",
    "providers", "pytest_benchmark", "register", "run", "run_case", "run_table", "script_main",
    "summary", "sync", "time_interleaved", "write_results",
]
