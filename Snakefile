from snakemake.utils import min_version

min_version("9.20")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/gradients.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/summary.smk"


rule all:
    default_target: True
    input:
        "results/summary.tsv",
        "results/summary.md",
