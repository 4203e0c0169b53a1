"""Generate images from an exported model.

    python sample.py --model runs/shapes/model --prompt "a red circle left of a blue square" \
        --attr style=outline --attr size=0.7 --num 16 --seed 0 --truncation 0.7 --out samples.png
    python sample.py --model runs/shapes/model --list-attributes
"""
from cgan.cli import sample_main

if __name__ == "__main__":
    raise SystemExit(sample_main())
