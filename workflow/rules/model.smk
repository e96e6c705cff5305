rule prepare_model:
    input:
        code=step_code("prepare_model"),
    output:
        model=directory("results/base/model"),
        metrics="results/base/model.json",
    log:
        "logs/prepare_model/base.log",
    benchmark:
        "benchmarks/prepare_model/base.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    resources:
        mem_mb=16000,
        runtime="1h",
    params:
        source=lookup(dpath="model/source", within=config),
        dtype=lookup(dpath="model/dtype", within=config),
        revision=P.optional("model.revision"),
        trust=lookup(dpath="model/trust_remote_code", within=config),
    shell:
        "python -m pipsteps.prepare_model --source {params.source:q} --dtype {params.dtype}"
        " --revision {params.revision:q} --trust-remote-code {params.trust}"
        " --out {output.model} --metrics {output.metrics} > {log} 2>&1"


# The round plan of a variant, from the dense model's shape read in its file headers (no weights loaded, no
# torch): it runs on the submit host under SLURM.
checkpoint plan_rounds:
    input:
        model="results/base/model",
        code=step_code("plan"),
    output:
        plan="results/{unit}/{method}/r{ratio}/plan.json",
    log:
        "logs/plan_rounds/{unit}/{method}/r{ratio}.log",
    benchmark:
        "benchmarks/plan_rounds/{unit}/{method}/r{ratio}.tsv"
    localrule: True
    conda:
        "../../envs/pipsteps.yaml"
    resources:
        mem_mb=1000,
        runtime="5m",
    params:
        flags=P.plan_flags,
    shell:
        "python -m pipsteps.plan --unit {wildcards.unit} --method {wildcards.method}"
        " --target-ratio {wildcards.ratio} {params.flags}"
        " --model {input.model} --out {output.plan} > {log} 2>&1"
