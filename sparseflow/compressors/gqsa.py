"""GQSA compression of a Hugging Face causal LM: saliency-based group pruning, then group quantization
refined in two stages (the paper's BQPO and E2E-OQP).

1. Per block, on calibration activations: score every group of ``g`` inputs of every row (``saliency.py``),
   prune the least salient ``sparsity`` fraction of the layer's groups, update the surviving weights to
   compensate (the OBS column sweep SparseGPT uses, with the group mask fixed), start from round-to-nearest.
2. Stage 1 (BQPO, block-wise quantization parameter optimization): train each block's per-group scales and
   zeros (and optionally its surviving weights) so that the compressed block, fed the compressed model's own
   activations, reproduces the dense block's output on the dense activations (MSE).
3. Stage 2 (E2E-OQP, end-to-end optimization of quantization parameters): codes and masks frozen, train all
   scales and zeros at once on next-token cross-entropy over the calibration data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sparseflow.compressors.blockwise import (
    BlockStreams,
    block_output,
    capture_block_inputs,
    input_hessians,
    linear_children,
    walk_blocks,
)
from sparseflow.compressors.fake_quant import FakeQuantLinear
from sparseflow.compressors.obs import obs_sweep
from sparseflow.compressors.saliency import SALIENCY_METHODS, group_saliency, keep_mask
from sparseflow.kernels.gqsa import GQSAWeight
from sparseflow.kernels.gqsa.format import check_bits_and_group_size


@dataclass(frozen=True)
class GQSARecipe:
    """Every knob of the GQSA compressor (defaults: W4, g16, 50% of groups pruned, both stages on)."""

    bits: int = 4
    group_size: int = 16
    sparsity: float = 0.5
    saliency: str = "wanda"  # magnitude | wanda | obs
    compensate: bool = True  # OBS update of the surviving weights after pruning (SparseGPT-style)
    stage1: bool = True  # BQPO
    stage1_steps: int = 100
    stage1_lr: float = 1e-3  # log-scale and zero shift
    stage1_train_weights: bool = True  # the surviving weights too: pruning error needs them, not just scales
    stage1_weight_lr: float = 2e-4
    stage2: bool = True  # E2E-OQP
    stage2_steps: int = 100
    stage2_lr: float = 1e-3
    samples: int = 32  # calibration sequences
    seq_len: int = 512
    batch_size: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_bits_and_group_size(self.bits, self.group_size)
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.saliency not in SALIENCY_METHODS:
            raise ValueError(f"unknown saliency {self.saliency!r}; choose one of {SALIENCY_METHODS}")
        if self.samples % self.batch_size:
            raise ValueError(f"samples={self.samples} must be a multiple of batch_size={self.batch_size}")

    @property
    def needs_calibration(self) -> bool:
        return self.stage1 or self.stage2 or (self.sparsity > 0 and (self.saliency != "magnitude" or self.compensate))

    def to_dict(self) -> dict:
        return asdict(self)


def _train(params: list, steps: int, lr: float, loss_of_batch, n: int, batch: int,
           seed: int, desc: str, progress: bool) -> list[float]:
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), desc=desc, unit="step", leave=False, disable=not progress):
        idx = torch.randperm(n, generator=gen)[:batch]
        loss = loss_of_batch(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def compress_model(model: torch.nn.Module, calibration_ids: torch.Tensor | None, recipe: GQSARecipe,
                   is_target=lambda name: not name.endswith("lm_head"), progress: bool = True,
                   ) -> tuple[dict[str, GQSAWeight], dict]:
    """Compress every target linear of ``model`` in place (they become ``FakeQuantLinear``) and export them.

    ``calibration_ids [samples, seq]`` is needed when ``recipe.needs_calibration``. Returns the GQSA weights by
    module name and a log (per-block stage-1 losses, stage-2 losses).
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    log: dict = {"stage1_loss": {}, "stage2_loss": []}
    fakes: dict[str, FakeQuantLinear] = {}

    def make_fakes(prefix: str, block: torch.nn.Module, hessians: dict[str, torch.Tensor] | None) -> None:
        for name, linear in linear_children(block).items():
            full = f"{prefix}{name}"
            if not is_target(full):
                continue
            h = None if hessians is None else hessians[name]
            keep = keep_mask(group_saliency(linear.weight, recipe.group_size, recipe.saliency, h), recipe.sparsity)
            if recipe.compensate and h is not None and not bool(keep.all()):
                dense_keep = keep.repeat_interleave(recipe.group_size, dim=1)
                linear.weight.data = obs_sweep(linear.weight, h, keep=dense_keep).to(linear.weight.dtype)
            fake = FakeQuantLinear(linear, keep, bits=recipe.bits, group_size=recipe.group_size,
                                   train_weight=recipe.stage1 and recipe.stage1_train_weights).to(
                                       linear.weight.device)
            block.set_submodule(name, fake)
            fakes[full] = fake

    if not recipe.needs_calibration:
        make_fakes("", model, None)
    else:
        if calibration_ids is None:
            raise ValueError("this GQSA recipe (saliency/stages) needs calibration data")
        streams = capture_block_inputs(model, calibration_ids, recipe.batch_size)

        def compress_block(i: int, block: torch.nn.Module, s: BlockStreams, target: torch.Tensor) -> None:
            names = [n for n in linear_children(block) if is_target(f"model.layers.{i}.{n}")]
            needs_h = recipe.saliency != "magnitude" or (recipe.compensate and recipe.sparsity > 0)
            hessians = input_hessians(block, s.q, s, names) if needs_h else None
            make_fakes(f"model.layers.{i}.", block, hessians)
            if not recipe.stage1:
                return
            fq = [m for m in block.modules() if isinstance(m, FakeQuantLinear)]
            params = [{"params": [p for m in fq for p in (m.log_scale, m.zero_shift)], "lr": recipe.stage1_lr}]
            if recipe.stage1_train_weights:
                params.append({"params": [m.weight for m in fq], "lr": recipe.stage1_weight_lr})
            scale = target.float().pow(2).mean()

            def loss_of(idx):
                return F.mse_loss(block_output(block, s.q[idx], s.kwargs), target[idx]) / scale

            log["stage1_loss"][i] = _train(params, recipe.stage1_steps, recipe.stage1_lr, loss_of, len(s.q),
                                           s.batch_size, recipe.seed + i, f"BQPO block {i}", progress)

        walk_blocks(model, streams, compress_block, desc="GQSA blocks")
        del streams

    if recipe.stage2:
        for fake in fakes.values():
            fake.freeze_codes()
        params = [p for f in fakes.values() for p in f.trainable()]
        device = next(model.parameters()).device

        def lm_loss(idx):
            ids = calibration_ids[idx].to(device)
            logits = model(input_ids=ids, use_cache=False).logits
            return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())

        log["stage2_loss"] = _train(params, recipe.stage2_steps, recipe.stage2_lr, lm_loss, len(calibration_ids),
                                    recipe.batch_size, recipe.seed, "E2E-OQP", progress)
    return {name: fake.export() for name, fake in fakes.items()}, log
