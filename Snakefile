import time

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
        P.plot_targets(),
        P.tracking_targets(),


# The end of a successful run (never a dry run or a failure): the short results table on the terminal when this
# run wrote it, else where the results are.
RUN_STARTED = time.time()


onsuccess:
    brief = Path("results/summary.txt")
    if brief.exists() and brief.stat().st_mtime >= RUN_STARTED - 1:
        print(f"\n{brief.read_text()}", flush=True)
    elif brief.exists():
        print(f"\nResults (not changed by this run): {brief.with_suffix('.md')}", flush=True)
