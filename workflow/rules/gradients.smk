rule collect_gradients:
    input:
        model=grad_model,
        calib="results/calibration/{view}.safetensors",
        code=step_code("gradients"),
    output:
        grads=maybe_temp("results/{where}/grads_{view}.safetensors"),
        metrics="results/{where}/grads_{view}.json",
    log:
        "logs/collect_gradients/{where}/{view}.log",
    benchmark:
        "benchmarks/collect_gradients/{where}/{view}.tsv"
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
        device=lookup(dpath="compute/device", within=config),
        dtype=lookup(dpath="compute/dtype", within=config),
    shell:
        "python -m pipsteps.gradients --round {params.round} --view {wildcards.view}"
        " --micro-batch {params.micro_batch} --save-dtype {params.save_dtype}"
        " --device {params.device} --dtype {params.dtype} --threads {threads}"
        " --model {input.model} --calib {input.calib}"
        " --out {output.grads} --metrics {output.metrics} > {log} 2>&1"
