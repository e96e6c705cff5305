rule evaluate_ppl:
    input:
        model=stage_model,
        code=step_code("evaluate"),
    output:
        metrics="results/{stage}/eval/metrics.json",
    log:
        "logs/evaluate_ppl/{stage}.log",
    benchmark:
        "benchmarks/evaluate_ppl/{stage}.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime="2h",
    params:
        datasets=eval_datasets_json(),
        seq_lens=lookup(dpath="eval/seq_lens", within=config),
        max_tokens=lookup(dpath="eval/max_tokens", within=config),
        batch_tokens=lookup(dpath="eval/batch_tokens", within=config),
        device=lookup(dpath="compute/device", within=config),
        dtype=lookup(dpath="compute/dtype", within=config),
        device_map=lookup(dpath="compute/device_map", within=config),
        require_gpu=lookup(dpath="compute/require_gpu", within=config),
    shell:
        "python -m pipsteps.evaluate --datasets {params.datasets:q} --seq-lens {params.seq_lens}"
        " --max-tokens {params.max_tokens} --batch-tokens {params.batch_tokens}"
        " --device {params.device} --dtype {params.dtype} --threads {threads}"
        " --device-map {params.device_map} --require-gpu {params.require_gpu}"
        " --model {input.model} --stage {wildcards.stage} --metrics {output.metrics} > {log} 2>&1"
