"""Floor 4, evaluation: FID/KID, faithfulness (does the image show the prompt?), the in-training evaluation."""
