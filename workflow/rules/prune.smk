rule prune_round:
    input:
        unpack(round_grads),
        model=previous_model,
        plan="results/{unit}/{method}/r{ratio}/plan.json",
        calibration="results/calibration/calibration.json",
        code=step_code("prune"),
    output:
        model=directory("results/{unit}/{method}/r{ratio}/round_{round}/model"),
        metrics="results/{unit}/{method}/r{ratio}/round_{round}/round.json",
    log:
        "logs/prune_round/{unit}/{method}/r{ratio}/round_{round}.log",
    benchmark:
        "benchmarks/prune_round/{unit}/{method}/r{ratio}/round_{round}.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    resources:
        mem_mb=16000,
        runtime="1h",
    params:
        score=prune_score,
        seed=lookup(dpath="prune/seed", within=config),
        grads=grads_flags,
    shell:
        "python -m pipsteps.prune --round {wildcards.round} --method {wildcards.method}"
        " --score {params.score} --seed {params.seed} {params.grads}"
        " --model {input.model} --plan {input.plan} --calibration {input.calibration}"
        " --out {output.model} --metrics {output.metrics} > {log} 2>&1"
