"""Run under ``torchrun --nproc_per_node=2`` by tests/training/test_distributed.py (not a test itself).

Each rank, on a real gloo process group, computes what the training step and the validation pass
compute under DDP, and rank 0 writes the results to OUT (a .pt file) for the test to compare with a
single process doing the same by the plain definitions:

- ``shares``: every rank's batches of one epoch (its keys);
- ``grads``: the DDP gradient of one uneven global batch (5 videos over 2 ranks) and of a global batch
  of one video (rank 1 gets a filler), after ``rank_loss``;
- ``val``: the gathered validation metrics of a fixed model.

Usage: torchrun --nproc_per_node=2 ddp_checks.py FEATURES_DIR OUT
"""

import sys

import torch
from torch import nn

from vidcls.data.dataset import FeatureDataset, collate, make_loader, train_sampler
from vidcls.evaluation.metrics import validate
from vidcls.models import build_model
from vidcls.store.directory import open_splits
from vidcls.training.losses import FocalLoss
from vidcls.training.speed import rank_loss
from vidcls.utils import dist as ddp


def grads_of(net, model, ds, keys, criterion, dist):
    """The gradient (flat) after one DDP step on this rank's ``keys``."""
    model.zero_grad(set_to_none=True)
    x, lengths, y, pos = collate([ds[k] for k in keys])
    loss, _, _ = rank_loss(criterion, net(x.float(), lengths), y, pos >= 0, dist)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def main(features_dir: str, out: str) -> None:
    dist = ddp.env_dist()
    ddp.init(dist, torch.device("cpu"), 60)
    stores = open_splits(features_dir)
    train = FeatureDataset(stores["train"], augment=True)
    n_classes = len(train.store.class_names)
    weights = torch.arange(1.0, n_classes + 1)
    sampler = train_sampler(train, weights, seed=7)
    sampler.set_epoch(3)
    loader = make_loader(train, 8, batch_frames=100, sampler=sampler, rank=dist.rank, world=dist.world)
    shares = [list(b) for b in loader.batch_sampler]

    torch.manual_seed(0)
    model = build_model(
        "bilstm_attn",
        feature_dim=train.store.feature_dim,
        n_classes=n_classes,
        hidden_dim=16,
        layers=1,
        heads=2,
        dropout=0.0,
    )
    net = nn.parallel.DistributedDataParallel(model)
    criterion = FocalLoss(alpha=weights, gamma=2.0, smoothing=0.1)
    keys5 = [(0, 11), (3, 12), (5, 13), (8, 14), (9, 15)]
    uneven = grads_of(net, model, train, keys5[dist.rank :: 2], criterion, dist)
    one = [(4, 21)] if dist.rank == 0 else [(4, 21, "filler")]
    single = grads_of(net, model, train, one, criterion, dist)

    val = FeatureDataset(stores["val"])
    metrics = validate(
        model,
        make_loader(val, 4, rank=dist.rank, world=dist.world),
        torch.device("cpu"),
        stores["val"].class_names,
        criterion,
        dist,
    )
    everything = ddp.gather({"shares": shares, "val": metrics}, dist)
    if dist.main:
        torch.save(
            {
                "shares": [e["shares"] for e in everything],
                "val": [e["val"] for e in everything],
                "grads_uneven": uneven,
                "grads_one": single,
                "model_state": model.state_dict(),
                "keys5": keys5,
            },
            out,
        )
    ddp.barrier(dist)  # leave the group together: a rank tearing down while another still uses it can abort
    ddp.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
