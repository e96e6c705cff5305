# Static inputs only (no checkpoint-dependent input function): Snakemake skips param checks for jobs whose inputs
# come from a checkpoint, so a new variant would not rerun the summary. The round JSONs are written by the same
# jobs as the final models the evaluations consume.
rule summarize:
    input:
        evals=expand("results/{stage}/eval/metrics.json", stage=P.all_stages()),
        tasks=P.zeroshot_outputs(),
        plans=expand("results/{stage}/plan.json", stage=P.variants()),
        first_rounds=P.first_rounds(),
        recoveries=expand("results/{stage}/recovery.json", stage=P.recovered_stages()),
        recovered_tasks=P.recovered_task_outputs(),
        efficiency=P.efficiency_outputs(),
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
        stages=P.all_stages(),
        with_tasks="--with-tasks" if P.tasks_cfg()["enabled"] else "",
        with_efficiency="--with-efficiency" if P.efficiency_cfg()["enabled"] else "",
    shell:
        "python -m pipsteps.summarize --results results --stages {params.stages}"
        " {params.with_tasks} {params.with_efficiency} --tsv {output.tsv} --md {output.md}"
        " --brief {output.brief} > {log} 2>&1"
