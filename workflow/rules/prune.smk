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
    threads: forward_threads
    resources:
        gpu=forward_gpu,
        mem_mb=16000,
        runtime="1h",
    params:
        score=prune_score,
        seed=variant_seed,
        grads=grads_flags,
        forward=forward_flags,
    shell:
        "python -m pipsteps.prune --round {wildcards.round} --method {wildcards.method}"
        " --score {params.score} --seed {params.seed} {params.grads} {params.forward}"
        " --model {input.model} --plan {input.plan} --calibration {input.calibration}"
        " --out {output.model} --metrics {output.metrics} > {log} 2>&1"


# ShortGPT block influence of the dense model (forward only, clean view): computed once, shared by every
# block_influence variant (one-shot, so only round 1 reads it).
rule block_influence:
    input:
        model="results/base/model",
        calib="results/calibration/clean.safetensors",
        code=step_code("block_influence"),
    output:
        scores="results/base/block_influence.json",
    log:
        "logs/block_influence/base.log",
    benchmark:
        "benchmarks/block_influence/base.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime="1h",
    params:
        micro_batch=lookup(dpath="gradients/micro_batch", within=config),
        compute=compute_flags(),
    shell:
        "python -m pipsteps.block_influence --micro-batch {params.micro_batch}"
        " {params.compute} --threads {threads}"
        " --model {input.model} --calib {input.calib} --out {output.scores} > {log} 2>&1"
