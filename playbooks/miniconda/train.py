#!/usr/bin/env python3
"""CIFAR-10 ResNet-18 training for the Miniconda example (runs inside the conda env `exp`)."""

import argparse
import json
import os

import torch
import torchvision
from torchvision import transforms


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="/data/cifar10")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="/runs")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device} ({os.environ.get('CUDA_VISIBLE_DEVICES', 'all')})", flush=True)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    train = torchvision.datasets.CIFAR10(args.data, train=True, download=False, transform=tf)
    loader = torch.utils.data.DataLoader(train, batch_size=256, shuffle=True, num_workers=4)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        total = 0.0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item()
        print(f"epoch {epoch} loss {total / len(loader):.4f}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(args.out, f"resnet18-lr{args.lr}.pt"))
    with open(os.path.join(args.out, f"result-lr{args.lr}.json"), "w") as fh:
        json.dump({"lr": args.lr, "final_loss": total / len(loader)}, fh)


if __name__ == "__main__":
    main()
