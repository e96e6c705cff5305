# Calibration views. With the aux-model generators (perturbation.generator llm_guided or llm) the edits are chosen
# first, in their own cached job (choose_aux_edits, keyed on the calibration text, the aux model and the generator
# settings, never on the pruning settings); prepare_calibration then applies them. docs/perturbation.md
include: "perturbation.smk"


rule prepare_calibration:
    input:
        unpack(calib_edits),
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
        p=perturbation_params(),
        edits=edits_flag,
    shell:
        "python -m pipsteps.calibration --tokenizer {input.model}"
        " --source {params.c[source]:q} --dataset-config {params.c[dataset_config]:q}"
        " --split {params.c[split]:q} --text-field {params.c[text_field]:q}"
        " --n-samples {params.c[n_samples]} --seq-len {params.c[seq_len]} --seed {params.c[seed]}"
        " --generator {params.p[generator]} --rate {params.p[rate]} --min-len {params.p[min_len]}"
        " --min-freq {params.p[min_freq]} --wordlist {params.p[wordlist]:q} --draws {params.p[draws]}"
        " {params.edits} --out-dir results/calibration --metrics {output.metrics} > {log} 2>&1"


# The aux model as a plain safetensors directory (perturbation.aux_model other than model.source): prepared once.
rule prepare_aux_model:
    input:
        code=step_code("prepare_model"),
    output:
        model=directory("results/aux/model"),
        metrics="results/aux/model.json",
    log:
        "logs/prepare_aux_model/aux.log",
    benchmark:
        "benchmarks/prepare_aux_model/aux.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    resources:
        mem_mb=16000,
        runtime="1h",
    params:
        source=lookup(dpath="perturbation/aux_model", within=config),
    shell:
        "python -m pipsteps.prepare_model --source {params.source:q} --dtype float32"
        " --out {output.model} --metrics {output.metrics} > {log} 2>&1"


# The edits of the llm_guided / llm views, chosen by the aux model on the calibration windows.
rule choose_aux_edits:
    input:
        model="results/base/model",
        aux=aux_model_dir(),
        code=step_code("aux_edits"),
    output:
        edits="results/calibration/aux_edits.json",
    log:
        "logs/choose_aux_edits/aux_edits.log",
    benchmark:
        "benchmarks/choose_aux_edits/aux_edits.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime="1h",
    params:
        c=lookup(dpath="calibration", within=config),
        p=lookup(dpath="perturbation", within=config),
        device=lookup(dpath="compute/device", within=config),
    shell:
        "python -m pipsteps.aux_edits --tokenizer {input.model} --aux-dir {input.aux}"
        " --source {params.c[source]:q} --dataset-config {params.c[dataset_config]:q}"
        " --split {params.c[split]:q} --text-field {params.c[text_field]:q}"
        " --n-samples {params.c[n_samples]} --seq-len {params.c[seq_len]} --seed {params.c[seed]}"
        " --generator {params.p[generator]} --rate {params.p[rate]} --min-len {params.p[min_len]}"
        " --min-freq {params.p[min_freq]} --wordlist {params.p[wordlist]:q} --draws {params.p[draws]}"
        " --aux-model {params.p[aux_model]:q} --max-drop {params.p[max_drop]}"
        " --max-candidates {params.p[max_candidates]} --right-context {params.p[right_context]}"
        " --prompt {params.p[llm_prompt]:q} --device {params.device} --threads {threads}"
        " --out {output.edits} > {log} 2>&1"
