# Inference cost of each pruned variant against the dense model: both are measured in the same job, on the same
# device, one after the other (eval.efficiency).
rule measure_efficiency:
    input:
        dense="results/base/model",
        pruned=P.stage_model,
        code=step_code("efficiency"),
    output:
        efficiency="results/{stage}/eval/efficiency.json",
    log:
        "logs/measure_efficiency/{stage}.log",
    benchmark:
        "benchmarks/measure_efficiency/{stage}.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime="1h",
    params:
        prompt_len=lookup(dpath="eval/efficiency/prompt_len", within=config),
        new_tokens=lookup(dpath="eval/efficiency/new_tokens", within=config),
        batch_sizes=lookup(dpath="eval/efficiency/batch_sizes", within=config),
        repeats=lookup(dpath="eval/efficiency/repeats", within=config),
        compute=P.compute_flags(),
    shell:
        "python -m pipsteps.efficiency --prompt-len {params.prompt_len} --new-tokens {params.new_tokens}"
        " --batch-sizes {params.batch_sizes} --repeats {params.repeats}"
        " {params.compute} --threads {threads} --dense {input.dense} --pruned {input.pruned}"
        " --stage {wildcards.stage} --out {output.efficiency} > {log} 2>&1"
