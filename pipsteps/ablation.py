"""Forward-only layer ablation: the calibration loss of the model with each candidate decoder layer skipped.

For the current model M and a view v (clean s, perturbed s̃), L(M, v) is the mean next-token cross-entropy over
the view's tokens and L(M∖i, v) the same with decoder layer i skipped (its input passed straight to layer i+1).
The depth scores built from these losses (lowest = removed first; pipsteps.scores.ABLATION_SCORES):

    sleb          L(M∖i, s)                                                      (SLEB, Song et al. 2024)
    gap_ablation  |gap(M∖i) − gap(M)|,  gap(M) = L(M, s̃) − L(M, s)               (docs/methods.md)
    pip_greedy    [L(M∖i, s) − L(M, s)] + [L(M∖i, s̃) − L(M, s̃)]                   (both views' loss increase)
    gap_greedy    [L(M∖i, s) − L(M, s)] + |gap(M∖i) − gap(M)|                   (clean loss + gap change)

One forward pass per view records the input of every layer (and the keyword arguments each layer received:
attention mask, rotary embeddings); skipping layer i then reruns only layers i+1.. from the recorded input of
layer i, which halves the cost of a naive full forward per candidate.

ShortGPT's block influence (Men et al. 2024), forward only, one pass:

    BI_i = 1 − mean over the clean calibration tokens of cos(h_in,i, h_out,i)

where h_in,i / h_out,i are the hidden states entering and leaving decoder layer i (the residual stream, before
the final norm). A layer that barely changes its input has a low BI and is removed first.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipsteps.errors import PipError
from pipsteps.surgery import decoder_layers


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _loss(model: torch.nn.Module, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy (fp64) of the final hidden states h for the tokens ids."""
    logits = model.lm_head(model.model.norm(h))[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                           reduction="sum").to(torch.float64)


@torch.no_grad()
def _record(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], list[dict], torch.Tensor]:
    """(input of every decoder layer, each layer's keyword arguments, the last layer's output) for one batch."""
    layers = decoder_layers(model)
    inputs: list[torch.Tensor] = [torch.empty(0)] * len(layers)
    kwargs: list[dict] = [{}] * len(layers)

    def pre(i: int):
        def hook(module, args, kw):
            inputs[i] = args[0] if args else kw["hidden_states"]
            kwargs[i] = {k: v for k, v in kw.items() if k != "hidden_states"}
        return hook

    outputs: list[torch.Tensor] = []
    handles = [layer.register_forward_pre_hook(pre(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[-1].register_forward_hook(lambda module, args, out: outputs.append(_hidden(out))))
    try:
        model.model(input_ids=x, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    last = outputs[-1]  # the last layer's output, before the final norm (_loss applies it)
    return inputs, kwargs, last


@torch.no_grad()
def skip_losses(model: torch.nn.Module, ids: torch.Tensor, candidates: Sequence[int], micro_batch: int = 4,
                desc: str = "ablation") -> tuple[float, dict[int, float]]:
    """(L(M, v), {i: L(M∖i, v)}) for the token view ids (n, L): mean cross-entropy per predicted token."""
    layers = decoder_layers(model)
    bad = [i for i in candidates if not 0 <= i < len(layers)]
    if bad:
        raise PipError(f"ablation candidates {bad} outside the model's {len(layers)} layers")
    device = next(model.parameters()).device
    full = torch.zeros((), dtype=torch.float64)
    skipped = {i: torch.zeros((), dtype=torch.float64) for i in candidates}
    for x in tqdm(torch.split(ids, micro_batch), desc=desc, unit="batch"):
        x = x.to(device)
        inputs, kwargs, last = _record(model, x)
        full += _loss(model, last, x).cpu()
        for i in candidates:
            h = inputs[i]
            for j in range(i + 1, len(layers)):
                h = _hidden(layers[j](h, **kwargs[j]))
            skipped[i] += _loss(model, h, x).cpu()
    n = ids.shape[0] * (ids.shape[1] - 1)
    losses = {i: float(v) / n for i, v in skipped.items()}
    bad = [i for i, v in losses.items() if v != v or v == float("inf")] + ([-1] if not torch.isfinite(full) else [])
    if bad:
        raise PipError(f"non-finite ablation loss (layers {bad}): check the model (try dtype float32)")
    return float(full) / n, losses


@torch.no_grad()
def block_influence(model: torch.nn.Module, ids: torch.Tensor, micro_batch: int = 4) -> tuple[list[float], int]:
    """(BI per decoder layer, number of tokens averaged over). Cosines are computed in fp32 and summed in fp64."""
    layers = decoder_layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    inputs: dict[int, torch.Tensor] = {}

    def pre(i: int):
        def hook(module, args, kwargs):
            inputs[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def post(i: int):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(inputs.pop(i).float(), out.float(), dim=-1)  # (batch, seq)
            sums[i] += cos.sum(dtype=torch.float64).cpu()
        return hook

    handles = [h for i, layer in enumerate(layers)
               for h in (layer.register_forward_pre_hook(pre(i), with_kwargs=True),
                         layer.register_forward_hook(post(i), with_kwargs=True))]
    device = next(model.parameters()).device
    try:
        for x in tqdm(torch.split(ids, micro_batch), desc="block influence", unit="batch"):
            model.model(input_ids=x.to(device), use_cache=False)  # the decoder stack only: no lm_head logits
    finally:
        for h in handles:
            h.remove()
    n_tokens = ids.numel()
    bi = (1.0 - sums / n_tokens).tolist()
    bad = [i for i, v in enumerate(bi) if v != v or v in (float("inf"), float("-inf"))]
    if bad:
        raise PipError(f"non-finite block influence in layer(s) {bad}: check the model (try dtype float32)")
    return bi, n_tokens
