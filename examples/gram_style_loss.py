"""A style loss with fastnst's Gram matrix: fit random "features" to a target style's Grams.

    python examples/gram_style_loss.py [--backend auto|cpu|triton|reference] [--steps 50]

It prints the loss as Adam drives the features' Gram matrices towards the targets, then the
same few steps on the reference backend, to show both give the same curve. (With real VGG
features this is the style term of Gatys et al.; `fastnst stylize` will wrap it.)
"""

import argparse

import torch

import fastnst

SHAPES = [(1, 64, 64, 64), (1, 128, 32, 32), (1, 256, 16, 16)]  # relu1_1..relu3_1 of a 64² image


def fit(backend: str, steps: int, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    targets = [fastnst.gram_matrix(torch.rand(s, generator=g), backend="reference") for s in SHAPES]
    feats = [torch.rand(s, generator=g).requires_grad_() for s in SHAPES]
    opt = torch.optim.Adam(feats, lr=0.02)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(fastnst.gram_loss(f, t, backend=backend) for f, t in zip(feats, targets)) * 1e4
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="auto")
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    x = torch.empty(SHAPES[0])
    print(f"backend: {fastnst.resolve('gram', x, args.backend)}")
    ours = fit(args.backend, args.steps)
    ref = fit("reference", args.steps)
    for i in range(0, args.steps, max(1, args.steps // 10)):
        print(f"step {i:4d}  loss {ours[i]:.6f}  (reference {ref[i]:.6f})")
    print(f"final loss {ours[-1]:.6f} (reference {ref[-1]:.6f})")


if __name__ == "__main__":
    main()
