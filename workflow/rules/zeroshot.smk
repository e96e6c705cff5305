# Zero-shot accuracy (lm-eval, 0-shot) of the dense model and every variant; only when eval.tasks.enabled.
rule evaluate_tasks:
    input:
        model=P.stage_model,
        code=step_code("zeroshot"),
        files=local_inputs(P.task_files()),
    output:
        metrics="results/{stage}/eval/tasks.json",
    log:
        "logs/evaluate_tasks/{stage}.log",
    benchmark:
        "benchmarks/evaluate_tasks/{stage}.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime="4h",
    params:
        tasks=lookup(dpath="eval/tasks/names", within=config),
        limit=P.tasks_limit_json(),
        files=P.task_files_json(),
        batch_size=lookup(dpath="eval/tasks/batch_size", within=config),
        compute=P.compute_flags(),
    shell:
        "python -m pipsteps.zeroshot --tasks {params.tasks:q} --limit {params.limit:q}"
        " --files {params.files:q} --batch-size {params.batch_size}"
        " {params.compute} --threads {threads} --model {input.model} --stage {wildcards.stage} --metrics {output.metrics} > {log} 2>&1"
