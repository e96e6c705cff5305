# LoRA recovery of every variant's final pruned model (recovery.enabled): the best adapter by validation loss is
# merged and saved as the stage {unit}/{method}/r{ratio}/recovered, which evaluate_ppl evaluates like any other.
# The resumable checkpoint directory is deliberately not an output: Snakemake would delete it before a rerun,
# and a rerun of a killed job must continue from it. pipsteps.recover removes it once every output is in place.
if P.recovery_enabled():

    rule recover_lora:
        input:
            model="results/{unit}/{method}/r{ratio}/model",
            code=step_code("recover"),
        output:
            model=directory("results/{unit}/{method}/r{ratio}/recovered/model"),
            adapter=directory("results/{unit}/{method}/r{ratio}/recovered/adapter"),
            metrics="results/{unit}/{method}/r{ratio}/recovered/recovery.json",
            plot="results/{unit}/{method}/r{ratio}/recovered/loss.png",
        log:
            "logs/recover_lora/{unit}/{method}/r{ratio}.log",
        benchmark:
            "benchmarks/recover_lora/{unit}/{method}/r{ratio}.tsv"
        conda:
            "../../envs/pipsteps.yaml"
        threads: 2
        resources:
            gpu=1,
            mem_mb=32000,
            runtime="12h",
        params:
            source=lookup(dpath="recovery/source", within=config),
            format=lookup(dpath="recovery/format", within=config),
            dataset_config=P.optional("recovery.dataset_config"),
            split=lookup(dpath="recovery/split", within=config),
            text_field=lookup(dpath="recovery/text_field", within=config),
            max_examples=lookup(dpath="recovery/max_examples", within=config),
            val_size=lookup(dpath="recovery/val_size", within=config),
            cutoff=lookup(dpath="recovery/cutoff", within=config),
            train_on_inputs=lookup(dpath="recovery/train_on_inputs", within=config),
            r=lookup(dpath="recovery/r", within=config),
            alpha=lookup(dpath="recovery/alpha", within=config),
            dropout=lookup(dpath="recovery/dropout", within=config),
            target_modules=lookup(dpath="recovery/target_modules", within=config),
            lr=lookup(dpath="recovery/lr", within=config),
            epochs=lookup(dpath="recovery/epochs", within=config),
            batch_size=lookup(dpath="recovery/batch_size", within=config),
            micro_batch=lookup(dpath="recovery/micro_batch", within=config),
            warmup_steps=lookup(dpath="recovery/warmup_steps", within=config),
            max_grad_norm=lookup(dpath="recovery/max_grad_norm", within=config),
            max_steps=lookup(dpath="recovery/max_steps", within=config),
            eval_steps=lookup(dpath="recovery/eval_steps", within=config),
            save_steps=lookup(dpath="recovery/save_steps", within=config),
            seed=lookup(dpath="recovery/seed", within=config),
            compute=P.compute_flags(),
            checkpoint=lambda wildcards: f"{P.variant_dir(wildcards)}/recovered/checkpoint",
        shell:
            "python -m pipsteps.recover --source {params.source:q} --format {params.format:q}"
            " --dataset-config {params.dataset_config:q} --split {params.split:q}"
            " --text-field {params.text_field:q} --max-examples {params.max_examples}"
            " --val-size {params.val_size} --cutoff {params.cutoff}"
            " --train-on-inputs {params.train_on_inputs} --r {params.r} --alpha {params.alpha}"
            " --dropout {params.dropout} --target-modules {params.target_modules:q}"
            " --lr {params.lr} --epochs {params.epochs} --batch-size {params.batch_size}"
            " --micro-batch {params.micro_batch} --warmup-steps {params.warmup_steps}"
            " --max-grad-norm {params.max_grad_norm} --max-steps {params.max_steps}"
            " --eval-steps {params.eval_steps} --save-steps {params.save_steps} --seed {params.seed}"
            " {params.compute} --threads {threads}"
            " --model {input.model} --checkpoint {params.checkpoint} --out {output.model}"
            " --adapter {output.adapter} --metrics {output.metrics} --plot {output.plot} > {log} 2>&1"
