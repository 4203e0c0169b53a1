"""Train a cgan model.

    python train.py --config configs/shapes.yaml --out runs/shapes [section.key=value ...]
    python train.py --config configs/shapes.yaml --out runs/shapes --resume latest
    accelerate launch --multi_gpu --num_processes 4 train.py --config ... --out ...
"""
from cgan.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
