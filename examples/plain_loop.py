"""The loader in a plain PyTorch loop: ``python examples/plain_loop.py [--data ROOT]``.

Every ``for ... in loader`` is one epoch, like torch's DataLoader: no set_epoch, no reset, and breaking
out early (a step budget) never shifts the next epoch.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

import i2e_dali
from _common import demo_root, tiny_snn


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="ImageNet-layout folder with train/ and val/ (default: the demo set)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=32, help="crop size (the paper's ImageNet view: 224)")
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=None, help="cut each training epoch short (a budget)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    root = demo_root(args.data)
    conversion = i2e_dali.Conversion(timesteps=args.timesteps)
    train = i2e_dali.make_loader(root, "train", args.batch_size, conversion=conversion, size=args.size,
                                 device=args.device)
    val = i2e_dali.make_loader(root, "val", args.batch_size, conversion=conversion, size=args.size,
                               device=args.device)
    model = tiny_snn(train.num_classes).to(train.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = []
    for epoch in range(args.epochs):
        model.train()
        for step, (events, labels) in enumerate(train):  # events [T, B, 2, H, W] on train.device
            loss = F.cross_entropy(model(events).mean(0), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            functional.reset_net(model)  # LIF membranes start from rest for the next batch
            if args.max_steps is not None and step + 1 >= args.max_steps:
                break  # the rest of this epoch is abandoned; the next `for` starts the next epoch
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for events, labels in val:  # every validation image exactly once
                correct += (model(events).mean(0).argmax(1) == labels).sum().item()
                seen += labels.numel()
                functional.reset_net(model)
        history.append({"epoch": epoch, "loss": loss.item(), "val_seen": seen, "val_acc": correct / seen})
        print(f"epoch {epoch}: loss {loss.item():.3f}, val {correct}/{seen} = {correct / seen:.3f}", flush=True)
    return {"history": history, "val_images": len(val.source)}


if __name__ == "__main__":
    main()
