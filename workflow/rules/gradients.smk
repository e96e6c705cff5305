# The dense model's gradients (round 1 of every variant) are kept, whatever gradients.keep says: every
# gradient-based variant of the grid reads them. A temporary file would be recomputed whenever one variant
# reruns, and Snakemake would then rerun every variant that read it. Later rounds: collect_round_gradients.
rule collect_gradients:
    input:
        unpack(grad_calib),
        model=grad_model,
        code=step_code("gradients"),
    output:
        grads="results/base/grads_{view}.safetensors",
        metrics="results/base/grads_{view}.json",
    log:
        "logs/collect_gradients/base/{view}.log",
    benchmark:
        "benchmarks/collect_gradients/base/{view}.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime="2h",
    params:
        round=grad_round,
        micro_batch=lookup(dpath="gradients/micro_batch", within=config),
        save_dtype=lookup(dpath="gradients/save_dtype", within=config),
        compute=compute_flags(),
        lean=lookup(dpath="compute/lean_grads", within=config),
        checkpointing=lookup(dpath="compute/grad_checkpointing", within=config),
        paired=paired_flag,
    shell:
        "python -m pipsteps.gradients --round {params.round} --view {wildcards.view}"
        " --micro-batch {params.micro_batch} --save-dtype {params.save_dtype:q}"
        " {params.compute} --threads {threads}"
        " --lean {params.lean} --checkpointing {params.checkpointing}"
        " --model {input.model} --calib {input.calib} {params.paired}"
        " --out {output.grads} --metrics {output.metrics} > {log} 2>&1"


# Gradients of round r ≥ 2 of one variant (the model of round r-1): temporary unless gradients.keep.
use rule collect_gradients as collect_round_gradients with:
    output:
        grads=maybe_temp("results/{where}/grads_{view}.safetensors"),
        metrics="results/{where}/grads_{view}.json",
    log:
        "logs/collect_round_gradients/{where}/{view}.log",
    benchmark:
        "benchmarks/collect_round_gradients/{where}/{view}.tsv"
