rule prepare_calibration:
    input:
        model="results/base/model",
        code=step_code("calibration"),
    output:
        clean="results/calibration/clean.safetensors",
        perturbed="results/calibration/perturbed.safetensors",
        control="results/calibration/control.safetensors",
        texts="results/calibration/texts.jsonl",
        metrics="results/calibration/calibration.json",
    log:
        "logs/prepare_calibration/calibration.log",
    benchmark:
        "benchmarks/prepare_calibration/calibration.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    resources:
        mem_mb=8000,
        runtime="30m",
    params:
        c=lookup(dpath="calibration", within=config),
        p=lookup(dpath="perturbation", within=config),
    shell:
        "python -m pipsteps.calibration --tokenizer {input.model}"
        " --source {params.c[source]:q} --dataset-config '{params.c[dataset_config]}'"
        " --split {params.c[split]} --text-field {params.c[text_field]}"
        " --n-samples {params.c[n_samples]} --seq-len {params.c[seq_len]} --seed {params.c[seed]}"
        " --generator {params.p[generator]} --rate {params.p[rate]} --min-len {params.p[min_len]}"
        " --min-freq {params.p[min_freq]} --wordlist '{params.p[wordlist]}' --draws {params.p[draws]}"
        " --out-dir results/calibration --metrics {output.metrics} > {log} 2>&1"
