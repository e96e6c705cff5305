# The dense model's gradients (round 1 of every variant) are kept, whatever gradients.keep says: every
# gradient-based variant of the grid reads them. A temporary file would be recomputed whenever one variant
# reruns, and Snakemake would then rerun every variant that read it. Later rounds take their own gradients in
# their prune_round job (pipsteps.prune --own-grads).
rule collect_gradients:
    input:
        unpack(P.grad_calib),
        model="results/base/model",
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
        micro_batch=lookup(dpath="gradients/micro_batch", within=config),
        save_dtype=lookup(dpath="gradients/save_dtype", within=config),
        compute=P.compute_flags(),
        lean=lookup(dpath="compute/lean_grads", within=config),
        checkpointing=lookup(dpath="compute/grad_checkpointing", within=config),
        paired=P.paired_flag,
    shell:
        "python -m pipsteps.gradients --round 1 --view {wildcards.view}"
        " --micro-batch {params.micro_batch} --save-dtype {params.save_dtype:q}"
        " {params.compute} --threads {threads}"
        " --lean {params.lean} --checkpointing {params.checkpointing}"
        " --model {input.model} --calib {input.calib} {params.paired}"
        " --out {output.grads} --metrics {output.metrics} > {log} 2>&1"
