"""The release's training step as plain PyTorch, for speed comparisons only:
the baseline `bench/step_speed.py --release` times beside ours, in the same
run, on the same machine.

Written from docs/method.md (the release's layout, not its code): a BEiT-style
ViT (patch conv, CLS, one shared relative position bias, q/v biases, pre-norm
blocks with LayerScale, exact GELU), the BN-MLP projector per token, the EMA
teacher in train mode, the patch InfoNCE over masked rows (float32), AdamW
(0.9, 0.98) and the EMA update after it. Like the release's own measurement
it takes float images that are already views and one fixed mask: no view
making, no mask drawing (ours does both inside its step).

    python bench/release_torch.py --preset vit_mini_p4_28 --batch-size 128
"""

import argparse
import copy
import json
import math
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(config, projector):
    import torch
    from torch import nn

    h, w, c = config["image_shape"]
    p, d, heads = config["patch_size"], config["hidden_dim"], config["num_heads"]
    gh, gw = h // p, w // p
    n = gh * gw

    def relative_index():
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        coords = torch.stack([ys.flatten(), xs.flatten()])  # [2, N]
        rel = coords[:, :, None] - coords[:, None, :]
        index = torch.zeros(n + 1, n + 1, dtype=torch.long)
        index[1:, 1:] = (rel[0] + gh - 1) * (2 * gw - 1) + (rel[1] + gw - 1)
        size = (2 * gh - 1) * (2 * gw - 1) + 3
        index[0, :], index[:, 0], index[0, 0] = size - 3, size - 2, size - 1
        return index, size

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(d, 3 * d, bias=False)
            self.q_bias = nn.Parameter(torch.zeros(d))
            self.v_bias = nn.Parameter(torch.zeros(d))
            self.proj = nn.Linear(d, d)

        def forward(self, x, bias):
            b, t, _ = x.shape
            qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
            qkv = nn.functional.linear(x, self.qkv.weight, qkv_bias)
            q, k, v = qkv.reshape(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            attn = (q * (d // heads) ** -0.5) @ k.transpose(-2, -1) + bias
            x = attn.softmax(-1) @ v
            return self.proj(x.transpose(1, 2).reshape(b, t, d))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(d, config["mlp_dim"]), nn.Linear(config["mlp_dim"], d)

        def forward(self, x):
            return self.fc2(nn.functional.gelu(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
            self.attn, self.mlp = Attention(), Mlp()
            scale = config.get("layer_scale_init_value", 0.1)
            self.gamma_1 = nn.Parameter(scale * torch.ones(d))
            self.gamma_2 = nn.Parameter(scale * torch.ones(d))

        def forward(self, x, bias):
            x = x + self.gamma_1 * self.attn(self.norm1(x), bias)
            return x + self.gamma_2 * self.mlp(self.norm2(x))

    class RelativePositionBias(nn.Module):
        def __init__(self):
            super().__init__()
            index, size = relative_index()
            self.relative_position_bias_table = nn.Parameter(torch.zeros(size, heads))
            self.register_buffer("relative_position_index", index)

        def forward(self):
            return self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)

    def projectors():
        hid, out = projector["hidden_dim"], projector["output_dim"]
        return nn.Sequential(nn.Linear(d, hid, bias=False), nn.BatchNorm1d(hid), nn.ReLU(),
                             nn.Linear(hid, hid, bias=False), nn.BatchNorm1d(hid), nn.ReLU(),
                             nn.Linear(hid, out, bias=False), nn.BatchNorm1d(out, affine=False))

    class Student(nn.Module):
        """The release's pre-training model; its state_dict has the release's
        names, so `keras_conmim.integrations.convert.from_torch` imports it."""

        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv2d(c, d, p, p)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
            self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
            self.rel_pos_bias = RelativePositionBias()
            self.blocks = nn.ModuleList(Block() for _ in range(config["num_layers"]))
            self.norm = nn.LayerNorm(d, eps=1e-6)
            self.projectors = projectors()
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    nn.init.trunc_normal_(module.weight, std=0.02, a=-0.02, b=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            for token in (self.cls_token, self.mask_token):
                nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
            for i, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.data /= math.sqrt(2 * i)
                block.mlp.fc2.weight.data /= math.sqrt(2 * i)

        def tokens(self, images, mask=None):
            """`[B, 1 + N, D]` after the final norm (NCHW float images)."""
            x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
            if mask is not None:
                m = mask[..., None].to(x.dtype)
                x = x * (1 - m) + self.mask_token * m
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1)
            bias = self.rel_pos_bias()[None]
            for block in self.blocks:
                x = block(x, bias)
            return self.norm(x)

        def forward(self, images, mask=None):
            tokens = self.tokens(images, mask)
            b, t, _ = tokens.shape
            z = self.projectors(tokens.reshape(b * t, -1)).reshape(b, t, -1)[:, 1:]
            return nn.functional.normalize(z.float(), dim=-1)

    student = Student()
    teacher = copy.deepcopy(student)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return student, teacher


def release_step(config, projector, batch_size):
    """The release's step (float32, CPU) on synthetic views: a function of
    the step index that runs one step and returns its loss."""
    import torch

    torch.manual_seed(0)
    student, teacher = build(config, projector)
    student.train(), teacher.train()
    h, w, c = config["image_shape"]
    n = (h // config["patch_size"]) * (w // config["patch_size"])
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-8,
                                  weight_decay=0.05)
    weak = torch.randn(batch_size, c, h, w)
    strong = torch.randn(batch_size, c, h, w)
    mask = torch.zeros(batch_size, n, dtype=torch.bool)
    mask[:, torch.randperm(n)[: int(0.75 * n)]] = True
    targets = torch.arange(n).expand(batch_size, n)

    def step(i):
        q = student(weak, mask)
        with torch.no_grad():
            k = teacher(strong)
        logits = q @ k.transpose(1, 2) / 0.1  # [B, N, N], float32
        loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        m = 1 - (1 - 0.996) * (1 + math.cos(math.pi * i / 10_000)) / 2
        with torch.no_grad():
            for pt, ps in zip(teacher.parameters(), student.parameters()):
                pt.mul_(m).add_(ps.detach(), alpha=1 - m)
        return loss.detach()

    return step


def release_step_rate(config, projector, batch_size, steps, threads=None):
    """Images/s of the release's step (float32, CPU) on synthetic views."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    step = release_step(config, projector, batch_size)
    for i in range(2):  # warm up
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        loss = step(i)
    float(loss)
    return batch_size * steps / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_mini_p4_28")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    from keras_conmim.presets import PRESETS

    preset = PRESETS[args.preset]
    rate = release_step_rate(preset["config"], preset["projector"], args.batch_size, args.steps)
    row = {"backend": "release (plain torch)", "preset": args.preset, "batch_size": args.batch_size,
           "steps": args.steps, "images_per_s": rate}
    print(f"release step, plain torch, {args.preset}, batch {args.batch_size}: {rate:.1f} images/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([row], f)
    return row


if __name__ == "__main__":
    main()
