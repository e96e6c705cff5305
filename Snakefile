from snakemake.utils import min_version

min_version("9.20")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/gradients.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/recovery.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/zeroshot.smk"
include: "workflow/rules/efficiency.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/tracking.smk"


rule all:
    default_target: True
    input:
        "results/summary.tsv",
        "results/summary.md",
        plot_targets(),
        tracking_targets(),
