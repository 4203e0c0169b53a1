"""`python -m cgan.faithfulness`: does the image show the prompt? (cgan/eval/faithfulness.py)."""
from cgan.eval.faithfulness import main

if __name__ == "__main__":
    raise SystemExit(main())
