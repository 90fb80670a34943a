"""The offline trainers (SFT, DPO, the reward model) on one training loop: app/train/loop.py per worker,
app/train/fit.py on the driver."""
