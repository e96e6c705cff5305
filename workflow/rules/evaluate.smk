rule evaluate_ppl:
    input:
        model=P.stage_model,
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
        datasets=P.eval_datasets_json(),
        seq_lens=lookup(dpath="eval/seq_lens", within=config),
        max_tokens=lookup(dpath="eval/max_tokens", within=config),
        batch_tokens=lookup(dpath="eval/batch_tokens", within=config),
        compute=P.compute_flags(),
    shell:
        "python -m pipsteps.evaluate --datasets {params.datasets:q} --seq-lens {params.seq_lens}"
        " --max-tokens {params.max_tokens} --batch-tokens {params.batch_tokens}"
        " {params.compute} --threads {threads} --model {input.model} --stage {wildcards.stage} --metrics {output.metrics} > {log} 2>&1"
