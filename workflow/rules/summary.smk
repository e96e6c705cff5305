# Static inputs only (no checkpoint-dependent input function): Snakemake skips param checks for jobs whose inputs
# come from a checkpoint, so a new variant would not rerun the summary. The round JSONs are written by the same
# jobs as the final models the evaluations consume.
rule summarize:
    input:
        evals=expand("results/{stage}/eval/metrics.json", stage=all_stages()),
        tasks=zeroshot_outputs(),
        plans=expand("results/{stage}/plan.json", stage=variants()),
        first_rounds=first_rounds(),
        recoveries=expand("results/{stage}/recovery.json", stage=recovered_stages()),
        recovered_tasks=recovered_task_outputs(),
        efficiency=efficiency_outputs(),
        model="results/base/model.json",
        calibration="results/calibration/calibration.json",
        code=step_code("summarize"),
    output:
        tsv="results/summary.tsv",
        md="results/summary.md",
        brief="results/summary.txt",
    log:
        "logs/summarize/summary.log",
    benchmark:
        "benchmarks/summarize/summary.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    resources:
        mem_mb=2000,
        runtime="10m",
    params:
        stages=all_stages(),
        with_tasks="--with-tasks" if tasks_cfg()["enabled"] else "",
        with_efficiency="--with-efficiency" if efficiency_cfg()["enabled"] else "",
    shell:
        "python -m pipsteps.summarize --results results --stages {params.stages}"
        " {params.with_tasks} {params.with_efficiency} --tsv {output.tsv} --md {output.md}"
        " --brief {output.brief} > {log} 2>&1"
