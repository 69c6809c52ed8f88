# Memory and speed benchmark of one training step (U-Net, checkpointed U-Net, iUNet, stock
# iUNet); named target `benchmark`, not part of `all`. Bigger sizes: config/benchmark_full.yaml,
# whole-CT shapes: config/benchmark_ct.yaml (docs/benchmark.md).


rule benchmark:
    output:
        table="results/benchmarks/memory.csv",
        fit="results/benchmarks/memory_fit.csv",
        plot=report(
            "results/plots/memory.png",
            caption="../report/memory.rst",
            category="Benchmark",
            labels={"figure": "peak memory vs volume size"},
        ),
    log:
        "logs/benchmark.log",
    benchmark:
        "benchmarks/benchmark.tsv"
    conda:
        "../envs/lungseg.yaml"
    threads: config["benchmark"]["threads"]
    resources:
        mem_mb=benchmark_mem_mb(),
        runtime=benchmark_runtime_min(),
        gpu=benchmark_gpus(),
    params:
        settings=settings_of(BenchmarkSettings),
        code=stage_code("benchmark"),
    script:
        "../workflow_scripts/benchmark.py"
