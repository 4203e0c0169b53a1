"""`python -m cgan.fid` and `cgan-fid`: FID and KID between folders, a model and a data set (cgan/eval/fid.py)."""
from cgan.eval.fid import main

if __name__ == "__main__":
    raise SystemExit(main())
