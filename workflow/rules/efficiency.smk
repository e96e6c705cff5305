# Inference cost of the pruned variants against the dense model (eval.efficiency): one job measures the dense model
# once and then each variant, on the same device, and writes one efficiency.json per variant.
rule measure_efficiency:
    input:
        dense="results/base/model",
        pruned=P.variant_models(),
        code=step_code("efficiency"),
    output:
        efficiency=P.efficiency_outputs(),
    log:
        "logs/measure_efficiency/efficiency.log",
    benchmark:
        "benchmarks/measure_efficiency/efficiency.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime="2h",
    params:
        prompt_len=lookup(dpath="eval/efficiency/prompt_len", within=config),
        new_tokens=lookup(dpath="eval/efficiency/new_tokens", within=config),
        batch_sizes=lookup(dpath="eval/efficiency/batch_sizes", within=config),
        repeats=lookup(dpath="eval/efficiency/repeats", within=config),
        stages=P.variants(),
        compute=P.compute_flags(),
    shell:
        "python -m pipsteps.efficiency --prompt-len {params.prompt_len} --new-tokens {params.new_tokens}"
        " --batch-sizes {params.batch_sizes} --repeats {params.repeats}"
        " {params.compute} --threads {threads} --dense {input.dense:q} --pruned {input.pruned:q}"
        " --stages {params.stages:q} --out {output.efficiency:q} > {log} 2>&1"
