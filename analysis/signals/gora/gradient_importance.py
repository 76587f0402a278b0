"""GoRA's gradient statistics: the averaged weight gradient of each adapted matrix, the importance
GoRA computes from W and that gradient, and GoRA's gradient-based initialisation of B.

Reference: hhnqqq/MyTransformers, common/lora_modules/gora.py (`gora_reinit`, `compute_importance`,
`LinearWithGoRA.grad_compress_init`) and grad_utils.py (`get_record_gradient_hook`).
"""
from __future__ import annotations


import torch

# GoRA's importance types that are deterministic (its *_est_nuc_norm ones use a randomised SVD).
IMPORTANCE = {
    "union_mean": lambda w, g: (w * g).abs().mean(),                       # the paper's avg(|W * G|)
    "union_frobenius_norm": lambda w, g: torch.linalg.matrix_norm(w * g),  # its argparse default
    "union_nuc_norm": lambda w, g: torch.linalg.matrix_norm(w * g, ord="nuc"),
    "grad_frobenius_norm": lambda w, g: torch.linalg.matrix_norm(g),
    "grad_nuc_norm": lambda w, g: torch.linalg.matrix_norm(g, ord="nuc"),
    "grad_mean": lambda w, g: g.abs().mean(),
}


def averaged_gradients(model, weights: list[torch.Tensor], batches) -> tuple[list[torch.Tensor], int]:
    """Mean over batches of dL_b/dW (L_b: the batch's mean loss), as GoRA's hook sums one gradient per step
    and divides by the step count; and that count."""
    sums, count = summed_gradients(model, weights, batches)
    if count == 0:
        raise ValueError("no batches")
    return [total / count for total in sums], count


def summed_gradients(model, weights: list[torch.Tensor], batches) -> tuple[list[torch.Tensor], int]:
    """Sum over batches of dL_b/dW and the number of batches. Float32 sums, on W's device. Only the listed
    weights need gradients; the model's requires_grad flags and .grad are restored."""
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
    sums = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    count = 0
    try:
        for batch in batches:
            grads = torch.autograd.grad(model(**batch).loss, weights)
            for total, grad in zip(sums, grads):
                total += grad.float()
            count += 1
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(saved[name])
            parameter.grad = None
    return sums, count


def importance(weight: torch.Tensor, grad: torch.Tensor, kind: str = "union_mean") -> float:
    """GoRA's importance of one matrix (float32, as its compute_importance casts)."""
    return float(IMPORTANCE[kind](weight.detach().float(), grad.float()))


def gradient_b(a: torch.Tensor, grad: torch.Tensor, lora_alpha: float, stable_gamma: float = 0.02) -> torch.Tensor:
    """GoRA's 'compress' initialisation of B for a given A (r x d_in): the least-squares B with B A ~ G
    (B = G A^T (A A^T + 1e-8 I)^+), times stable_gamma / lora_alpha, as grad_compress_init does without
    scale-by-lr. `grad` is (d_out x d_in), the orientation of nn.Linear's weight. The sign is the code's:
    B A points along +G (its own reconstruction check compares with -lr G)."""
    a = a.float()
    gram = a @ a.T + 1e-8 * torch.eye(a.shape[0], device=a.device)
    b = grad.float() @ (a.T @ torch.linalg.pinv(gram))
    return b * (stable_gamma / lora_alpha)
