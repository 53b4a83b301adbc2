"""One module per benchmark: ``fastnst bench --op <module name>`` and
``benchmarks/bench_<module name>.py`` find it by its file name.

To add a benchmark, add ``<name>.py`` here whose docstring's first paragraph says what it
times (it is the ``--op`` help) and which registers at least one table named ``<name>``:

    from fastnst import bench

    def _cases(opts: bench.Options):
        dev = torch.device(opts.device)
        x = torch.randn(8, 64, 32, 32, device=dev)
        impls = bench.op_implementations("my_op", dev, x.dtype, fastnst.my_op, reference.my_op)
        yield bench.Case("my_op", "8x64x32²", x.shape, "fwd",
                         bench.providers(impls, lambda fn: (lambda: fn(x))),
                         flops=..., repeat=opts.repeat)

    bench.register(bench.Benchmark("<name>", "My op", "<name>_{device}", _cases))

The harness times the providers of each case interleaved, measures their peak memory,
computes the speed-ups over "reference" and writes the table. A case module only defines
cases: shapes, inputs, providers, flop or byte counts; nothing here imports it until a
benchmark of its name is asked for.
"""
