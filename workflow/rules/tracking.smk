# MLflow import of every step record. A local rule on the submit host (which can reach the tracking server):
# compute jobs never talk to MLflow, so parallel jobs cannot lock the store and unreachable servers cost nothing.
rule track_mlflow:
    input:
        summary="results/summary.tsv",
        plots=P.plot_targets(),  # logged as artifacts of the parent runs
        code=step_code("tracking"),
    output:
        status="results/mlflow/tracking.json",
    log:
        "logs/track_mlflow/tracking.log",
    benchmark:
        "benchmarks/track_mlflow/tracking.tsv"
    localrule: True
    conda:
        "../../envs/pipsteps.yaml"
    resources:
        mem_mb=2000,
        runtime="15m",
    params:
        uri=P.tracking_uri(),
        experiment=P.tracking_experiment(),
    shell:
        "python -m pipsteps.tracking import --results results --tracking-uri {params.uri:q}"
        " --experiment {params.experiment:q} --out {output.status} > {log} 2>&1"
