"""The loader in a DistributedDataParallel loop: ``torchrun --nproc_per_node=N examples/ddp_loop.py``.

Under torchrun ``make_loader`` takes this rank's shard from the process group and its GPU from
LOCAL_RANK (``device="auto"``): training shards are disjoint and reshuffled per epoch, and the
validation shards together hold every image exactly once (no padding), so summed counts are exact.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch.nn.parallel import DistributedDataParallel as DDP

import i2e_dali
from _common import demo_root, tiny_snn


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="ImageNet-layout folder with train/ and val/ (default: the demo set)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8, help="per rank")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--timesteps", type=int, default=4)
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    root = demo_root(args.data) if rank == 0 else None
    holder = [root]
    dist.broadcast_object_list(holder)  # rank 0 generates the demo set once; the others read it
    conversion = i2e_dali.Conversion(timesteps=args.timesteps)
    train = i2e_dali.make_loader(holder[0], "train", args.batch_size, conversion=conversion, size=args.size)
    val = i2e_dali.make_loader(holder[0], "val", args.batch_size, conversion=conversion, size=args.size)
    model = tiny_snn(train.num_classes).to(train.device)
    model = DDP(model, device_ids=[train.device.index] if cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(args.epochs):
        model.train()
        for events, labels in train:  # this rank's shard of epoch `epoch`: len(train) batches on every rank
            loss = F.cross_entropy(model(events).mean(0), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            functional.reset_net(model)
        model.eval()
        counts = torch.zeros(2, dtype=torch.int64, device=train.device)
        with torch.no_grad():
            for events, labels in val:
                counts[0] += (model(events).mean(0).argmax(1) == labels).sum()
                counts[1] += labels.numel()
                functional.reset_net(model)
        mine = int(counts[1])
        dist.all_reduce(counts)
        print(f"rank {rank}/{world} epoch {epoch}: shard {mine} val images; all ranks {int(counts[1])} of "
              f"{len(val.source)}, acc {int(counts[0]) / int(counts[1]):.3f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
