# One job per round: round r loads the round r-1 model once, takes the gradients its method reads (round 1: the
# dense model's, a shared step), scores, prunes and writes the round r model. Round models are temporary unless
# prune.keep_round_models; final_model keeps the last one as the variant's model.
rule prune_round:
    input:
        unpack(P.round_inputs),
        model=P.previous_model,
        plan="results/{unit}/{method}/r{ratio}/plan.json",
        calibration="results/calibration/calibration.json",
        code=step_code("prune"),
    output:
        model=round_model_output("results/{unit}/{method}/r{ratio}/round_{round}/model"),
        metrics="results/{unit}/{method}/r{ratio}/round_{round}/round.json",
    log:
        "logs/prune_round/{unit}/{method}/r{ratio}/round_{round}.log",
    benchmark:
        "benchmarks/prune_round/{unit}/{method}/r{ratio}/round_{round}.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    threads: P.round_threads
    resources:
        gpu=P.round_gpu,
        mem_mb=16000,
        runtime="2h",
    params:
        score=P.prune_score,
        seed=P.variant_seed,
        inputs=P.input_flags,
        compute=P.round_flags,
    shell:
        "python -m pipsteps.prune --round {wildcards.round} --method {wildcards.method}"
        " --score {params.score} --seed {params.seed} {params.inputs} {params.compute}"
        " --model {input.model} --plan {input.plan} --calibration {input.calibration}"
        " --out {output.model} --metrics {output.metrics} > {log} 2>&1"


# The variant's final model: the last round's files, hard-linked (no copy, no extra disk), so that it outlives the
# temporary round models.
rule final_model:
    input:
        model=last_round_model,
    output:
        model=directory("results/{unit}/{method}/r{ratio}/model"),
    log:
        "logs/final_model/{unit}/{method}/r{ratio}.log",
    benchmark:
        "benchmarks/final_model/{unit}/{method}/r{ratio}.tsv"
    localrule: True
    conda:
        "../../envs/pipsteps.yaml"
    shell:
        "mkdir -p {output.model:q} && ln {input.model:q}/* {output.model:q}/ > {log} 2>&1"


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
        compute=P.compute_flags(),
    shell:
        "python -m pipsteps.block_influence --micro-batch {params.micro_batch}"
        " {params.compute} --threads {threads}"
        " --model {input.model} --calib {input.calib} --out {output.scores} > {log} 2>&1"
