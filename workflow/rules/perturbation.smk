# Helpers of the calibration rules for the aux-model perturbed views (perturbation.generator llm_guided or
# llm; docs/perturbation.md). Functions only; the rules are in calibration.smk.
AUX_GENERATORS = ("llm_guided", "llm")
AUX_KEYS = ("aux_model", "max_drop", "max_candidates", "right_context", "llm_prompt")


def aux_generator():
    return config["perturbation"]["generator"] in AUX_GENERATORS


def _check_aux_model():
    """Fail at parse time on an aux-model setup that cannot run (only with llm_guided or llm)."""
    p = config["perturbation"]
    if not aux_generator():
        return
    src = p["aux_model"]
    if src.startswith("embedded:") and src != "embedded:smollm2":
        raise WorkflowError(
            f"perturbation.aux_model: unknown embedded model {src!r} (available: embedded:smollm2)"
        )
    if is_local(src) and not Path(src).expanduser().is_dir():
        raise WorkflowError(f"perturbation.aux_model: model path does not exist: {src}")
    if p["draws"] != 1:
        raise WorkflowError(
            f"perturbation.draws must be 1 with perturbation.generator {p['generator']} (deterministic); "
            "use rule_based for several draws"
        )


_check_aux_model()


def aux_model_dir():
    """The prepared aux model: the dense model itself when perturbation.aux_model is model.source."""
    same = config["perturbation"]["aux_model"] == config["model"]["source"]
    return "results/base/model" if same else "results/aux/model"


def perturbation_params():
    """The perturbation settings prepare_calibration depends on: without an aux generator the aux-model keys are
    left out, so that changing them does not rerun the calibration."""
    p = config["perturbation"]
    return p if aux_generator() else {k: v for k, v in p.items() if k not in AUX_KEYS}


def calib_edits(wildcards):
    return {"edits": "results/calibration/aux_edits.json"} if aux_generator() else {}


def edits_flag(wildcards, input):
    return f"--edits {input.edits}" if aux_generator() else ""
