"""The benchmark harness: cases, one interleaved timing loop, memory peaks, the environment,
JSON and markdown output, and the provider helpers (fastnst backends, the eager reference,
``torch.compile`` of it).

Vocabulary:

* a **Provider** is one way to run a case: a no-argument call to time (or the reason it is
  absent), e.g. "fastnst-cpu", "reference", "reference-compile";
* a **Case** is one row group of a table: an op at one shape and mode, with its providers and
  the work one call does (flops, or bytes for a GB/s rate);
* a **Benchmark** is one table: a name (what ``fastnst bench --op`` and
  ``benchmarks/bench_<name>.py`` ask for), a title, a file stem and a function that yields
  its cases for the options asked (device, quick shapes, repeats). The case modules in
  ``fastnst/bench/cases/`` register them; see ``fastnst/bench/cases/__init__.py``.

Timing. The machines this runs on are noisy (the same network measured 5 s and 9 s minutes
apart), so the providers of a case are timed interleaved: after ``warmup`` interleaved rounds,
each timed round calls every provider once, A B C A B C ... Each provider reports the median
of its calls with the 20th and 80th percentiles; its speed-up over the eager reference is the
median over rounds of reference_time / provider_time within the round (the per-pair ratio),
not a ratio of medians, so a slow minute slows both sides of a pair alike. GPU calls
synchronise before the clock stops.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable

import torch

import fastnst
from fastnst import _ext
from fastnst.backend import serves

BASELINE = "reference"              # every speed-up is over this provider, same case
COMPILED = "reference-compile"      # the summary also compares the fastnst providers with it
TIMING = ("providers interleaved per round (A B A B ...); speed-up: median of per-round "
          "reference/provider ratios")


def _noop() -> None:
    return None


# ---- cases ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Provider:
    """One way to run a case. ``fn`` is the timed call (no arguments), None when the provider
    is absent, with ``note`` saying why. ``reset`` drops what a call leaves alive (gradients)
    before its memory is measured. ``compiled``: it runs torch.compile'd code (the harness then
    gives the case a fresh compile cache)."""

    name: str
    fn: Callable[[], object] | None = None
    note: str = ""
    reset: Callable[[], None] = _noop
    compiled: bool = False


@dataclasses.dataclass
class Case:
    """One row group: ``op`` at one shape and mode, timed on each of ``providers``.

    flops: the work one call does, in the unit's numerator (flops for GFLOP/s, bytes for
        GB/s; NaN for none). warmup, repeat: untimed and timed interleaved rounds.
    memory: "allocator" (peak of live tensors: the profiler's allocator events on the CPU,
        the CUDA allocator's peak on GPU) or "rss" (on the CPU the larger of that and the
        process's resident high-water mark, which counts oneDNN/MKL scratch too), or "none".
    """

    op: str
    name: str
    shape: tuple
    mode: str
    providers: list[Provider]
    flops: float = float("nan")
    unit: str = "GFLOP/s"
    warmup: int = 3
    repeat: int = 15
    memory: str = "allocator"

    def provider(self, name: str) -> Provider:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(f"case {self.name!r} {self.mode} has no provider {name!r}; it has "
                       f"{', '.join(p.name for p in self.providers)}")


@dataclasses.dataclass
class Result:
    """One row of a table (and of the JSON ``results``): a case on one provider."""

    op: str
    name: str
    shape: tuple
    mode: str            # "fwd", "fwd+bwd", "step", ...
    provider: str
    flops: float
    median_ms: float = float("nan")
    p20_ms: float = float("nan")
    p80_ms: float = float("nan")
    gflops: float = float("nan")
    peak_mem_mb: float = float("nan")
    speedup: float = float("nan")   # vs the eager reference: median of the per-round ratios
    note: str = ""
    unit: str = "GFLOP/s"          # what `flops` counts per call: flops, or bytes for GB/s
    precision: str = "fp32"        # the inputs' dtype (ops) or the method's precision setting
    cpu: str = ""                  # CPU model, the ISA level fastnst's kernels ran at, its flags
    # that decide the paths (recorded in every row: results of several machines get merged)
    # Median per-round ratio other/this for every other provider of the case (the speed-up
    # over it); kept out of the JSON, whose keys stay those above.
    pair_speedups: dict = dataclasses.field(default_factory=dict, repr=False,
                                            metadata={"json": False})

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("json", True)}


@dataclasses.dataclass
class Options:
    """What a run asks for; case functions read it."""

    device: str = "cpu"
    quick: bool = False
    repeat: int = 15
    providers: list[str] | None = None   # subset of provider names; None: all
    dtype: torch.dtype = torch.float32
    precision: str = "fp32"              # fp32 | bf16 | fp16: dtype of the op tables' inputs


@dataclasses.dataclass
class Benchmark:
    """One table. ``cases(opts)`` yields its cases lazily (inputs are made as they are needed
    and freed after); an empty table is skipped. ``title`` may depend on the options;
    ``stem`` names the output files, "{device}" replaced by the device type; ``device``
    fixes the device (e.g. "cpu" for a method that runs on the CPU only)."""

    name: str
    title: str | Callable[[Options], str]
    stem: str
    cases: Callable[[Options], Iterable[Case]]
    device: str | None = None
    # Precisions the table runs through Options.dtype (the op tables: all three); the method
    # tables time their precisions as providers of an fp32 table instead.
    precisions: tuple[str, ...] = ("fp32",)


# ---- registry -------------------------------------------------------------------------------
REGISTRY: dict[str, list[Benchmark]] = {}
_CASES_PACKAGE = "fastnst.bench.cases"


def register(benchmark: Benchmark) -> Benchmark:
    """Add a table to the benchmark ``benchmark.name`` (a name may hold several tables, run
    in registration order). Case modules call this at import."""
    tables = REGISTRY.setdefault(benchmark.name, [])
    if any(t.stem == benchmark.stem for t in tables):
        raise ValueError(f"benchmark {benchmark.name!r}: table {benchmark.stem!r} registered twice")
    tables.append(benchmark)
    return benchmark


def _cases_dir() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases")


def list_cases() -> dict[str, str]:
    """Benchmark name -> one-line description, for every module in fastnst/bench/cases/ (read
    from the files, nothing imported), plus any registered directly."""
    import ast
    import pkgutil

    out: dict[str, str] = {}
    for mod in sorted(pkgutil.iter_modules([_cases_dir()]), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        path = os.path.join(_cases_dir(), mod.name + ".py")
        try:
            with open(path, encoding="utf-8") as fh:
                doc = ast.get_docstring(ast.parse(fh.read())) or ""
        except (OSError, SyntaxError, ValueError):
            doc = ""
        out[mod.name] = doc.strip().split("\n\n", 1)[0].replace("\n", " ")
    for name in REGISTRY:
        out.setdefault(name, "")
    return out


def benchmarks(name: str) -> list[Benchmark]:
    """The tables of benchmark ``name``: registered ones, else those the case module
    fastnst/bench/cases/<name>.py registers on import."""
    if name not in REGISTRY:
        names = list_cases()
        if name not in names:
            raise ValueError(f"unknown benchmark {name!r}; the benchmarks are {', '.join(names)}")
        import importlib

        importlib.import_module(f"{_CASES_PACKAGE}.{name}")
        if name not in REGISTRY:
            raise ValueError(f"{_CASES_PACKAGE}.{name} registers no benchmark named {name!r}")
    return REGISTRY[name]


# ---- providers ------------------------------------------------------------------------------
class Compiled:
    """``torch.compile(fn, dynamic=False)``, marked so that cases built on it get a fresh
    compile cache (no recompile-limit fallbacks across shapes)."""

    def __init__(self, fn: Callable[..., object]):
        self.fn = fn
        self.compiled = torch.compile(fn, dynamic=False)

    def __call__(self, *args, **kwargs):
        return self.compiled(*args, **kwargs)


def compiled(fn: Callable[..., object]) -> Compiled:
    return Compiled(fn)


def kernel_providers(op: str, device: torch.device, dtype: torch.dtype,
                     fn: Callable[..., object]) -> dict[str, Callable | str]:
    """"fastnst-<backend>" -> (lambda *a: fn(*a, backend=<backend>)) for each kernel backend
    that serves the public op ``op`` on ``device``/``dtype``, or a string saying why it is
    absent. The one place that decides which fastnst backends a benchmark times."""
    out: dict[str, Callable | str] = {}
    for backend in ("cpu", "cuda", "triton"):
        why = serves(backend, op, device, dtype)
        if backend == "triton" and device.type == "cpu" and why is None:
            why = "the Triton interpreter is a correctness tool, not timed"
        out[f"fastnst-{backend}"] = (lambda *a, b=backend: fn(*a, backend=b)) if why is None else why
    return out


def op_implementations(op: str, device: torch.device, dtype: torch.dtype,
                       fast: Callable[..., object], reference: Callable[..., object],
                       compile_reference: bool = True) -> dict[str, Callable | str]:
    """The usual providers of an op, as functions of the op's inputs: every fastnst backend
    (``fast(*inputs, backend=...)``), the eager ``reference(*inputs)`` and torch.compile of it."""
    out = kernel_providers(op, device, dtype, fast)
    out[BASELINE] = reference
    if compile_reference:
        out[COMPILED] = compiled(reference)
    return out


def providers(impls: dict[str, Callable | str],
              make_call: Callable[[Callable], Callable[[], object]]) -> list[Provider]:
    """Providers from implementations: ``make_call(impl)`` builds the timed call (it may carry
    a ``reset`` attribute); a string stays the reason the provider is absent."""
    out = []
    for name, impl in impls.items():
        if isinstance(impl, str):
            out.append(Provider(name, None, note=impl))
            continue
        call = make_call(impl)
        out.append(Provider(name, call, reset=getattr(call, "reset", _noop),
                            compiled=isinstance(impl, Compiled)))
    return out


# ---- measurement ------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(sorted_vals: list[float], q: float) -> float:
    idx = q * (len(sorted_vals) - 1)
    lo, hi = math.floor(idx), math.ceil(idx)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (idx - lo)


def time_interleaved(calls: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                     repeat: int, clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Per-call times in seconds, ``repeat`` per provider, in rounds: each round calls every
    provider once in order (A B C A B C ...), after ``warmup`` untimed rounds. Entry i of
    every list comes from round i."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            t0 = clock()
            fn()
            sync(device)
            times[name].append(clock() - t0)
    return times


def pair_speedup(base: list[float], other: list[float]) -> float:
    """Median over rounds of base[i] / other[i]: how many times faster ``other`` ran than
    ``base`` within the same round."""
    ratios = [b / o for b, o in zip(base, other) if o > 0]
    return statistics.median(ratios) if ratios else float("nan")


def _cpu_peak_bytes(fn: Callable[[], object]) -> float:
    """Peak of live tensor memory allocated during one call, from the profiler's allocator
    events (allocations positive, frees negative, in time order). Buffers a kernel allocates
    outside the torch allocator (small packing panels) are not counted."""
    from torch.profiler import ProfilerActivity, profile

    sys.stderr.flush()
    saved = os.dup(2)  # the profiler's native start/stop chatter goes to fd 2: silence it
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return float(peak)


def peak_memory_mb(fn: Callable[[], object], device: torch.device,
                   reset: Callable[[], None] = _noop) -> float:
    """Peak memory one call adds, after an untimed warm-up (which absorbs any recompilation):
    the CUDA allocator's peak on GPU, the profiler's allocator events on the CPU. ``reset``
    drops what the previous call left alive (gradients) before measuring."""
    fn()
    reset()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return _cpu_peak_bytes(fn) / 2**20


def peak_rss_mb(fn: Callable[[], object]) -> float:
    """Peak resident memory one call adds over the process's resident memory before it: the
    kernel's high-water mark (VmHWM) is reset through /proc/self/clear_refs first. Counts
    every allocation (torch's allocator, oneDNN and MKL scratch, std::vector), unlike the
    allocator events behind peak_memory_mb. Linux only; NaN elsewhere."""
    import gc

    def status() -> tuple[float, float]:
        with open("/proc/self/status") as fh:
            text = fh.read()
        hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1))
        rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
        return hwm / 1024, rss / 1024

    try:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _, base = status()
        fn()
        peak, _ = status()
        return peak - base
    except OSError:
        return float("nan")


def measure_memory(p: Provider, how: str, device: torch.device) -> float:
    """Peak MB of one call of provider ``p`` (already warm from timing), by ``how`` (see Case)."""
    if how == "none":
        return float("nan")
    if how == "rss" and device.type == "cpu":
        # The larger of the resident high-water mark and the torch allocator's peak, both
        # from one call (freed heap memory reused without growing RSS hides small allocations).
        tensor_peak: list[float] = []
        rss = peak_rss_mb(lambda: tensor_peak.append(_cpu_peak_bytes(p.fn)))
        return max(rss, tensor_peak[0] / 2**20)
    return peak_memory_mb(p.fn, device, p.reset)


def run_case(case: Case, device: torch.device, only: list[str] | None = None,
             clock: Callable[[], float] = time.perf_counter,
             log: Callable[[str], None] | None = None) -> list[Result]:
    """Time one case's providers interleaved, measure each one's peak memory, and return one
    Result per provider (in the case's order; those filtered out by ``only`` left out)."""
    provs = [p for p in case.providers if not only or p.name in only]
    if any(p.compiled and p.fn is not None for p in provs):
        torch.compiler.reset()  # a fresh compile cache per case: no recompile-limit fallbacks
    results = {p.name: Result(case.op, case.name, tuple(case.shape), case.mode, p.name, case.flops,
                              note="" if p.fn is not None else (p.note or "not available"),
                              unit=case.unit) for p in provs}
    live = [p for p in provs if p.fn is not None]
    times = time_interleaved({p.name: p.fn for p in live}, device, max(0, case.warmup), max(1, case.repeat), clock)
    for p in live:
        r, ts = results[p.name], sorted(times[p.name])
        r.median_ms = statistics.median(ts) * 1e3
        r.p20_ms, r.p80_ms = percentile(ts, 0.2) * 1e3, percentile(ts, 0.8) * 1e3
        r.gflops = case.flops / (r.median_ms * 1e-3) / 1e9
        r.pair_speedups = {q.name: pair_speedup(times[q.name], times[p.name]) for q in live}
        r.speedup = r.pair_speedups.get(BASELINE, float("nan"))
    for p in live:
        results[p.name].peak_mem_mb = measure_memory(p, case.memory, device)
        if log:
            r = results[p.name]
            sp = "" if math.isnan(r.speedup) else f"  {r.speedup:6.2f}x"
            log(f"  {case.name:22s} {case.mode:10s} {p.name:22s} {r.median_ms:10.3f} ms{sp}")
    return list(results.values())


# ---- environment ----------------------------------------------------------------------------
_ISA = re.compile(r"^(sse4_[12]|avx\w*|fma|f16c|amx\w*|asimd\w*|sve\w*|neon|vnni\w*)$")


def _lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


def cpu_info() -> tuple[str, list[str]]:
    """(CPU model name, its SIMD ISA flags), from /proc/cpuinfo, else lscpu."""
    model, flags = "", []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = val.split()
    except OSError:
        pass
    if not model or not flags:
        ls = _lscpu()
        model = model or ls.get("Model name", "")
        flags = flags or ls.get("Flags", "").split()
    return model or platform.processor() or "unknown", sorted(f for f in set(flags) if _ISA.match(f))


def environment(device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    model, isa = cpu_info()
    env = {
        "fastnst": fastnst.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cpu": f"{model}, {os.cpu_count()} cores",
        "cpu_kernels": _ext.build_info().get("cpu_isa", "n/a"),
        "cpu_isa_level": _ext.build_info().get("cpu_isa", "n/a"),
        "cpu_model": model,
        "cpu_isa": isa,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "timing": TIMING,
    }
    from fastnst.engine.precision import matrix_isa

    env["cpu_row"] = f"{model}; fastnst level {env['cpu_isa_level']}; {matrix_isa(set(isa))}"
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = "not installed"
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


# ---- reporting ------------------------------------------------------------------------------
def geomean(vals: list[float]) -> float:
    vals = [v for v in vals if v > 0 and not math.isnan(v)]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else float("nan")


def summary(results: list[Result]) -> list[str]:
    """Geometric-mean speed-up over the eager reference, per provider and mode, and of each
    fastnst provider over torch.compile of the reference (both from per-round ratios)."""
    lines = []
    for mode in sorted({r.mode for r in results}):
        for prov in dict.fromkeys(r.provider for r in results):
            sp = [r.speedup for r in results if r.mode == mode and r.provider == prov]
            g = geomean(sp)
            if not math.isnan(g) and prov != BASELINE:
                lines.append(f"{mode}: {prov} {g:.2f}x the eager reference (geometric mean)")
        for prov in dict.fromkeys(r.provider for r in results):
            if not prov.startswith("fastnst"):
                continue
            ratios = [r.pair_speedups[COMPILED] for r in results
                      if r.mode == mode and r.provider == prov
                      and not math.isnan(r.pair_speedups.get(COMPILED, float("nan")))]
            if ratios:
                lines.append(f"{mode}: {prov} {geomean(ratios):.2f}x torch.compile(reference) "
                             f"(geometric mean; slowest case {min(ratios):.2f}x)")
    return lines


def markdown(results: list[Result], env: dict, title: str) -> str:
    head = (f"### {title}\n\n"
            f"Setup: {env.get('gpu', env.get('cpu_row', env['cpu']))}; {env['cpu'].rsplit(', ', 1)[-1]}; "
            f"torch {env['torch']}, fastnst {env['fastnst']}, "
            f"triton {env['triton']}, Python {env['python']}, {env['threads']} threads, "
            f"CPU kernels: {env['cpu_kernels']}. Median of timed calls (p20-p80), "
            f"{env.get('dtype', 'float32')}; providers timed interleaved, speed-up = median of "
            f"per-round ratios.\n\n")
    unit = results[0].unit if results else "GFLOP/s"
    rows = [f"| case | shape | mode | provider | median ms (p20-p80) | {unit} | peak MB | vs reference |",
            "|---|---|---|---|---|---|---|---|"]
    for c in results:
        if math.isnan(c.median_ms):
            continue
        shape = "x".join(map(str, c.shape))
        speedup = "n/a" if math.isnan(c.speedup) else f"{c.speedup:.2f}x"
        rows.append(f"| {c.name} | {shape} | {c.mode} | {c.provider} | {c.median_ms:.2f} "
                    f"({c.p20_ms:.2f}-{c.p80_ms:.2f}) | {c.gflops:.0f} | {c.peak_mem_mb:.1f} | "
                    f"{speedup} |")
    absent = sorted({f"{c.provider}: {c.note}" for c in results if c.note})
    tail = "\n\nNot run: " + "; ".join(absent) if absent else ""
    summ = "\n".join(f"- {s}" for s in summary(results))
    return head + "\n".join(rows) + "\n\n" + summ + tail + "\n"


def write_results(results: list[Result], env: dict, out_dir: str, stem: str, title: str) -> tuple[str, str]:
    """Write <stem>.json and <stem>.md atomically (temp file + rename); return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    payload = {"environment": env, "results": [r.to_json() for r in results],
               "summary": summary(results)}
    paths = []
    for ext, text in (("json", json.dumps(payload, indent=2)), ("md", markdown(results, env, title))):
        path = os.path.join(out_dir, f"{stem}.{ext}")
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]


# ---- running --------------------------------------------------------------------------------
def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_table(table: Benchmark, opts: Options, out_dir: str | None = "bench_results",
              log: Callable[[str], None] | None = _stderr,
              clock: Callable[[], float] = time.perf_counter) -> tuple[list[Result], str]:
    """Run one table: its results and its markdown ("" when it has no case for these
    options); written to out_dir/<stem>.json and .md unless out_dir is None."""
    if table.device is not None:
        opts = dataclasses.replace(opts, device=table.device)
    if opts.precision not in table.precisions:
        if log:
            log(f"{table.stem.format(device=torch.device(opts.device).type)}: runs "
                f"{', '.join(table.precisions)} only (no precision axis: any low-precision rows are its "
                f"providers), not {opts.precision}")
        return [], ""
    dev = torch.device(opts.device)
    results: list[Result] = []
    for case in table.cases(opts):
        results += run_case(case, dev, opts.providers, clock, log)
    if not results:
        return results, ""
    env = environment(opts.device, opts.dtype)
    env["precision"] = opts.precision
    for r in results:
        r.precision = opts.precision
        r.cpu = env["cpu_row"]
    title = table.title(opts) if callable(table.title) else table.title
    if opts.precision != "fp32":
        title += f" ({opts.precision})"
    stem = table.stem.format(device=dev.type) + ("" if opts.precision == "fp32" else f"_{opts.precision}")
    if out_dir is None:
        return results, markdown(results, env, title)
    _, md = write_results(results, env, out_dir, stem, title)
    with open(md) as fh:
        return results, fh.read()


PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run(op: str = "gram", device: str = "cpu", quick: bool = False, repeat: int = 15,
        providers: list[str] | None = None, out_dir: str | None = "bench_results",
        log: Callable[[str], None] | None = _stderr, precisions: Iterable[str] = ("fp32",)) -> str:
    """Run benchmark ``op`` (a name from list_cases()): every table it registers, once per
    precision (fp32, bf16, fp16: the inputs' dtype; files ``<stem>[_<precision>]``), written
    to ``out_dir``; returns their markdown, one after the other. A precision the device cannot
    run is a ValueError naming what the CPU has (fastnst.engine.precision.check)."""
    from fastnst.engine import precision as prec

    precisions = list(precisions)
    for p in precisions:
        prec.check(p, device)
    texts = []
    for p in precisions:
        opts = Options(device=device, quick=quick, repeat=repeat, providers=providers or None,
                       dtype=PRECISION_DTYPES[p], precision=p)
        texts += [run_table(t, opts, out_dir, log)[1] for t in benchmarks(op)]
    return "\n".join(t for t in texts if t)


def script_main(name: str, argv: list[str] | None = None, repeat: int = 15, doc: str | None = None) -> int:
    """``benchmarks/bench_<name>.py``: the same flags as ``fastnst bench`` minus --op."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--repeat", type=int, default=repeat, help="timed rounds per case")
    p.add_argument("--providers", default="", help="comma-separated subset of the providers")
    p.add_argument("--out", default="bench_results", help="folder for the JSON and markdown results")
    p.add_argument("--precision", default="fp32", help="comma-separated fp32, bf16, fp16 (the op tables' dtype)")
    args = p.parse_args(argv)
    providers = [s for s in args.providers.split(",") if s] or None
    print(run(name, args.device, args.quick, args.repeat, providers, args.out,
              precisions=[s for s in args.precision.split(",") if s]))
    return 0


def pytest_benchmark(benchmark, case: Case, provider: str, device: str = "cpu",
                     rounds: int = 10, warmup_rounds: int = 2) -> None:
    """Time one provider of a case with pytest-benchmark's fixture (skips an absent one)."""
    import pytest

    p = case.provider(provider)
    if p.fn is None:
        pytest.skip(p.note)
    if p.compiled:
        torch.compiler.reset()
    dev = torch.device(device)
    p.fn()  # warm-up (and compilation)
    fn = p.fn

    def synced():
        fn()
        sync(dev)

    key = "gflops_per_call" if case.unit == "GFLOP/s" else "gbytes_per_call"
    benchmark.extra_info[key] = case.flops / 1e9
    benchmark.pedantic(synced, rounds=rounds, warmup_rounds=warmup_rounds)
