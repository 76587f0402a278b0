"""K LoRA adapters, each with its own task head, on one frozen copy of a model.

A pass's input holds the adapters' batches one after another (adapter k owns rows k*b to (k+1)*b, or the
adapters `only` names, in its order). The frozen layers run once over all of them; a forward hook on every adapted linear adds each adapter's LoRA
to its own rows only: the rows viewed as (K, b*T, d_in), one batched product with A (K, r, d_in), the ranks
masked and scaled, one batched product with B (K, d_out, r). Ranks are padded to the largest of the
adapters in each module; the padding is zero, its mask is zero, so it gets no gradient and stays zero under
AdamW. An adapter that leaves a module out has rank 0 there. A forward hook on each linear of the task head
replaces its output with each adapter's own head applied to its rows.

Every trainable value of all K adapters lives in one float32 parameter of shape (K, P) (the LoRA matrices
and the heads are views into it), so the optimizer, the clipping and a checkpoint are a few operations on
one tensor, whatever K. float32 as peft keeps LoRA weights whatever the base model's dtype; the heads too
(see float32_head), on both training paths.

Dropout: the frozen model runs as in evaluation (its own dropout off, on both paths). LoRA dropout draws
each adapter's masks from that adapter's own generator, in the shape its batch would have alone (its rows,
its own longest example), so a run's masks are the same grouped or alone (SeededDropout is the alone
path's module).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch


def dropout_seed(seed: int) -> int:
    """A run's LoRA-dropout generator seed: derived from its seed, apart from the stream that seeds its
    initialisation (torch.manual_seed(seed))."""
    return int(np.random.SeedSequence([seed, 0x10DA]).generate_state(1)[0])


def dropped(x: torch.Tensor, p: float, generator: torch.Generator, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """x with inverted dropout, the keep mask drawn from `generator` in `shape` (default x's; a shorter
    sequence axis than x's is padded with kept positions, which only padding tokens occupy)."""
    shape = tuple(shape or x.shape)
    keep = torch.rand(shape, generator=generator, device=x.device) >= p
    if shape != tuple(x.shape):
        keep = torch.nn.functional.pad(keep, (0, 0, 0, x.shape[1] - shape[1]), value=True)
    return x * keep / (1 - p)


class SeededDropout(torch.nn.Module):
    """nn.Dropout drawing its masks from a generator of its own (the alone path's LoRA dropout)."""

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropped(x, self.p, self.generator) if self.training and self.p > 0 else x


def float32_head(model: torch.nn.Module, head_names) -> None:
    """Keep the task head's weights in float32 (as peft keeps LoRA's) whatever the base model's dtype, and
    feed it float32 inputs: a bfloat16 head loses small AdamW updates."""
    for name in dict.fromkeys(n.rsplit(".", 1)[0] for n in head_names):
        module = model.get_submodule(name)
        if next(module.parameters()).dtype != torch.float32:
            module.float()
            module.register_forward_pre_hook(lambda m, args: (args[0].float(), *args[1:]))


@dataclass
class StartingWeights:
    """One adapter's starting values, as peft built them for its run: per adapted module (path relative to the
    model) A (r, d_in), B (d_out, r), the scaling and the dropout; and its head's parameters by name."""
    lora: dict[str, tuple[torch.Tensor, torch.Tensor, float, float]]
    head: dict[str, torch.Tensor]
    seed: int
    recorded: dict = field(default_factory=dict)   # what the run records of its initialisation


@dataclass
class _Block:
    offset: int
    shape: tuple[int, ...]

    def view(self, flat: torch.Tensor) -> torch.Tensor:
        size = int(np.prod(self.shape))
        return flat[:, self.offset: self.offset + size].view(flat.shape[0], *self.shape)


class AdapterStack:
    """K adapters on `model` (frozen, in evaluation mode, on `device`); call `remove()` to take the hooks off."""

    def __init__(self, model: torch.nn.Module, starts: list[StartingWeights], device: torch.device):
        self.model, self.k, self.device = model, len(starts), device
        order = [name for name, _ in model.named_modules()]
        paths = sorted({p for s in starts for p in s.lora}, key=order.index)
        head_modules = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in starts[0].head))
        self.ranks = {p: [s.lora[p][0].shape[0] if p in s.lora else 0 for s in starts] for p in paths}
        offset, self.blocks = 0, {}
        for path in paths:
            module = model.get_submodule(path)
            d_in, d_out = in_out(module)
            r = max(self.ranks[path])
            self.blocks[(path, "A")] = _Block(offset, (r, d_in))
            self.blocks[(path, "B")] = _Block(offset + r * d_in, (d_out, r))
            offset += r * (d_in + d_out)
        for name in head_modules:
            for kind, value in model.get_submodule(name).named_parameters():
                self.blocks[(name, kind)] = _Block(offset, tuple(value.shape))
                offset += value.numel()
        self.flat = torch.nn.Parameter(torch.zeros(self.k, offset, device=device))
        with torch.no_grad():
            for k, start in enumerate(starts):
                for path, (a, b, _, _) in start.lora.items():
                    self.blocks[(path, "A")].view(self.flat)[k, : a.shape[0]] = a
                    self.blocks[(path, "B")].view(self.flat)[k, :, : b.shape[1]] = b
                for name, value in start.head.items():
                    module, kind = name.rsplit(".", 1)
                    self.blocks[(module, kind)].view(self.flat)[k] = value
        # the scaling of each adapter's ranks, zero beyond its rank: (K, 1, r) per module
        self.scales = {}
        for path in paths:
            r = self.blocks[(path, "A")].shape[0]
            scale = torch.zeros(self.k, 1, r)
            for k, start in enumerate(starts):
                if path in start.lora:
                    scale[k, 0, : self.ranks[path][k]] = start.lora[path][2]
            self.scales[path] = scale.to(device)
        self.dropouts = {p: [s.lora[p][3] if p in s.lora else 0.0 for s in starts] for p in paths}
        self.generators = [torch.Generator(device=device).manual_seed(dropout_seed(s.seed)) for s in starts]
        self.lengths: list[int] | None = None   # each adapter's own longest example this step (dropout's shape)
        self.training = False
        self.active: slice | torch.Tensor = slice(0, self.k)   # whose rows the input holds (see `only`)
        self.head_modules = head_modules
        self._hooks = []
        self.attach()

    def attach(self) -> None:
        """Put this stack's hooks on the model (done when it is built; `remove` takes them off)."""
        self.remove()
        self._hooks = [self.model.get_submodule(p).register_forward_hook(self._lora_hook(p)) for p in self.ranks]
        self._hooks += [self.model.get_submodule(n).register_forward_hook(self._head_hook(n))
                        for n in self.head_modules]

    # --- forward -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def only(self, adapters: slice | list[int]):
        """Forward passes whose input holds the rows of these adapters only, in this order (a step or an evaluation
        split into several passes)."""
        self.active = adapters if isinstance(adapters, slice) else torch.as_tensor(adapters, device=self.device)
        try:
            yield
        finally:
            self.active = slice(0, self.k)

    def _ids(self) -> list[int]:
        return list(range(self.k))[self.active] if isinstance(self.active, slice) else self.active.tolist()

    def _view(self, key) -> torch.Tensor:
        return self.blocks[key].view(self.flat)[self.active]

    def _lora_hook(self, path: str):
        def hook(module, args, output):
            x = args[0]
            a, b = self._view((path, "A")), self._view((path, "B"))
            xs = x.reshape(len(a), -1, x.shape[-1]).float()
            if self.training and any(self.dropouts[path]):
                xs = self._dropout(xs, path, x.shape)
            delta = torch.bmm(torch.bmm(xs, a.transpose(1, 2)) * self.scales[path][self.active], b.transpose(1, 2))
            return (output + delta.view(output.shape)).to(output.dtype)
        return hook

    def _dropout(self, xs: torch.Tensor, path: str, shape: torch.Size) -> torch.Tensor:
        """Each adapter's LoRA dropout on its own rows."""
        ids = self._ids()
        rows = shape[0] // len(ids)
        parts = []
        for position, k in enumerate(ids):
            part, p = xs[position], self.dropouts[path][k]
            if p > 0:
                full = (rows, *shape[1:])
                own = (rows, self.lengths[k], *shape[2:]) if len(shape) == 3 else full
                part = dropped(part.view(full), p, self.generators[k], own).view(part.shape)
            parts.append(part)
        return torch.stack(parts)

    def _head_hook(self, name: str):
        def hook(module, args, output):
            x = args[0].float()
            weight = self._view((name, "weight"))
            xs = x.reshape(len(weight), -1, x.shape[-1])
            if (name, "bias") in self.blocks:
                out = torch.baddbmm(self._view((name, "bias")).unsqueeze(1), xs, weight.transpose(1, 2))
            else:
                out = torch.bmm(xs, weight.transpose(1, 2))
            return out.reshape(*x.shape[:-1], weight.shape[1])
        return hook

    # --- reading back --------------------------------------------------------------------------------------

    def lora_state(self, k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Adapter k's trained (A, B) per module it adapts, at its own ranks."""
        out = {}
        for path, ranks in self.ranks.items():
            r = ranks[k]
            if r:
                out[path] = (self.blocks[(path, "A")].view(self.flat)[k, :r].detach().cpu().clone(),
                             self.blocks[(path, "B")].view(self.flat)[k, :, :r].detach().cpu().clone())
        return out

    def head_state(self, k: int) -> dict[str, torch.Tensor]:
        return {f"{module}.{kind}": block.view(self.flat)[k].detach().cpu().clone()
                for (module, kind), block in self.blocks.items() if kind in ("weight", "bias")}

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def in_out(module: torch.nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a linear layer, or of GPT-2's Conv1D, which keeps its weight as (d_in, d_out)."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]
