"""Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391) and Grad-CAM++ (Chattopadhay et al. 2018,
arXiv:1710.11063) heat maps for a whole batch in one forward and one backward pass.

Our own rather than pytorch-grad-cam: that package pulls in opencv and friends and loops per image.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.errors import UserError
from cifarlab.models.inference import eval_mode, model_device

Method = Literal["gradcam", "gradcam++"]


def default_target_layer(model: nn.Module, input_shape: tuple[int, int, int, int]) -> str:
    """Name of the last module (in forward order) whose output is still a feature map of at least 4x4.

    Found by one forward pass of zeros shaped `input_shape` (1, C, H, W) with a hook on every named
    module. A container's hook fires after its children, so for a ResNet this is the last stage (its
    residual sum included), the usual Grad-CAM choice; pooling down to below 4x4 is excluded.
    """
    finished: dict[str, int] = {}  # name -> order in which its (last) call finished
    order = [0]

    def hook_for(name):
        def hook(module, args, output):
            if torch.is_tensor(output) and output.dim() == 4 and min(output.shape[-2:]) >= 4:
                finished[name] = order[0]
            order[0] += 1
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in model.named_modules() if name]
    try:
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(input_shape, device=model_device(model), dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    if not finished:
        raise UserError(f"no layer of {type(model).__name__} outputs a feature map of at least 4x4 "
                        f"for input shape {tuple(input_shape)}; pass the Grad-CAM layer by name")
    return max(finished, key=finished.get)


def _find_layer(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return modules[layer]
    convs = [name for name, m in modules.items() if isinstance(m, nn.Conv2d)]
    names = (convs[-6:] + [n for n in modules if n and "." not in n])[:10]
    raise UserError(f"unknown Grad-CAM layer {layer!r} in {type(model).__name__}; "
                    f"valid names include: {', '.join(names)}")


def _channel_weights(activations: torch.Tensor, grads: torch.Tensor, method: Method) -> torch.Tensor:
    """(N, K, h, w) activations and d(score)/d(activations) -> (N, K) channel weights."""
    if method == "gradcam":
        return grads.mean(dim=(2, 3))
    # Grad-CAM++ with the exponential score S = exp(Y): the 2nd and 3rd derivatives of S become
    # exp(Y) g^2 and exp(Y) g^3 (g = dY/dA, higher derivatives of Y taken as 0 for piecewise-linear
    # nets), and the exp(Y) factors cancel in alpha (eq. 19). The remaining exp(Y) in relu(dS/dA) scales
    # each image's map by a positive constant, which the min-max normalisation removes, so we drop it.
    g2, g3 = grads.pow(2), grads.pow(3)
    denominator = 2 * g2 + (activations * g3).sum(dim=(2, 3), keepdim=True)
    denominator = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    alpha = g2 / denominator
    return (alpha * F.relu(grads)).sum(dim=(2, 3))


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max to [0, 1]; a constant map (e.g. all zero) becomes all zero."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    span = (high - low).view(-1, 1, 1)
    return torch.where(span > 0, (maps - low.view(-1, 1, 1)) / span.clamp_min(1e-12), torch.zeros_like(maps))


def gradcam(model: nn.Module, inputs: torch.Tensor, target_classes: torch.Tensor, layer: Optional[str] = None,
            method: Method = "gradcam") -> torch.Tensor:
    """Heat maps (N, H, W) in [0, 1] of where `layer`'s features raise the score of `target_classes`.

    inputs: normalised model input (N, C, H, W); target_classes: (N,) class index per image. The model
    runs in eval mode (per-module modes restored afterwards) in fp32; parameter .grad is left untouched.
    Maps are upsampled bilinearly to H x W and min-max normalised per image. If `layer` is called more
    than once in a forward pass, its last call is used.
    """
    if method not in ("gradcam", "gradcam++"):
        raise UserError(f"Grad-CAM method must be 'gradcam' or 'gradcam++', got {method!r}")
    if inputs.dim() != 4:
        raise ValueError(f"gradcam expects inputs shaped (N, C, H, W), got {tuple(inputs.shape)}")
    N, _, H, W = inputs.shape
    if target_classes.shape != (N,):
        raise ValueError(f"target_classes must have shape ({N},), got {tuple(target_classes.shape)}")
    name = layer if layer is not None else default_target_layer(model, (1, *inputs.shape[1:]))
    module = _find_layer(model, name)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda mod, args, output: captured.append(output))
    device = model_device(model)
    try:
        with eval_mode(model), torch.enable_grad():
            # A leaf that requires grad makes the activations differentiable even for frozen weights.
            x = inputs.detach().to(device).clone().requires_grad_(True)
            logits = model(x)
            if not captured or not torch.is_tensor(captured[-1]) or captured[-1].dim() != 4:
                raise UserError(f"Grad-CAM layer {name!r} must output a (N, C, h, w) feature map")
            activations = captured[-1]
            # Images do not interact in eval mode, so the gradient of the summed scores is per image.
            scores = logits.gather(1, target_classes.to(device).long().view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(scores, activations)
    finally:
        handle.remove()
    activations, grads = activations.detach().float(), grads.float()
    weights = _channel_weights(activations, grads, method)
    maps = F.relu((weights[:, :, None, None] * activations).sum(dim=1, keepdim=True))
    maps = F.interpolate(maps, size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    return _normalise(maps).to(inputs.device)
