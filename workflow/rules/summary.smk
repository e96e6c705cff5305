# Static inputs only (no checkpoint-dependent input function): Snakemake skips param checks for jobs whose inputs
# come from a checkpoint, so a new variant would not rerun the summary. The round JSONs are written by the same
# jobs as the final models the evaluations consume.
rule summarize:
    input:
        evals=expand("results/{stage}/eval/metrics.json", stage=["base", *variants()]),
        plans=expand("results/{stage}/plan.json", stage=variants()),
        model="results/base/model.json",
        calibration="results/calibration/calibration.json",
        code=step_code("summarize"),
    output:
        tsv="results/summary.tsv",
        md="results/summary.md",
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
        stages=["base"] + variants(),
    shell:
        "python -m pipsteps.summarize --results results --stages {params.stages}"
        " --tsv {output.tsv} --md {output.md} > {log} 2>&1"
