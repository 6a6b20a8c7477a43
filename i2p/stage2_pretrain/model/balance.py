"""The automatic 2D/3D balance: the weight of the 2D term from the gradient norms that the two
terms send into the head features.

Two forms with the same weight and the same gradients (up to floating-point rounding order):

* :func:`balance_weight` differentiates each term with respect to the head features once to
  measure it; the step's ``loss.backward()`` then differentiates the heads a second time.
* :func:`balance_single_pass` (the default objective's form): the heads run on a detached copy
  of the head features, each term is differentiated ONCE with respect to that copy and the
  heads' parameters, and the returned loss injects exactly those gradients (the 2D ones times
  the weight) into the graph, so ``loss.backward()`` only runs the decoder and encoder. The
  2D head is half the tiny model's parameters, and its backward was paid twice per step.
"""

from __future__ import annotations

import torch


def _sq_norm(g: torch.Tensor | None) -> torch.Tensor:
    return torch.zeros(()) if g is None else g.detach().float().pow(2).sum()


def weight_from_grads(g_ref: torch.Tensor | None, g: torch.Tensor | None, ratio: float,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, raw)``: ``w = ratio * |g_ref| / |g|`` (0 when ``g`` is 0) and ``raw = |g| / |g_ref|``.
    Under torchrun the squared norms are summed over ranks, so every rank uses the same weight,
    the one a single process would compute for the whole batch."""
    sq = torch.stack([_sq_norm(g_ref).to(device), _sq_norm(g).to(device)])
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(sq)
    n_ref, n = sq.sqrt().unbind()
    raw = n / n_ref.clamp_min(1e-12)
    w = torch.where(n > 0, ratio * n_ref / n.clamp_min(1e-12), torch.zeros_like(n))
    return w.detach(), raw.detach()


def balance_weight(ref_loss: torch.Tensor, loss: torch.Tensor, at: torch.Tensor, ratio: float,
                   ref_at: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``w`` (detached) such that ``w * loss`` sends ``ratio`` times the gradient norm
    into ``at`` that ``ref_loss`` sends into ``ref_at`` (default ``at``). Returns ``(w, raw)``
    with ``raw = |grad loss| / |grad ref_loss|`` (the unweighted ratio, a diagnostic).

    Why here: both norms are of gradients with respect to the same network features, so the
    ratio is unitless -- multiplying the 2D targets by 10 multiplies the 2D gradient by 10 and
    divides ``w`` by 10; multiplying the 3D loss by 100 multiplies ``w`` by 100 -- and the
    gradients reaching the encoder keep their proportion. Only the heads are differentiated
    twice (the encoder backward happens once, in ``loss.backward()``).
    """
    ref_at = at if ref_at is None else ref_at
    g_ref = torch.autograd.grad(ref_loss, ref_at, retain_graph=True, allow_unused=True)[0]
    g = torch.autograd.grad(loss, at, retain_graph=True, allow_unused=True)[0]
    return weight_from_grads(g_ref, g, ratio, at.device)


class _GradientOf(torch.autograd.Function):
    """Exactly 0 in the forward; in the backward, ``g`` (times the incoming gradient) is the
    gradient of ``x``. The same gradient as ``(x * g).sum() - (x * g).sum().detach()`` bit for
    bit, without the product, the reduction and the expanded backward over every element
    (three passes over the 2D head's weight per step, which is most of the tiny model)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g)
        ctx.x_dtype = x.dtype
        return torch.zeros((), dtype=torch.promote_types(x.dtype, g.dtype), device=x.device)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (g,) = ctx.saved_tensors
        return (g * grad_out).to(ctx.x_dtype), None


def _link(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Exactly 0, with gradient ``g`` with respect to ``x``."""
    return _GradientOf.apply(x, g.detach())


def balance_single_pass(loss_3d: torch.Tensor, loss_2d: torch.Tensor, xh: torch.Tensor, x: torch.Tensor,
                        head_3d: torch.nn.Module, head_2d: torch.nn.Module, ratio: float):
    """The balance of :func:`balance_weight` (``ref_loss = loss_3d``, ``loss = loss_2d``, both at
    the head features) with the heads differentiated once.

    ``loss_3d`` and ``loss_2d`` are computed from ``xh``, a detached copy of the head features
    ``x`` (only the heads lie between them). Returns ``(w, raw, loss_3d', loss_2d', loss)``: the
    weight and raw ratio, each term with its value and, through ``x``, its gradient into the
    network (for the diagnostics), and ``loss = loss_3d + w * loss_2d`` whose backward gives
    the heads' parameters and ``x`` the gradients of that sum. This consumes the heads' graph.
    """
    p3 = [p for p in head_3d.parameters() if p.requires_grad]
    p2 = [p for p in head_2d.parameters() if p.requires_grad]
    g3 = torch.autograd.grad(loss_3d, [xh, *p3], allow_unused=True)
    g2 = torch.autograd.grad(loss_2d, [xh, *p2], allow_unused=True)
    w, raw = weight_from_grads(g3[0], g2[0], ratio, xh.device)
    gx3 = torch.zeros_like(xh) if g3[0] is None else g3[0]
    gx2 = torch.zeros_like(xh) if g2[0] is None else g2[0]
    w_x = w.to(gx2.dtype)
    inject = _link(x, gx3 + w_x * gx2)
    inject = inject + sum(_link(p, g) for p, g in zip(p3, g3[1:]) if g is not None)
    inject = inject + sum(_link(p, w.to(g.dtype) * g) for p, g in zip(p2, g2[1:]) if g is not None)
    l3, l2 = loss_3d.detach(), loss_2d.detach()
    loss = (l3 + w * l2) + inject
    return w, raw, l3 + _link(x, gx3), l2 + _link(x, gx2), loss


__all__ = ["balance_weight", "balance_single_pass", "weight_from_grads"]
