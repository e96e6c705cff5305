# PNG plots and the HTML results table of the run, marked for `snakemake --report report.html` (captions in
# workflow/report/). Static inputs only, as for the summary: the round JSONs are read by path convention (written
# with the final models). The score plots exist only when the run has variants with scores of that unit.
rule plot_results:
    input:
        summary="results/summary.tsv",
        plans=expand("results/{stage}/plan.json", stage=P.variants()),
        model="results/base/model.json",
        code=step_code("plots"),
    output:
        **{
            name: report(
                f"results/plots/{name}.png",
                caption=f"../report/{name}.rst",
                category="Pruning",
            )
            for name in P.score_plots()
        },
        **(
            {"width_data": "results/plots/width_scores.tsv"}
            if "width_scores" in P.score_plots()
            else {}
        ),
        removed_layers=report(
            "results/plots/removed_layers.png",
            caption="../report/removed_layers.rst",
            category="Pruning",
        ),
        metric_vs_ratio=report(
            "results/plots/metric_vs_ratio.png",
            caption="../report/metric_vs_ratio.rst",
            category="Quality",
        ),
        table=report(
            "results/report/summary.html",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        "logs/plot_results/plots.log",
    benchmark:
        "benchmarks/plot_results/plots.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    resources:
        mem_mb=2000,
        runtime="10m",
    params:
        variants=P.variants(),
        scores=lambda wildcards, output: " ".join(
            f"--{k.replace('_', '-')} {getattr(output, k)}"
            for k in ("layer_scores", "width_scores", "width_data")
            if hasattr(output, k)
        ),
    shell:
        "python -m pipsteps.plots results --results results --variants {params.variants}"
        " --summary {input.summary} {params.scores}"
        " --removed-layers {output.removed_layers} --metric-vs-ratio {output.metric_vs_ratio}"
        " --table {output.table} > {log} 2>&1"


rule plot_latency:
    input:
        efficiency=P.efficiency_outputs(),
        code=step_code("plots"),
    output:
        png=report(
            "results/plots/latency.png",
            caption="../report/latency.rst",
            category="Efficiency",
        ),
    log:
        "logs/plot_latency/latency.log",
    benchmark:
        "benchmarks/plot_latency/latency.tsv"
    conda:
        "../../envs/pipsteps.yaml"
    resources:
        mem_mb=2000,
        runtime="10m",
    shell:
        "python -m pipsteps.plots latency --efficiency {input.efficiency} --out {output.png} > {log} 2>&1"
